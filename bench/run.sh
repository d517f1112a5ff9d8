#!/usr/bin/env bash
# Benchmark snapcrypt against restic (Debian's), and rustic when it is on PATH, on one
# generated MongoDB-like dbPath, in one run: full backup, restore, incremental after
# rewriting 1% of the 4 KiB pages, peak RSS of backup and restore.
# With --wiredtiger the dbPath is a real WiredTiger database instead (bench/wt_dbpath.c, on
# Debian's libwiredtiger: mongod's table configurations, snappy), and the incremental follows
# an update of 1% of its documents with checkpoints, so it sees where WiredTiger really puts
# changed blocks.
# Writes its own section of bench/RESULTS.md ("## Storage engine, SIZE MiB", or
# "## Storage engine, WiredTiger, SIZE MiB"), leaving the other sections as they are.
# Usage: bench/run.sh [--wiredtiger] [SIZE_MIB (default 1024)] [CHUNK_SIZE]
#        bench/run.sh --stores [SIZE_MIB (default 256)] [STORE...]: backup and restore against
#        a local directory and the S3, GCS and Azure emulators instead (bench/stores.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --stores ]; then shift; exec bash bench/stores.sh "$@"; fi
WT=""
if [ "${1:-}" = --wiredtiger ]; then WT=1; shift; fi
SIZE=${1:-1024}
CHUNK=${2:-}
command -v restic >/dev/null || { apt-get update -qq && apt-get install -y -qq restic; }
cargo build --release --quiet
SC=$PWD/target/release/snapcrypt
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/snapcrypt-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ -n "$WT" ]; then
  # The test ground's WiredTiger double installs the library; the bench's writer is its own.
  bash tests/doubles/wiredtiger/build.sh > /dev/null
  gcc -std=c11 -O2 -Wall -Wextra -o "$WORK/wt-dbpath" bench/wt_dbpath.c -lwiredtiger
  make_src() { "$WORK/wt-dbpath" fill "$@"; }
  rewrite_src() { "$WORK/wt-dbpath" update "$1" 1; }
  KIND="WiredTiger, "
  CHANGE="update"
  SOURCE_TEXT="a WiredTiger 3.2.1 database of $SIZE MiB written by \`bench/wt_dbpath.c\` (mongod's
table configurations: four collections with snappy block compression, their _id and one
secondary index, the journal), then 1% of its documents updated (90% of them among the newest
5%, with checkpoints), as mongod would."
else
  make_src() { python3 bench/gen_dbpath.py make "$@"; }
  rewrite_src() { python3 bench/gen_dbpath.py rewrite "$1" 1; }
  KIND=""
  CHANGE="page rewrite"
  SOURCE_TEXT="a generated MongoDB-like dbPath of $SIZE MiB (4 KiB pages, about half incompressible),
then 1% of its pages rewritten in place, scattered across the files."
fi
SRC=$WORK/src
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$WORK/restic-repo RESTIC_CACHE_DIR=$WORK/restic-cache
export RUSTIC_PASSWORD=bench RUSTIC_REPOSITORY=$WORK/rustic-repo RUSTIC_CACHE_DIR=$WORK/rustic-cache
export SNAPCRYPT_KEY_FILE=$WORK/key.json
declare -A T R

# Before each measure: the source in the page cache, and no dirty data of the previous
# command still being written back (it would compete for the disk with the next one).
warm() { find "$SRC" -type f -exec cat {} + > /dev/null; sync; }
# measure NAME CMD...: wall seconds into T[NAME], peak RSS KiB into R[NAME]
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" || {
    echo "bench: $name failed:"; cat "$WORK/$name.err"; exit 1; }
  read -r T[$name] R[$name] < "$WORK/time"
  echo "bench: $name ${T[$name]} s, peak RSS ${R[$name]} KiB"
}
bytes() { du -sb "$1" | cut -f1; }
# Delete, then wait until the disk has nothing in flight (the file system discards freed blocks
# online here: a restore started at once would share the disk with the discards of the last
# deletion, as the other tool's did not).
# Before each restore: an empty page cache, as in a disaster (no tool finds its repository
# there, whatever ran before it).
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
delete() {
  rm -rf "$@"; sync
  local dev idle=0
  dev=$(basename "$(df --output=source "$WORK" | tail -1)")
  for _ in $(seq 600); do
    if [ "$(awk '{print $1 + $2}' "/sys/class/block/$dev/inflight" 2>/dev/null || echo 0)" = 0 ]; then
      idle=$((idle + 1)); [ $idle -ge 5 ] && return
    else idle=0; fi
    sleep 0.1
  done
}
# Every path under . with its kind, and each file's size, sorted.
listing() { find . \( -type f -printf 'f %p %s\n' \) -o -printf '%y %p\n' | sort; }
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }

echo "bench: generating a ${SIZE} MiB ${KIND}dbPath"
make_src "$SRC" "$SIZE"
restic init --repository-version 2 > /dev/null
chunk_flag=()
[ -n "$CHUNK" ] && chunk_flag=(--chunk-size "$CHUNK")

warm; measure restic_full restic backup --quiet "$SRC"
warm; measure sc_full "$SC" backup --source "$SRC" --repo "$WORK/sc-repo" "${chunk_flag[@]}"
RESTIC_FULL_BYTES=$(bytes "$WORK/restic-repo"); SC_FULL_BYTES=$(bytes "$WORK/sc-repo")

# A first backup killed at 90% (SIGKILL once its repository holds 90% of what the full backup
# stored), then run again with default settings: what the retry stores again of what the
# killed run had stored, and how much of the source it reads (#33: at most 10%, and once).
"$SC" backup --source "$SRC" --repo "$WORK/sc-killed" "${chunk_flag[@]}" > /dev/null 2>&1 &
KILLED_PID=$!
while kill -0 "$KILLED_PID" 2>/dev/null; do
  if [ "$(bytes "$WORK/sc-killed" 2>/dev/null || echo 0)" -ge $(( SC_FULL_BYTES * 9 / 10 )) ]; then
    kill -9 "$KILLED_PID"; break
  fi
  sleep 0.02
done
wait "$KILLED_PID" 2>/dev/null && { echo "bench: the backup to kill finished before 90%"; exit 1; }
KILLED_BYTES=$(bytes "$WORK/sc-killed")
warm; SNAPCRYPT_LOCK_STALE_SECS=1 measure sc_retry "$SC" backup --source "$SRC" --repo "$WORK/sc-killed" --json
RETRY_AGAIN=$(( $(bytes "$WORK/sc-killed") - SC_FULL_BYTES ))
RETRY_READ=$(python3 -c "import json; print(json.load(open('$WORK/sc_retry.out'))['chunks_looked_up'] * ${CHUNK:-16384})")
SRC_BYTES=$(bytes "$SRC")
delete "$WORK/sc-killed"

rewrite_src "$SRC"
warm; measure restic_incr restic backup --quiet "$SRC"
warm; measure sc_incr "$SC" backup --source "$SRC" --repo "$WORK/sc-repo"
RESTIC_ADDED=$(( $(bytes "$WORK/restic-repo") - RESTIC_FULL_BYTES ))
SC_ADDED=$(( $(bytes "$WORK/sc-repo") - SC_FULL_BYTES ))

# rustic (when on PATH) backs up the rewritten source now, while it is on disk.
if command -v rustic > /dev/null; then
  rustic init > /dev/null 2>&1
  warm; measure rustic_full rustic backup "$SRC"
fi
# The source as a listing and checksums, then gone, and one restore on disk at a time: a
# 16 GiB run then peaks at about 65 GB of disk (the three repositories and one restore).
(cd "$SRC" && listing > "$WORK/src.list" && find . -type f -print0 | sort -z | xargs -0 md5sum > "$WORK/src.sums")
delete "$SRC"
same_as_src() { # DIR TOOL: the restored tree is the source's, byte for byte
  (cd "$1" && listing | cmp -s - "$WORK/src.list" && md5sum --quiet -c "$WORK/src.sums" > /dev/null) ||
    { echo "bench: $2's restore differs from the source"; exit 1; }
}

