/*
 * wt-check: the check container of the restore tests, a double of "start mongod on the
 * restored dbPath and run validate".
 *
 * usage: wt-check [DIR]
 *   DIR defaults to $SNAPCRYPT_RESTORED_PATH, else /restored.
 *
 * Opens DIR the way mongod opens its dbPath (log in DIR/journal/, recovery on), lists every
 * table: object in the metadata and verifies each (WT_SESSION::verify, what validate does
 * to a collection's storage), then closes the database cleanly.
 *
 * Verdict, one line on stdout and in /dev/termination-log (if it can be opened for writing;
 * never created; SNAPCRYPT_TERMINATION_LOG names another file, for tests off the cluster):
 *   OK: N tables verified in DIR                       exit 0
 *   FAILED: <what failed (path or table)>: <reason>    exit 1
 * Exit 2 for usage errors (message on stderr). WiredTiger's own messages go to stderr.
 *
 * Writes only inside DIR (recovery and the checkpoint at close, as mongod would), so it runs
 * as any user that owns DIR, with a read-only root filesystem. Linked statically (see
 * check-image.sh): the image holds this binary and nothing else.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <wiredtiger.h>

#define DEFAULT_DIR "/restored"
#define TERMINATION_LOG "/dev/termination-log"
/* mongod's log settings (see writer.c), with recovery on, as mongod always opens. */
#define OPEN_CONFIG                                                                        \
    "cache_size=64MB,config_base=false,"                                                   \
    "log=(enabled=true,path=journal,archive=true,file_max=2MB,recover=on)"
#define MAX_LINE 1000
/* verify wants the table to itself; a handle still closing after recovery can hold it. */
#define BUSY_RETRIES 50

static const char *progname = "wt-check";
static const char *dir;
/* What is being done right now, for the verdict of a crash (see on_fatal_signal). */
static const char *volatile step = "start";
/* The first error WiredTiger reported: the cause; later ones are mostly consequences. */
static char first_error[MAX_LINE];

static void
usage(void)
{
    fprintf(stderr,
      "usage: %s [DIR]\n"
      "  Recover and verify the WiredTiger database (a mongod dbPath) in DIR\n"
      "  (default: $SNAPCRYPT_RESTORED_PATH, else " DEFAULT_DIR ").\n"
      "  Prints 'OK: N tables verified in DIR' (exit 0) or 'FAILED: <reason>' (exit 1).\n",
      progname);
    exit(2);
}

static const char *
termination_log_path(void)
{
    const char *p = getenv("SNAPCRYPT_TERMINATION_LOG");

    return (p != NULL && p[0] != '\0' ? p : TERMINATION_LOG);
}

/*
 * Write the whole buffer; async-signal-safe (used by the crash handler too). Errors are
 * ignored: the verdict on stdout is the one that counts.
 */
