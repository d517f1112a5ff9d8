#!/usr/bin/env bash
# Benchmark snapcrypt against restic (Debian's) on one generated MongoDB-like dbPath, in one
# run: full backup, restore, incremental after rewriting 1% of the 4 KiB pages, peak RSS.
# Writes bench/RESULTS.md. Usage: bench/run.sh [SIZE_MIB (default 1024)] [CHUNK_SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-1024}
CHUNK=${2:-}
command -v restic >/dev/null || { apt-get update -qq && apt-get install -y -qq restic; }
cargo build --release --quiet
SC=$PWD/target/release/snapcrypt
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/snapcrypt-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/src
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$WORK/restic-repo RESTIC_CACHE_DIR=$WORK/restic-cache
export SNAPCRYPT_KEY_FILE=$WORK/key.json
declare -A T R

warm() { find "$SRC" -type f -exec cat {} + > /dev/null; }
# measure NAME CMD...: wall seconds into T[NAME], peak RSS KiB into R[NAME]
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" || {
    echo "bench: $name failed:"; cat "$WORK/$name.err"; exit 1; }
  read -r T[$name] R[$name] < "$WORK/time"
  echo "bench: $name ${T[$name]} s, peak RSS ${R[$name]} KiB"
}
bytes() { du -sb "$1" | cut -f1; }
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }

echo "bench: generating a ${SIZE} MiB dbPath"
python3 bench/gen_dbpath.py make "$SRC" "$SIZE"
restic init --repository-version 2 > /dev/null
chunk_flag=()
[ -n "$CHUNK" ] && chunk_flag=(--chunk-size "$CHUNK")

warm; measure restic_full restic backup --quiet "$SRC"
warm; measure sc_full "$SC" backup --source "$SRC" --repo "$WORK/sc-repo" "${chunk_flag[@]}"
RESTIC_FULL_BYTES=$(bytes "$WORK/restic-repo"); SC_FULL_BYTES=$(bytes "$WORK/sc-repo")

python3 bench/gen_dbpath.py rewrite "$SRC" 1
warm; measure restic_incr restic backup --quiet "$SRC"
warm; measure sc_incr "$SC" backup --source "$SRC" --repo "$WORK/sc-repo"
RESTIC_ADDED=$(( $(bytes "$WORK/restic-repo") - RESTIC_FULL_BYTES ))
SC_ADDED=$(( $(bytes "$WORK/sc-repo") - SC_FULL_BYTES ))

measure restic_restore restic restore latest --target "$WORK/restic-out"
measure sc_restore "$SC" restore --repo "$WORK/sc-repo" --snapshot latest --target "$WORK/sc-out"
diff -r "$SRC" "$WORK/sc-out" > /dev/null || { echo "bench: snapcrypt restore differs from the source"; exit 1; }
diff -r "$SRC" "$WORK/restic-out$SRC" > /dev/null || { echo "bench: restic restore differs from the source"; exit 1; }

# Memory as the source grows: a quarter-size source, backed up into a new repository.
mkdir -p "$WORK/small"
python3 bench/gen_dbpath.py make "$WORK/small/src" $(( SIZE / 4 )) --seed 2
measure sc_small "$SC" backup --source "$WORK/small/src" --repo "$WORK/small/repo"

CORES=$(nproc)
cat > bench/RESULTS.md <<MD
# Benchmark: snapcrypt vs restic $(restic version | awk '{print $2}')

\`bench/run.sh $SIZE${CHUNK:+ $CHUNK}\` on $(date -u +%Y-%m-%d), $CORES cores, $(free -g | awk '/Mem:/{print $2}') GiB.
Source: a generated MongoDB-like dbPath of $SIZE MiB (4 KiB pages, about half incompressible),
then 1% of its pages rewritten in place, scattered across the files. Both tools compress
(restic repository version 2, compression auto). The source is read once before each backup
so both find it in the page cache. Chunk size: ${CHUNK:-16384 (default)}.

| measure | restic | snapcrypt | ratio | goal |
|---|---|---|---|---|
| full backup, s | ${T[restic_full]} | ${T[sc_full]} | $(ratio ${T[sc_full]} ${T[restic_full]}) | <= 0.3 |
| restore, s | ${T[restic_restore]} | ${T[sc_restore]} | $(ratio ${T[sc_restore]} ${T[restic_restore]}) | <= 0.5 |
| incremental after 1% page rewrite, bytes added | $RESTIC_ADDED | $SC_ADDED | $(ratio $SC_ADDED $RESTIC_ADDED) | <= 0.1 |
| incremental, s | ${T[restic_incr]} | ${T[sc_incr]} | $(ratio ${T[sc_incr]} ${T[restic_incr]}) | <= 0.3 |
| peak RSS, full backup, KiB | ${R[restic_full]} | ${R[sc_full]} | $(ratio ${R[sc_full]} ${R[restic_full]}) | <= 0.5 |
| repository after full backup, bytes | $RESTIC_FULL_BYTES | $SC_FULL_BYTES | $(ratio $SC_FULL_BYTES $RESTIC_FULL_BYTES) | |

Peak RSS of snapcrypt as the source grows: $(( SIZE / 4 )) MiB source ${R[sc_small]} KiB,
$SIZE MiB source ${R[sc_full]} KiB (ratio $(ratio ${R[sc_full]} ${R[sc_small]}) for 4x the data).
Restores of both tools were compared byte for byte with the source.
MD
cat bench/RESULTS.md
