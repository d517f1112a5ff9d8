/*
 * wt-dbpath: a real WiredTiger database for bench/run.sh --wiredtiger, written the way mongod
 * lays out a dbPath, then updated the way a working member changes it.
 *
 *   wt-dbpath fill DIR SIZE_MIB [--seed N]
 *       Collections and their indexes (mongod's table configurations: snappy block
 *       compression for collections, prefix compression for indexes, journal in journal/),
 *       filled with BSON-like documents until the files on disk hold SIZE_MIB, with a
 *       checkpoint every 64 MiB of documents and at close.
 *   wt-dbpath update DIR PERCENT [--seed N]
 *       Rewrites PERCENT % of the documents (90% of them among the newest 5% of each
 *       collection, a working set; the rest anywhere), each keeping its size class; one
 *       indexed field changes, so that index changes too (the _id index does not), with four
 *       checkpoints on the way and one at close. WiredTiger writes every changed page to a new
 *       place in the file (copy on write, reusing freed extents), which is what an
 *       incremental backup of a real member sees.
 *
 * Debian's WiredTiger 3.2.1 carries snappy as an extension library; mongod's default block
 * compressor is snappy, so the collections here use it too.
 */
#define _GNU_SOURCE /* memmem */

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <wiredtiger.h>

#define SNAPPY "/usr/lib/x86_64-linux-gnu/libwiredtiger_snappy.so"
#define OPEN_CONFIG                                                                        \
    "create,cache_size=256MB,config_base=false,"                                           \
    "extensions=[" SNAPPY "],"                                                             \
    "log=(enabled=true,path=journal,archive=true,compressor=snappy,file_max=100MB)"
/* mongod 4.x's collection and index table configurations (less app_metadata). */
#define COLLECTION_CONFIG                                                                  \
    "type=file,memory_page_max=10m,split_pct=90,leaf_value_max=64MB,checksum=on,"          \
    "block_compressor=snappy,key_format=q,value_format=u"
#define INDEX_CONFIG                                                                       \
    "type=file,internal_page_max=16k,leaf_page_max=16k,checksum=on,"                       \
    "prefix_compression=true,block_compressor=,key_format=u,value_format=u"
#define META_TABLE "table:_mdb_catalog"

#define COLLECTIONS 4
#define DOCS_PER_TXN 64
#define CHECKPOINT_BYTES (64u << 20)

static const double collection_share[COLLECTIONS] = {0.45, 0.30, 0.15, 0.10};

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void
die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "wt-dbpath: ");
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
        die("%s: %s", what, wiredtiger_strerror(ret));
}

/* xorshift64*: reproducible from --seed, fast enough to fill gigabytes. */
static uint64_t rng_state;
static uint64_t
rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static const char *const words[] = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
  "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
  "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee",
  "zulu", "pending", "shipped", "delivered", "returned"};
#define WORDS (sizeof(words) / sizeof(words[0]))

/*
 * A BSON-like document: repeated field names, an ObjectId-like id, numbers, a few words from a
 * small vocabulary, and a binary field of random bytes (a hash, an encrypted field). Its size
 * class comes from the collection: small events, medium orders, large profiles.
 */
