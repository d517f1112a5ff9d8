/*
 * wt-writer: a stand-in for a live mongod's storage engine.
 *
 * mongod cannot run on the test machines, but the engine inside it can: this program drives
 * WiredTiger (Debian's 3.2.1, the engine line of MongoDB 4.2/4.4) the way mongod does, so the
 * directory it writes is made of real WiredTiger files (collection-*.wt, WiredTiger.wt,
 * WiredTiger.turtle, journal/WiredTigerLog.*) changing under a backup exactly as a live
 * member's dbPath would. judge.sh then tells whether a captured copy is one the engine can
 * recover from.
 *
 * usage: wt-writer DIR [--tables N] [--checkpoint-ms MS] [--value-bytes B]
 *                      [--keys K] [--pause-us US]
 *
 * Every committed state obeys one invariant, which judge.sh checks after recovery: counters
 * 1..M have been applied in order, M is a multiple of OPS_PER_TXN (transactions are atomic),
 * and key k of every table holds the value written for the largest counter c <= M with
 * c % K == k. A copy that recovers to anything else (a torn transaction, a table from another
 * point in time, a lost write in the middle) is caught even if every file is structurally
 * sound.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <wiredtiger.h>

/* Counters per transaction: more than one, so a torn transaction is visible to judge.sh. */
#define OPS_PER_TXN 4
/* Bumped whenever the value layout changes; judge.sh refuses layouts it does not know. */
#define FORMAT_VERSION 1
#define PARAMS_TABLE "table:snapcrypt-writer"
#define MAX_TABLES 1000
#define MIN_VALUE_BYTES 64
#define MAX_VALUE_BYTES (1 << 20)

/*
 * mongod's own configuration (log in journal/, no WiredTiger.basecfg), less snappy, which
 * Debian's library does not carry built in (and the wt utility could not load it). file_max
 * is 2MB instead of 100MB so that the few seconds of a test rotate and archive log files as
 * hours of a real member would: a copy that misses a log file must be possible here too.
 */
#define OPEN_CONFIG                                                                        \
    "create,cache_size=32MB,config_base=false,"                                            \
    "log=(enabled=true,path=journal,archive=true,file_max=2MB)"
#define TABLE_CONFIG "key_format=q,value_format=S"

static const char *progname = "wt-writer";
static volatile sig_atomic_t stop_requested;

struct options {
    const char *dir;
    unsigned tables;
    unsigned checkpoint_ms;
    unsigned value_bytes;
    unsigned keys;
    unsigned pause_us;
};

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/*
 * Fatal errors exit without closing the connection on purpose: what is left behind is then a
 * crashed database, which recovery must handle, never a half-closed one.
 */
static void
die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void
check(int ret, const char *what)
{
    if (ret != 0)
        die("%s: %s (%d)", what, wiredtiger_strerror(ret), ret);
}

static void
usage(void)
{
    fprintf(stderr,
      "usage: %s DIR [--tables N] [--checkpoint-ms MS] [--value-bytes B] [--keys K]"
      " [--pause-us US]\n"
      "  --tables N         collections table:collection-0..N-1 (default 3)\n"
      "  --checkpoint-ms MS pause between checkpoints (default 300)\n"
      "  --value-bytes B    bytes per value, >= %d (default 200)\n"
      "  --keys K           rows per collection; writes cycle over them (default 5000)\n"
      "  --pause-us US      sleep between transactions, to leave CPU to the test (default 1000)\n"
      "Prints 'writer ready' once the first checkpoint is on disk; stops cleanly on SIGTERM or\n"
      "SIGINT.\n",
      progname, MIN_VALUE_BYTES);
    exit(2);
}

static unsigned
parse_uint(const char *flag, const char *s, unsigned min, unsigned max)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min || v > max) {
        fprintf(stderr, "%s: %s wants an integer in %u..%u, got '%s'\n", progname, flag, min, max,
          s);
        exit(2);
    }
    return ((unsigned)v);
}

static void
parse_args(int argc, char **argv, struct options *o)
{
    int i;

    o->dir = NULL;
    o->tables = 3;
    o->checkpoint_ms = 300;
    o->value_bytes = 200;
    o->keys = 5000;
    o->pause_us = 1000;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            usage();
        if (a[0] != '-') {
            if (o->dir != NULL)
                usage();
            o->dir = a;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        if (strcmp(a, "--tables") == 0)
            o->tables = parse_uint(a, argv[++i], 1, MAX_TABLES);
        else if (strcmp(a, "--checkpoint-ms") == 0)
            o->checkpoint_ms = parse_uint(a, argv[++i], 1, 3600 * 1000);
        else if (strcmp(a, "--value-bytes") == 0)
            o->value_bytes = parse_uint(a, argv[++i], MIN_VALUE_BYTES, MAX_VALUE_BYTES);
        else if (strcmp(a, "--keys") == 0)
            o->keys = parse_uint(a, argv[++i], 1, 100 * 1000 * 1000);
        else if (strcmp(a, "--pause-us") == 0)
            o->pause_us = parse_uint(a, argv[++i], 0, 10 * 1000 * 1000);
        else
            usage();
    }
    if (o->dir == NULL)
        usage();
}

