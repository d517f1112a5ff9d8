#!/usr/bin/env bash
# judge.sh DIR: would mongod's storage engine recover from this copy of a dbPath?
#
# Works on a private copy (DIR is only read), opened the way mongod opens its dbPath
# (log in journal/, recovery on), with Debian's WiredTiger 3.2.1 `wt` utility:
#   1. recovery + open   (wt -R list; the metadata is read here)
#   2. verify every table:* listed
#   3. if the copy was written by wt-writer (it has table:snapcrypt-writer), check the data:
#      every value byte for byte, and that all tables recovered to one transaction boundary
#      (see writer.c for the invariant).
#
# stdout: `OPENS` (exit 0), or `FAILS: <one-line reason>` (exit 1).
# Exit 2 (message on stderr): the judge itself could not run (usage, no wt, copy failed).
# Details go to stderr. Every wt call is bounded by `timeout 60`.
set -euo pipefail

# mongod's wiredtiger_open log settings, less snappy (see writer.c).
WT_CONFIG='log=(enabled=true,path=journal)'
WT_TIMEOUT=60

err() { echo "judge.sh: $*" >&2; exit 2; }
fails() { echo "FAILS: $*"; exit 1; }

[[ $# -eq 1 && $1 != -* ]] || err "usage: judge.sh DIR"
SRC=$1
command -v wt >/dev/null 2>&1 || err "no wt on PATH: run tests/doubles/wiredtiger/build.sh first"
command -v python3 >/dev/null 2>&1 || err "no python3 on PATH"
[[ -d $SRC ]] || fails "$SRC is not a directory"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wt-judge.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT
COPY=$WORK/db
cp -a -- "$SRC" "$COPY" || err "could not copy $SRC"
# The lock file of the process that wrote DIR means nothing in a copy (mongod deletes a stale
# one too).
rm -f -- "$COPY/WiredTiger.lock"

# The first line that WiredTiger itself printed is the cause; the utility's last line
# ("wt: ...: WT_ERROR: non-specific WiredTiger error") only says that something failed.
reason() { # WHAT RC LOGFILE
    local what=$1 rc=$2 log=$3 line
    if ((rc == 124 || rc == 137)); then
        echo "$what: timed out after ${WT_TIMEOUT} s"
        return
    fi
    line=$(grep -m1 -E '^\[[0-9]+:[0-9]+\]' "$log" || true)
    if [[ -n $line ]]; then
        # Drop the "[seconds:usecs][pid:thread], " prefix.
        line=$(sed -E 's/^\[[^]]*\]\[[^]]*\],? *//' <<<"$line")
    else
        line=$(grep -v '^[[:space:]]*$' "$log" | tail -n1 || true)
    fi
    [[ -n $line ]] || line="wt exited with status $rc"
    line=${line//"$COPY/"/}  # paths relative to DIR, not to the judge's private copy
    echo "$what: $line" | tr -d '\r' | tr '\n\t' '  ' | cut -c1-400
}

# wt_run WHAT OUTFILE ARGS...: run wt on the copy; on failure print FAILS and exit 1.
wt_run() {
    local what=$1 out=$2 rc=0
    shift 2
    timeout -k 5 "$WT_TIMEOUT" wt -C "$WT_CONFIG" -R -h "$COPY" "$@" >"$out" 2>"$WORK/wt.err" || rc=$?
    if ((rc != 0)); then
        head -n 20 "$WORK/wt.err" >&2  # a checksum failure comes with a long hex dump
        fails "$(reason "$what" "$rc" "$WORK/wt.err")"
    fi
}

# Without these, mongod (which opens with `create`) would start an empty database: say so
# rather than pass on wt's confusing complaint about WiredTiger.lock.
for f in WiredTiger WiredTiger.turtle WiredTiger.wt; do
    [[ -f $COPY/$f ]] || fails "no $f: not a WiredTiger database"
done
[[ -d $COPY/journal ]] || fails "no journal/ directory (the writes since the last checkpoint are gone)"

wt_run "recovery" "$WORK/list" list
mapfile -t tables < <(grep '^table:' "$WORK/list" || true)
((${#tables[@]} > 0)) || fails "recovery: no table: objects in the metadata"

for t in "${tables[@]}"; do
    wt_run "verify $t" /dev/null verify "$t"
done
echo "judge.sh: recovered and verified ${#tables[@]} tables: ${tables[*]}" >&2

if ! printf '%s\n' "${tables[@]}" | grep -qx 'table:snapcrypt-writer'; then
    echo "judge.sh: no table:snapcrypt-writer (not written by wt-writer): no data check" >&2
    echo OPENS
    exit 0
fi

# One dump of them all: every wt process spends ~1 s of CPU before it opens anything (see
# README.md), so the judge makes as few as it can.
mapfile -t writer_tables < <(printf '%s\n' "${tables[@]}" | grep -E '^table:(snapcrypt-writer|collection-[0-9]+)$')
wt_run "dump" "$WORK/dump.json" dump -j "${writer_tables[@]}"

# The data check: rebuild what every row must hold if the copy recovered to one transaction
# boundary M of the writer's history, and compare.
rc=0
python3 - "$WORK" >"$WORK/check.out" <<'PY' || rc=$?
import json, os, re, sys

work = sys.argv[1]

with open(os.path.join(work, "dump.json")) as f:
    dump = json.load(f)

def rows(uri):
    """{key: value} of one table of the `wt dump -j` output, or None if it is not there."""
    if uri not in dump:
        return None
    data = [p["data"] for p in dump[uri] if "data" in p]
    return {r["key0"]: r["value0"] for r in (data[0] if data else [])}

def bad(msg):
    print(msg)
    sys.exit(1)

params = rows("table:snapcrypt-writer").get("params")
if params is None:
    bad("table:snapcrypt-writer has no params row")
try:
    p = dict(kv.split("=", 1) for kv in params.split())
    fmt, tables, keys, ops, vbytes = (
        int(p[k]) for k in ("format", "tables", "keys", "ops_per_txn", "value_bytes"))
except (KeyError, ValueError):
    bad(f"unreadable wt-writer params: {params!r}")
if fmt != 1:
    bad(f"unknown wt-writer format: {params!r}")

ABC = "abcdefghijklmnopqrstuvwxyz"

def value(c, k, t):  # make_value() in writer.c: byte i of the padding is 'a' + (c + i) % 26
    head = f"c={c} k={k} t={t} "
    r = (c + len(head)) % 26
    pad = (ABC[r:] + ABC[:r]) * (vbytes // 26 + 1)
    return head + pad[: vbytes - len(head)]

counters = {}
for t in range(tables):
    table = rows(f"table:collection-{t}")
    if table is None:
        bad(f"table:collection-{t} is missing")
    got = {}
    for k, v in table.items():
        m = re.match(r"c=(\d+) ", v)
        if not m or value(int(m.group(1)), k, t) != v:
            bad(f"collection-{t} key {k}: value is not one the writer wrote: {v[:60]!r}")
        got[k] = int(m.group(1))
    counters[t] = got

top = max((c for got in counters.values() for c in got.values()), default=0)
if top % ops:
    bad(f"recovered to counter {top}, inside a transaction of {ops} (a torn transaction)")
for t, got in counters.items():
    for k in range(keys):
        want = top - (top - k) % keys
        have = got.get(k, 0)  # 0: no row
        if have != max(want, 0):
            show = lambda c: f"counter {c}" if c > 0 else "no row"
            bad(f"collection-{t} key {k}: {show(have)}, expected {show(want)}"
                f" for a copy at counter {top} (not one point in time)")
    extra = set(got) - set(range(keys))
    if extra:
        bad(f"collection-{t}: unexpected keys {sorted(extra)[:5]}")
print(f"all {tables} collections hold exactly the state after counter {top} "
      f"({min(top, keys)} rows each)")
PY
if ((rc != 0)); then
    [[ -s $WORK/check.out ]] || err "data check crashed (status $rc)"
    fails "data: $(head -n1 "$WORK/check.out")"
fi
echo "judge.sh: data: $(cat "$WORK/check.out")" >&2
echo OPENS