static void
write_all(int fd, const char *buf, size_t len)
{
    ssize_t n;

    while (len > 0) {
        n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

/*
 * The verdict: stdout and the termination log. No O_CREAT: outside a pod /dev is the host's,
 * and only the kubelet's file is wanted. Async-signal-safe.
 */
static void
emit(const char *line, size_t len)
{
    int fd;

    write_all(STDOUT_FILENO, line, len);
    fd = open(termination_log_path(), O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0) {
        write_all(fd, line, len);
        (void)close(fd);
    }
}

/* One line: control characters become spaces, the length is bounded. */
static void
one_line(char *s)
{
    char *p;

    for (p = s; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    while (p > s && p[-1] == ' ')
        *--p = '\0';
}

static void verdict(int ok, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));

static void
verdict(int ok, const char *fmt, ...)
{
    char line[MAX_LINE + 64];
    va_list ap;
    int n;

    n = snprintf(line, sizeof(line), "%s: ", ok ? "OK" : "FAILED");
    va_start(ap, fmt);
    (void)vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    one_line(line);
    n = (int)strlen(line);
    line[n++] = '\n';
    fflush(stderr);
    emit(line, (size_t)n);
    exit(ok ? 0 : 1);
}

/*
 * A failed WiredTiger call: what was being done, WiredTiger's error string, and the first
 * message it reported (which names the file and the cause, e.g. a checksum error).
 * The process exits without closing the connection: there is nothing left to protect in a
 * scratch copy that failed.
 */
static void fail_wt(const char *what, int ret) __attribute__((noreturn));

static void
fail_wt(const char *what, int ret)
{
    if (first_error[0] != '\0')
        verdict(0, "%s: %s: %s", what, wiredtiger_strerror(ret), first_error);
    verdict(0, "%s: %s", what, wiredtiger_strerror(ret));
}

/* Drop WiredTiger's "[sec:usec][pid:tid], " prefix: the rest is the message. */
static const char *
strip_prefix(const char *m)
{
    const char *p = m;
    int i;

    for (i = 0; i < 2 && *p == '['; i++) {
        const char *end = strchr(p, ']');

        if (end == NULL)
            return (m);
        p = end + 1;
    }
    if (p == m)
        return (m);
    if (*p == ',')
        p++;
    while (*p == ' ')
        p++;
    return (p);
}

static int
on_error(WT_EVENT_HANDLER *handler, WT_SESSION *session, int error, const char *message)
{
    (void)handler;
    (void)session;
    (void)error;
    fprintf(stderr, "%s\n", message);
    if (first_error[0] == '\0') {
        size_t dlen = strlen(dir);
        const char *m = strip_prefix(message);
        char *p;

        snprintf(first_error, sizeof(first_error), "%s", m);
        /* Paths relative to DIR: "DIR/collection-0.wt" reads as "collection-0.wt". */
        while (dlen > 0 && (p = strstr(first_error, dir)) != NULL && p[dlen] == '/')
            memmove(p, p + dlen + 1, strlen(p + dlen + 1) + 1);
        one_line(first_error);
    }
    return (0);
}

/* Informational messages go to stdout by default; stdout is for the verdict only. */
static int
on_message(WT_EVENT_HANDLER *handler, WT_SESSION *session, const char *message)
{
    (void)handler;
    (void)session;
    fprintf(stderr, "%s\n", message);
    return (0);
}

static WT_EVENT_HANDLER event_handler = {on_error, on_message, NULL, NULL};

/*
 * A crash (WiredTiger aborts on some corruption it cannot report) still gets a verdict.
 * Only async-signal-safe calls here.
 */
static void
on_fatal_signal(int sig)
{
    char line[MAX_LINE];
    const char *parts[5];
    size_t len = 0, i, n;

    parts[0] = "FAILED: ";
    parts[1] = step;
    parts[2] = ": crashed with ";
    parts[3] = sig == SIGABRT ? "SIGABRT" : sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" :
                                                                                          "SIGFPE";
    parts[4] = " (see stderr)\n";
    for (i = 0; i < 5; i++) {
        n = strlen(parts[i]);
        if (n > sizeof(line) - len - 2)
            n = sizeof(line) - len - 2;
        memcpy(line + len, parts[i], n);
        len += n;
    }
    if (line[len - 1] != '\n')
        line[len++] = '\n';
    emit(line, len);
    _exit(1);
}

static void
install_crash_handlers(void)
{
    static const int sigs[] = {SIGABRT, SIGSEGV, SIGBUS, SIGFPE};
    struct sigaction sa;
    size_t i;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        (void)sigaction(sigs[i], &sa, NULL);
}

/* Without these mongod (which opens with `create`) would start an empty database. */
static void
check_layout(void)
{
    static const char *const files[] = {"WiredTiger", "WiredTiger.turtle", "WiredTiger.wt"};
    char path[PATH_MAX];
    struct stat st;
    size_t i;

    if (stat(dir, &st) != 0)
        verdict(0, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        verdict(0, "%s: not a directory", dir);
    for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, files[i]) >= sizeof(path))
            verdict(0, "%s: path too long", dir);
        if (stat(path, &st) != 0) {
            if (errno == ENOENT)
                verdict(0, "%s: no %s file: not a WiredTiger database", dir, files[i]);
            verdict(0, "%s: %s", path, strerror(errno));
        }
    }
    snprintf(path, sizeof(path), "%s/journal", dir);
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        verdict(0, "%s: no journal/ directory (the writes since the last checkpoint are gone)",
          dir);
    /*
     * The lock file of the process that wrote the original means nothing in a restored copy
     * (judge.sh deletes it too). It could belong to another user and fail the open.
     */
    snprintf(path, sizeof(path), "%s/WiredTiger.lock", dir);
    if (unlink(path) != 0 && errno != ENOENT)
        fprintf(stderr, "%s: could not remove stale %s: %s\n", progname, path, strerror(errno));
}

