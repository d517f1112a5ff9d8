#!/usr/bin/env bash
# Measure the chunk size choice: for each size, a full backup of a generated dbPath, then an
# incremental one after rewriting 1% of the 4 KiB pages; prints time and bytes added.
# Usage: bench/chunk_sizes.sh [SIZE_MIB (default 512)]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-512}
cargo build --release --quiet
SC=$PWD/target/release/snapcrypt
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/snapcrypt-chunks.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
python3 bench/gen_dbpath.py make "$WORK/base" "$SIZE"
echo "| chunk | full backup s | repository bytes | incremental s | bytes added by 1% page rewrite | index entries |"
echo "|---|---|---|---|---|---|"
for chunk in 4096 8192 16384 65536 262144; do
  rm -rf "$WORK/src" "$WORK/repo"; cp -a "$WORK/base" "$WORK/src"
  find "$WORK/src" -type f -exec cat {} + > /dev/null
  /usr/bin/time -f %e -o "$WORK/t" "$SC" backup --source "$WORK/src" --repo "$WORK/repo" --key-file "$WORK/key" --chunk-size $chunk > /dev/null 2>&1
  full=$(cat "$WORK/t")
  before=$(du -sb "$WORK/repo" | cut -f1)
  python3 bench/gen_dbpath.py rewrite "$WORK/src" 1 --seed 7 > /dev/null
  /usr/bin/time -f %e -o "$WORK/t" "$SC" backup --source "$WORK/src" --repo "$WORK/repo" --key-file "$WORK/key" > /dev/null 2>&1
  incr=$(cat "$WORK/t")
  after=$(du -sb "$WORK/repo" | cut -f1)
  entries=$(( $(du -cb "$WORK/repo/index" | tail -1 | cut -f1) / 46 ))
  echo "| $chunk | $full | $before | $incr | $(( after - before )) | ~$entries |"
done