/* One BSON-like element: type byte, name, NUL, then the value as printf formats it. */
static void field(unsigned char *buf, size_t cap, size_t *n, char type, const char *name,
  const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void
field(unsigned char *buf, size_t cap, size_t *n, char type, const char *name, const char *fmt,
  ...)
{
    size_t len = strlen(name);
    if (*n + len + 2 >= cap)
        return;
    buf[(*n)++] = (unsigned char)type;
    memcpy(buf + *n, name, len + 1);
    *n += len + 1;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf((char *)buf + *n, cap - *n, fmt, ap);
    va_end(ap);
    if (w > 0)
        *n += (size_t)w < cap - *n ? (size_t)w : cap - *n - 1;
}

static size_t
make_doc(unsigned char *buf, size_t cap, int64_t id, unsigned collection, uint64_t version)
{
    static const size_t target[COLLECTIONS] = {220, 480, 1100, 2400};
    size_t n = 0, want = target[collection] + rnd() % (target[collection] / 2);
    if (want > cap - 64)
        want = cap - 64;
    /* The id first, at a fixed offset: the _id index is keyed on it. */
    field(buf, cap, &n, 0x07, "_id", "%016" PRIx64 "%08" PRIx64,
      (uint64_t)id * 2654435761u, (uint64_t)id & 0xffffffffu);
    field(buf, cap, &n, 0x12, "n", "%" PRId64, id);
    field(buf, cap, &n, 0x10, "v", "%" PRIu64, version);
    field(buf, cap, &n, 0x09, "ts", "%" PRIu64,
      (uint64_t)1700000000000ULL + (uint64_t)id * 1000 + version);
    field(buf, cap, &n, 0x02, "user", "user%06" PRIu64, rnd() % 1000000);
    field(buf, cap, &n, 0x10, "score", "%" PRIu64, rnd() % 100000);
    while (n < want) {
        if (rnd() % 4 == 0) { /* binary: 32 random bytes (a hash, an encrypted field) */
            memcpy(buf + n, "\x05h", 3);
            n += 3;
            for (int i = 0; i < 4; i++) {
                uint64_t r = rnd();
                memcpy(buf + n, &r, 8);
                n += 8;
            }
        } else {
            field(buf, cap, &n, 0x02, words[rnd() % WORDS], "%s %s %" PRIu64 ";",
              words[rnd() % WORDS], words[rnd() % WORDS], rnd() % 10000);
        }
    }
    return n;
}

/* Bytes on disk of the data files (the journal aside: its files are preallocated). */
static uint64_t
dir_bytes(const char *dir)
{
    char path[4096];
    struct stat st;
    uint64_t total = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    if (d == NULL)
        die("opendir %s: %s", dir, strerror(errno));
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            continue; /* journal/: preallocated log files, not data */
        else if (S_ISREG(st.st_mode))
            total += (uint64_t)st.st_blocks * 512;
    }
    closedir(d);
    return total;
}

struct db {
    WT_CONNECTION *conn;
    WT_SESSION *session;
    WT_CURSOR *coll[COLLECTIONS], *id_index[COLLECTIONS], *user_index[COLLECTIONS];
    WT_CURSOR *meta;
};

static void
open_db(struct db *db, const char *dir, int create)
{
    char name[128];
    if (create && mkdir(dir, 0755) != 0 && errno != EEXIST)
        die("mkdir %s: %s", dir, strerror(errno));
    snprintf(name, sizeof(name), "%s/journal", dir);
    if (create && mkdir(name, 0755) != 0 && errno != EEXIST)
        die("mkdir %s: %s", name, strerror(errno));
    check(wiredtiger_open(dir, NULL, OPEN_CONFIG, &db->conn), "wiredtiger_open");
    check(db->conn->open_session(db->conn, NULL, NULL, &db->session), "open_session");
    WT_SESSION *s = db->session;
    check(s->create(s, META_TABLE, "key_format=S,value_format=q"), META_TABLE);
    check(s->open_cursor(s, META_TABLE, NULL, NULL, &db->meta), META_TABLE);
    for (unsigned c = 0; c < COLLECTIONS; c++) {
        snprintf(name, sizeof(name), "table:collection-%u-5830917", c * 2);
        check(s->create(s, name, COLLECTION_CONFIG), name);
        check(s->open_cursor(s, name, NULL, NULL, &db->coll[c]), name);
        snprintf(name, sizeof(name), "table:index-%u-5830917", c * 2 + 1);
        check(s->create(s, name, INDEX_CONFIG), name);
        check(s->open_cursor(s, name, NULL, NULL, &db->id_index[c]), name);
        snprintf(name, sizeof(name), "table:index-%u-5830917", c * 2 + 100);
        check(s->create(s, name, INDEX_CONFIG), name);
        check(s->open_cursor(s, name, NULL, NULL, &db->user_index[c]), name);
    }
}

static void
close_db(struct db *db)
{
    /* Closing takes a final checkpoint: the database is left clean, as after a shutdown. */
    check(db->conn->close(db->conn, NULL), "close");
}