static void
sleep_ms(unsigned ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    (void)nanosleep(&ts, NULL);
}

int
main(int argc, char **argv)
{
    WT_CONNECTION *conn;
    WT_SESSION *session;
    WT_CURSOR *cursor;
    char **tables = NULL, what[MAX_LINE];
    const char *key, *env;
    size_t ntables = 0, cap = 0, i;
    int ret, tries;

    if (argc > 2)
        usage();
    if (argc == 2) {
        if (argv[1][0] == '-' || argv[1][0] == '\0')
            usage();
        dir = argv[1];
    } else {
        env = getenv("SNAPCRYPT_RESTORED_PATH");
        dir = env != NULL && env[0] != '\0' ? env : DEFAULT_DIR;
    }
    install_crash_handlers();

    step = "layout";
    check_layout();

    step = "recovery";
    snprintf(what, sizeof(what), "recovery of %s", dir);
    if ((ret = wiredtiger_open(dir, &event_handler, OPEN_CONFIG, &conn)) != 0)
        fail_wt(what, ret);
    if ((ret = conn->open_session(conn, &event_handler, NULL, &session)) != 0)
        fail_wt("open_session", ret);

    step = "metadata";
    if ((ret = session->open_cursor(session, "metadata:", NULL, NULL, &cursor)) != 0)
        fail_wt("open metadata: cursor", ret);
    while ((ret = cursor->next(cursor)) == 0) {
        if ((ret = cursor->get_key(cursor, &key)) != 0)
            fail_wt("read metadata", ret);
        if (strncmp(key, "table:", 6) != 0)
            continue;
        if (ntables == cap) {
            cap = cap ? 2 * cap : 16;
            if ((tables = realloc(tables, cap * sizeof(*tables))) == NULL)
                verdict(0, "out of memory");
        }
        if ((tables[ntables++] = strdup(key)) == NULL)
            verdict(0, "out of memory");
    }
    if (ret != WT_NOTFOUND)
        fail_wt("read metadata", ret);
    if ((ret = cursor->close(cursor)) != 0)
        fail_wt("close metadata: cursor", ret);
    if (ntables == 0)
        verdict(0, "%s: no table: objects in the metadata", dir);

    for (i = 0; i < ntables; i++) {
        step = tables[i];
        snprintf(what, sizeof(what), "verify %s", tables[i]);
        for (tries = 0; (ret = session->verify(session, tables[i], NULL)) == EBUSY &&
             tries < BUSY_RETRIES;
             tries++)
            sleep_ms(100);
        if (ret != 0)
            fail_wt(what, ret);
        fprintf(stderr, "%s: verified %s\n", progname, tables[i]);
    }

    step = "close";
    if ((ret = session->close(session, NULL)) != 0)
        fail_wt("session close", ret);
    snprintf(what, sizeof(what), "close of %s (final checkpoint)", dir);
    if ((ret = conn->close(conn, NULL)) != 0)
        fail_wt(what, ret);

    for (i = 0; i < ntables; i++)
        free(tables[i]);
    free(tables);
    verdict(1, "%zu tables verified in %s", ntables, dir);
}