cold; measure restic_restore restic restore latest --target "$WORK/restic-out"
# restic returns before its writes are on disk (snapcrypt syncs every file first): the sync
# that follows is the rest of a durable restore.
measure restic_sync sync
DISK_AT_RESTORE=$(df --output=pcent "$WORK" | tail -1 | tr -d ' ')
same_as_src "$WORK/restic-out$SRC" restic
delete "$WORK/restic-out"
cold; measure sc_restore "$SC" restore --repo "$WORK/sc-repo" --snapshot latest --target "$WORK/sc-out"
same_as_src "$WORK/sc-out" snapcrypt
delete "$WORK/sc-out"
# The disk's floor: snapcrypt's repository read while the restored size is written, with no
# CPU work (bench/disk_floor.sh).
cold; measure disk_floor bench/disk_floor.sh "$WORK/sc-repo" "$SIZE" "$WORK/floor"
delete "$WORK"/floor.*
# Verify and prune hold a per-blob structure (24 bytes a blob: repo/blob_places.rs): their peak RSS,
# here and at a quarter of the size below.
measure sc_verify "$SC" verify --repo "$WORK/sc-repo"
measure sc_prune "$SC" prune --repo "$WORK/sc-repo" --keep-last 1 --delete-after 0s

# rustic (when on PATH): the rewritten source, backed up once above, restored.
RUSTIC_ROW=""
NL=$'\n'
if command -v rustic > /dev/null; then
  cold; measure rustic_restore rustic restore latest "$WORK/rustic-out"
  measure rustic_sync sync
  same_as_src "$WORK/rustic-out$SRC" rustic
  delete "$WORK/rustic-out"
  RV=$(rustic --version | awk '{print $2}')
  RUSTIC_ROW="| restore, vs rustic $RV (the same source backed up once), s | ${T[rustic_restore]} | ${T[sc_restore]} | $(ratio ${T[sc_restore]} ${T[rustic_restore]}) | < 1 |
| restore until on disk, vs rustic $RV (then sync), s | $(python3 -c "print(round(${T[rustic_restore]} + ${T[rustic_sync]}, 2))") | ${T[sc_restore]} | $(ratio ${T[sc_restore]} "(${T[rustic_restore]} + ${T[rustic_sync]})") | |"
fi

delete "$WORK/restic-repo" "$WORK/restic-cache" "$WORK/sc-repo" "$WORK/rustic-repo" "$WORK/rustic-cache"

# Memory as the source grows: a quarter-size source, backed up into a new repository and
# restored.
mkdir -p "$WORK/small"
make_src "$WORK/small/src" $(( SIZE / 4 )) --seed 2
measure sc_small "$SC" backup --source "$WORK/small/src" --repo "$WORK/small/repo"
measure sc_small_restore "$SC" restore --repo "$WORK/small/repo" --snapshot latest --target "$WORK/small/out"
measure sc_small_verify "$SC" verify --repo "$WORK/small/repo"
measure sc_small_prune "$SC" prune --repo "$WORK/small/repo" --keep-last 1 --delete-after 0s

CORES=$(nproc)
SECTION=$WORK/section.md
cat > "$SECTION" <<MD
## Storage engine, $KIND$SIZE MiB