static int64_t
meta_get(struct db *db, const char *key)
{
    int64_t v = 0;
    db->meta->set_key(db->meta, key);
    int ret = db->meta->search(db->meta);
    if (ret == WT_NOTFOUND)
        return 0;
    check(ret, "meta search");
    check(db->meta->get_value(db->meta, &v), "meta get_value");
    return v;
}

static void
meta_set(struct db *db, const char *key, int64_t v)
{
    db->meta->set_key(db->meta, key);
    db->meta->set_value(db->meta, v);
    check(db->meta->insert(db->meta), "meta insert");
}

static size_t
user_key(unsigned char *ukey, size_t cap, int64_t id, uint64_t version)
{
    return (size_t)snprintf((char *)ukey, cap, "%08" PRIu64 "%016" PRIx64,
      (version * 7919 + (uint64_t)id) % 100000000, (uint64_t)id);
}

/* Before document `id` is replaced: its secondary-index entry goes, as in mongod. */
static void
drop_old_index_entry(struct db *db, unsigned c, int64_t id)
{
    WT_ITEM old, ikey;
    unsigned char ukey[40];
    db->coll[c]->set_key(db->coll[c], id);
    check(db->coll[c]->search(db->coll[c]), "search document");
    check(db->coll[c]->get_value(db->coll[c], &old), "document get_value");
    const unsigned char *p = memmem(old.data, old.size, "\x10v", 3);
    if (p == NULL)
        die("document %" PRId64 " has no version field", id);
    uint64_t version = strtoull((const char *)p + 3, NULL, 10);
    ikey.data = ukey;
    ikey.size = user_key(ukey, sizeof(ukey), id, version);
    db->user_index[c]->set_key(db->user_index[c], &ikey);
    check(db->user_index[c]->remove(db->user_index[c]), "remove secondary index entry");
}

/*
 * Write document `id` of collection c and its index entries: the _id entry only when the
 * document is new (an update keeps its _id, and mongod leaves unchanged keys alone).
 */
static void
put_doc(struct db *db, unsigned c, int64_t id, uint64_t version, int is_new, unsigned char *buf,
  size_t cap)
{
    WT_ITEM value, key, ikey;
    unsigned char idkey[24], ukey[40];
    value.data = buf;
    value.size = make_doc(buf, cap, id, c, version);
    db->coll[c]->set_key(db->coll[c], id);
    db->coll[c]->set_value(db->coll[c], &value);
    check(db->coll[c]->insert(db->coll[c]), "insert document");

    /* _id index: the ObjectId-like bytes -> record id. */
    int64_t rid = id;
    WT_ITEM rv = {.data = &rid, .size = sizeof(rid)};
    if (is_new) {
        memcpy(idkey, (const char *)buf + 5, 24);
        key.data = idkey;
        key.size = 24;
        db->id_index[c]->set_key(db->id_index[c], &key);
        db->id_index[c]->set_value(db->id_index[c], &rv);
        check(db->id_index[c]->insert(db->id_index[c]), "insert _id index");
    }

    /* A secondary index on a field that changes with every version. */
    ikey.data = ukey;
    ikey.size = user_key(ukey, sizeof(ukey), id, version);
    db->user_index[c]->set_key(db->user_index[c], &ikey);
    db->user_index[c]->set_value(db->user_index[c], &rv);
    check(db->user_index[c]->insert(db->user_index[c]), "insert secondary index");
}

static uint64_t
parse_u64(const char *what, const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s)
        die("%s: expected a whole number, got '%s'", what, s);
    return v;
}