/*
 * The value for counter c, key k, table t: a header naming all three, padded to exactly
 * len bytes with letters that depend on c. judge.sh rebuilds it byte for byte, so any
 * value from the wrong write, or a mix of two writes, shows.
 */
static void
make_value(char *buf, size_t len, uint64_t c, int64_t k, unsigned t)
{
    size_t i;
    int n;

    n = snprintf(buf, len + 1, "c=%" PRIu64 " k=%" PRId64 " t=%u ", c, k, t);
    if (n < 0 || (size_t)n >= len)
        die("value header does not fit in %zu bytes", len);
    for (i = (size_t)n; i < len; i++)
        buf[i] = (char)('a' + (c + i) % 26);
    buf[len] = '\0';
}

static void
sleep_us(unsigned us)
{
    struct timespec ts;

    ts.tv_sec = us / 1000000;
    ts.tv_nsec = (long)(us % 1000000) * 1000;
    /* An interrupting signal ends the sleep early, which is what a stop request wants. */
    (void)nanosleep(&ts, NULL);
}

static void
on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

struct checkpointer {
    WT_CONNECTION *conn;
    unsigned period_ms;
    uint64_t count;
};

/*
 * Checkpoints run on their own thread and session, as in mongod (its WTCheckpointThread), so
 * they overlap transactions: that overlap is what makes a file-by-file copy of a live
 * database tear.
 */
static void *
checkpoint_loop(void *arg)
{
    struct checkpointer *cp = arg;
    WT_SESSION *session;
    unsigned slept;

    check(cp->conn->open_session(cp->conn, NULL, NULL, &session), "checkpoint open_session");
    while (!stop_requested) {
        /* Sleep in short slices so a stop request is noticed well before MS has passed. */
        for (slept = 0; slept < cp->period_ms && !stop_requested; slept += 50)
            sleep_us(1000 * (cp->period_ms - slept < 50 ? cp->period_ms - slept : 50));
        if (stop_requested)
            break;
        check(session->checkpoint(session, NULL), "checkpoint");
        cp->count++;
    }
    check(session->close(session, NULL), "checkpoint session close");
    return (NULL);
}

/*
 * The parameters that define the invariant live in the database itself, so judge.sh needs
 * nothing but the copy, and a restart with other parameters cannot silently break it.
 */
static void
check_params(WT_SESSION *session, const struct options *o)
{
    WT_CURSOR *cursor;
    char want[256];
    const char *have;
    int ret;

    snprintf(want, sizeof(want), "format=%d tables=%u keys=%u ops_per_txn=%d value_bytes=%u",
      FORMAT_VERSION, o->tables, o->keys, OPS_PER_TXN, o->value_bytes);
    check(session->create(session, PARAMS_TABLE, "key_format=S,value_format=S"),
      "create " PARAMS_TABLE);
    check(session->open_cursor(session, PARAMS_TABLE, NULL, NULL, &cursor), "open " PARAMS_TABLE);
    cursor->set_key(cursor, "params");
    ret = cursor->search(cursor);
    if (ret == WT_NOTFOUND) {
        cursor->set_key(cursor, "params");
        cursor->set_value(cursor, want);
        check(cursor->insert(cursor), "insert params");
    } else {
        check(ret, "read params");
        check(cursor->get_value(cursor, &have), "get params");
        if (strcmp(have, want) != 0)
            die("%s was written with '%s'; refusing to continue it with '%s' (use a fresh DIR)",
              o->dir, have, want);
    }
    check(cursor->close(cursor), "close " PARAMS_TABLE);
}

/* A reopened database continues from its last committed counter, keeping the invariant. */
static uint64_t
last_counter(WT_CURSOR *cursor)
{
    const char *v;
    uint64_t c, max = 0;
    int ret;

    while ((ret = cursor->next(cursor)) == 0) {
        check(cursor->get_value(cursor, &v), "get value");
        if (sscanf(v, "c=%" SCNu64, &c) != 1)
            die("unexpected value in collection-0: '%.40s'", v);
        if (c > max)
            max = c;
    }
    if (ret != WT_NOTFOUND)
        check(ret, "scan collection-0");
    check(cursor->reset(cursor), "reset cursor");
    return (max);
}