\`bench/run.sh ${WT:+--wiredtiger }$SIZE${CHUNK:+ $CHUNK}\` on $(date -u +%Y-%m-%d), $CORES cores, $(free -g | awk '/Mem:/{print $2}') GiB, restic $(restic version | awk '{print $2}').
Source: $SOURCE_TEXT Both tools compress
(restic repository version 2, compression auto). The source is read once before each backup
so both find it in the page cache. Restores read the incremental snapshot into a new
directory, each from an empty page cache (dropped before it); the disk was $DISK_AT_RESTORE full after restic's restore. Chunk size: ${CHUNK:-16384 (default)}.

| measure | restic | snapcrypt | ratio | goal |
|---|---|---|---|---|
| full backup, s | ${T[restic_full]} | ${T[sc_full]} | $(ratio ${T[sc_full]} ${T[restic_full]}) | <= 0.3 |
| restore, s | ${T[restic_restore]} | ${T[sc_restore]} | $(ratio ${T[sc_restore]} ${T[restic_restore]}) | <= 0.35 |
| restore until on disk (restic: then sync), s | $(python3 -c "print(round(${T[restic_restore]} + ${T[restic_sync]}, 2))") | ${T[sc_restore]} | $(ratio ${T[sc_restore]} "(${T[restic_restore]} + ${T[restic_sync]})") | |
| the disk's floor for a restore (bench/disk_floor.sh: the repository read while $SIZE MiB is written, no CPU work), s, against restic's restore | ${T[restic_restore]} | ${T[disk_floor]} | $(ratio ${T[disk_floor]} ${T[restic_restore]}) | |
| snapcrypt's restore against that floor, s | ${T[disk_floor]} | ${T[sc_restore]} | $(ratio ${T[sc_restore]} ${T[disk_floor]}) | |
${RUSTIC_ROW:+$RUSTIC_ROW$NL}| incremental after the 1% $CHANGE, bytes added | $RESTIC_ADDED | $SC_ADDED | $(ratio $SC_ADDED $RESTIC_ADDED) | <= 0.1 |
| incremental, s | ${T[restic_incr]} | ${T[sc_incr]} | $(ratio ${T[sc_incr]} ${T[restic_incr]}) | <= 0.3 |
| peak RSS, full backup, KiB | ${R[restic_full]} | ${R[sc_full]} | $(ratio ${R[sc_full]} ${R[restic_full]}) | snapcrypt <= 65536 |
| peak RSS, incremental backup, KiB | ${R[restic_incr]} | ${R[sc_incr]} | $(ratio ${R[sc_incr]} ${R[restic_incr]}) | snapcrypt <= 65536 |
| peak RSS, restore, KiB | ${R[restic_restore]} | ${R[sc_restore]} | $(ratio ${R[sc_restore]} ${R[restic_restore]}) | snapcrypt <= 65536 |
| repository after full backup, bytes | $RESTIC_FULL_BYTES | $SC_FULL_BYTES | $(ratio $SC_FULL_BYTES $RESTIC_FULL_BYTES) | <= 1 |
| a first backup killed at 90% ($KILLED_BYTES bytes stored), then retried: bytes stored again, against the killed run's | | $RETRY_AGAIN | $(ratio $RETRY_AGAIN $KILLED_BYTES) | <= 0.1 |
| the retry: bytes of the source read, against the source | | $RETRY_READ | $(ratio $RETRY_READ $SRC_BYTES) | <= 1 (once) |

Peak RSS of snapcrypt as the source grows, $(( SIZE / 4 )) MiB and $SIZE MiB sources: backup
${R[sc_small]} and ${R[sc_full]} KiB (ratio $(ratio ${R[sc_full]} ${R[sc_small]}) for 4x the data), restore
${R[sc_small_restore]} and ${R[sc_restore]} KiB (ratio $(ratio ${R[sc_restore]} ${R[sc_small_restore]})), verify
${R[sc_small_verify]} and ${R[sc_verify]} KiB (ratio $(ratio ${R[sc_verify]} ${R[sc_small_verify]})), prune
${R[sc_small_prune]} and ${R[sc_prune]} KiB (ratio $(ratio ${R[sc_prune]} ${R[sc_small_prune]})).
Every restore was compared with the source (the list of paths and sizes, and every file's MD5).
MD
# Replace this size's section of bench/RESULTS.md (or add it before the operator sections).
python3 - "$SECTION" "$KIND$SIZE" <<'PY'
import re, sys
section = open(sys.argv[1]).read().replace("\n\n\n", "\n\n")
section = re.sub(r"\n\n(\| incremental)", r"\n\1", section)  # no rustic row: no gap
path = "bench/RESULTS.md"
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n"
head = f"## Storage engine, {sys.argv[2]} MiB\n"
parts = re.split(r"(?m)^(?=## )", text)
out, placed = [], False
for p in parts:
    if p.startswith(head):
        out.append(section.rstrip("\n") + "\n\n"); placed = True
    else:
        out.append(p)
if not placed:
    i = next((k for k, p in enumerate(out) if p.startswith("## ") and not p.startswith("## Storage engine")), len(out))
    out.insert(i, section.rstrip("\n") + "\n\n")
open(path, "w").write("".join(out).rstrip("\n") + "\n")
PY
cat "$SECTION"