static void
fill(const char *dir, uint64_t size_mib)
{
    struct db db;
    unsigned char buf[8192];
    char key[32];
    uint64_t target = size_mib << 20, written = 0, since_ckpt = 0;
    int64_t count[COLLECTIONS] = {0};
    open_db(&db, dir, 1);
    WT_SESSION *s = db.session;
    while (dir_bytes(dir) < target) {
        /* Fill about 16 MiB between size checks, spread across the collections. */
        for (uint64_t batch = 0; batch < (16u << 20);) {
            check(s->begin_transaction(s, NULL), "begin_transaction");
            for (int i = 0; i < DOCS_PER_TXN; i++) {
                double r = (double)(rnd() % 1000000) / 1000000.0, acc = 0;
                unsigned c = 0;
                for (; c < COLLECTIONS - 1; c++) {
                    acc += collection_share[c];
                    if (r < acc)
                        break;
                }
                put_doc(&db, c, ++count[c], 0, 1, buf, sizeof(buf));
                batch += 220u << c;
            }
            check(s->commit_transaction(s, NULL), "commit_transaction");
        }
        written += 16u << 20;
        since_ckpt += 16u << 20;
        if (since_ckpt >= CHECKPOINT_BYTES) {
            check(s->checkpoint(s, NULL), "checkpoint");
            since_ckpt = 0;
        }
    }
    for (unsigned c = 0; c < COLLECTIONS; c++) {
        snprintf(key, sizeof(key), "count-%u", c);
        meta_set(&db, key, count[c]);
    }
    close_db(&db);
    fprintf(stderr, "wt-dbpath: filled %s: %" PRId64 "+%" PRId64 "+%" PRId64 "+%" PRId64
      " documents, %" PRIu64 " MiB on disk\n", dir, count[0], count[1], count[2], count[3],
      dir_bytes(dir) >> 20);
    (void)written;
}

static void
update(const char *dir, double percent)
{
    struct db db;
    unsigned char buf[8192];
    char key[32];
    int64_t count[COLLECTIONS], total = 0;
    open_db(&db, dir, 0);
    WT_SESSION *s = db.session;
    for (unsigned c = 0; c < COLLECTIONS; c++) {
        snprintf(key, sizeof(key), "count-%u", c);
        count[c] = meta_get(&db, key);
        total += count[c];
    }
    if (total == 0)
        die("%s holds no documents: run 'fill' first", dir);
    uint64_t version = (uint64_t)meta_get(&db, "version") + 1;
    int64_t todo = (int64_t)((double)total * percent / 100.0);
    for (int64_t done = 0; done < todo;) {
        check(s->begin_transaction(s, NULL), "begin_transaction");
        for (int i = 0; i < DOCS_PER_TXN && done < todo; i++, done++) {
            /* A working set: 90% of updates go to the newest 5% of a collection. */
            int64_t pick = (int64_t)(rnd() % (uint64_t)total);
            unsigned c = 0;
            while (pick >= count[c])
                pick -= count[c++];
            if (rnd() % 10 != 0) {
                int64_t hot = count[c] / 20 + 1;
                pick = count[c] - 1 - (int64_t)(rnd() % (uint64_t)hot);
            }
            drop_old_index_entry(&db, c, pick + 1);
            put_doc(&db, c, pick + 1, version, 0, buf, sizeof(buf));
        }
        check(s->commit_transaction(s, NULL), "commit_transaction");
        if (todo >= 4 && done % (todo / 4) < DOCS_PER_TXN && done < todo)
            check(s->checkpoint(s, NULL), "checkpoint");
    }
    meta_set(&db, "version", (int64_t)version);
    close_db(&db);
    fprintf(stderr, "wt-dbpath: updated %" PRId64 " of %" PRId64 " documents in %s\n", todo,
      total, dir);
}

int
main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "fill") != 0 && strcmp(argv[1], "update") != 0))
        die("usage: wt-dbpath fill DIR SIZE_MIB [--seed N] | update DIR PERCENT [--seed N]");
    rng_state = 0x9E3779B97F4A7C15ULL;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            rng_state ^= parse_u64("--seed", argv[++i]) * 0xBF58476D1CE4E5B9ULL;
        else
            die("unknown argument '%s'", argv[i]);
    }
    if (strcmp(argv[1], "fill") == 0) {
        uint64_t mib = parse_u64("SIZE_MIB", argv[3]);
        if (mib == 0 || mib > (1u << 22))
            die("SIZE_MIB: expected 1 to 4194304, got %" PRIu64, mib);
        fill(argv[2], mib);
    } else {
        char *end;
        double p = strtod(argv[3], &end);
        if (*end != '\0' || !(p > 0 && p <= 100))
            die("PERCENT: expected a number in (0, 100], got '%s'", argv[3]);
        /* The update's choices differ from the fill's even with the same seed. */
        rng_state ^= 0x94D049BB133111EBULL;
        update(argv[2], p);
    }
    return 0;
}