int
main(int argc, char **argv)
{
    struct options o;
    struct checkpointer cp;
    struct sigaction sa;
    sigset_t block, old;
    pthread_t ckpt_thread;
    WT_CONNECTION *conn;
    WT_SESSION *session;
    WT_CURSOR **cursors;
    char journal[PATH_MAX], name[64], *value;
    uint64_t counter, rollbacks = 0;
    unsigned t, i;
    int ret;

    parse_args(argc, argv, &o);

    /*
     * Installed first, so a stop that arrives during start-up still ends in a clean close.
     * No SA_RESTART: the signal should cut short the pause between transactions.
     */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        die("sigaction: %s", strerror(errno));

    /*
     * Whatever umask the test runs with, the files must be readable by a backup running as
     * another user (uid 999 in the tests): 0644 files, 0755 directories.
     */
    umask(022);

    /* WiredTiger creates neither its home nor its log directory; mongod makes both too. */
    if (mkdir(o.dir, 0755) != 0 && errno != EEXIST)
        die("mkdir %s: %s", o.dir, strerror(errno));
    if ((size_t)snprintf(journal, sizeof(journal), "%s/journal", o.dir) >= sizeof(journal))
        die("path too long: %s", o.dir);
    if (mkdir(journal, 0755) != 0 && errno != EEXIST)
        die("mkdir %s: %s", journal, strerror(errno));

    check(wiredtiger_open(o.dir, NULL, OPEN_CONFIG, &conn), "wiredtiger_open");
    check(conn->open_session(conn, NULL, NULL, &session), "open_session");
    check_params(session, &o);

    if ((cursors = calloc(o.tables, sizeof(*cursors))) == NULL ||
      (value = malloc(o.value_bytes + 1)) == NULL)
        die("out of memory");
    for (t = 0; t < o.tables; t++) {
        snprintf(name, sizeof(name), "table:collection-%u", t);
        check(session->create(session, name, TABLE_CONFIG), name);
        check(session->open_cursor(session, name, NULL, NULL, &cursors[t]), name);
    }
    counter = last_counter(cursors[0]);

    /*
     * The first checkpoint is taken before "ready", so a test never captures a directory
     * that has no checkpoint at all (one mongod would never present either).
     */
    check(session->checkpoint(session, NULL), "first checkpoint");

    /* Keep the signals off the checkpoint thread so they interrupt the main loop's sleep. */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    if (pthread_sigmask(SIG_BLOCK, &block, &old) != 0)
        die("pthread_sigmask failed");
    cp.conn = conn;
    cp.period_ms = o.checkpoint_ms;
    cp.count = 1;
    if ((ret = pthread_create(&ckpt_thread, NULL, checkpoint_loop, &cp)) != 0)
        die("pthread_create: %s", strerror(ret));
    if (pthread_sigmask(SIG_SETMASK, &old, NULL) != 0)
        die("pthread_sigmask failed");

    printf("writer ready\n");
    fflush(stdout);
    fprintf(stderr, "%s: writing %s from counter %" PRIu64 " (%u tables, %u keys, %u-byte values)\n",
      progname, o.dir, counter + 1, o.tables, o.keys, o.value_bytes);

    while (!stop_requested) {
        check(session->begin_transaction(session, NULL), "begin_transaction");
        ret = 0;
        for (i = 1; i <= OPS_PER_TXN && ret == 0; i++) {
            uint64_t c = counter + i;
            int64_t k = (int64_t)(c % o.keys);

            for (t = 0; t < o.tables && ret == 0; t++) {
                make_value(value, o.value_bytes, c, k, t);
                cursors[t]->set_key(cursors[t], k);
                cursors[t]->set_value(cursors[t], value);
                ret = cursors[t]->insert(cursors[t]); /* overwrite: insert or update */
            }
        }
        /*
         * WT_ROLLBACK is the engine asking the transaction to be retried (eviction under
         * cache pressure can do it even with one writer); anything else is fatal.
         */
        if (ret == WT_ROLLBACK) {
            check(session->rollback_transaction(session, NULL), "rollback_transaction");
            rollbacks++;
            continue;
        }
        check(ret, "insert");
        check(session->commit_transaction(session, NULL), "commit_transaction");
        counter += OPS_PER_TXN;
        if (o.pause_us > 0)
            sleep_us(o.pause_us);
    }

    if ((ret = pthread_join(ckpt_thread, NULL)) != 0)
        die("pthread_join: %s", strerror(ret));
    for (t = 0; t < o.tables; t++)
        check(cursors[t]->close(cursors[t]), "cursor close");
    check(session->close(session, NULL), "session close");
    /* Closing takes a final checkpoint: a cleanly stopped writer leaves nothing to recover. */
    check(conn->close(conn, NULL), "connection close");
    fprintf(stderr,
      "%s: stopped cleanly at counter %" PRIu64 " (%" PRIu64 " checkpoints, %" PRIu64
      " rollbacks)\n",
      progname, counter, cp.count, rollbacks);
    free(value);
    free(cursors);
    return (0);
}
