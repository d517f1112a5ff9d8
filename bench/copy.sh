#!/usr/bin/env bash
# `snapcrypt copy` against `restic copy` (Debian's restic) in the same run: one generated
# dbPath (bench/gen_dbpath.py) backed up by each tool into a local repository, then copied by
# each into a new local repository and into a new prefix of an S3 server (s3s-fs on loopback,
# as tests/support/s3.rs starts it), then 1% of its pages rewritten, backed up again, and the
# new snapshot copied again into both (the incremental copy). Each copy target is checked:
# snapcrypt's with `verify --read-data` and a restore compared with the source, restic's with
# `restic check --read-data`. restic copies into a repository made with --copy-chunker-params
# (so its deduplication matches the source's, as snapcrypt's copies always do); it decrypts and
# re-encrypts every blob, where snapcrypt sends the sealed packs as they are.
# Reported, not asserted (peak RSS too). Scratch under $BENCH_DIR (default /var/tmp), removed
# on exit, and the S3 server stopped.
# Usage: bench/copy.sh [SIZE_MIB (default 512)]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-512}
command -v restic >/dev/null || { apt-get update -qq && apt-get install -y -qq restic; }
cargo build --release --quiet
SERVICES_ENV=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}/services.env
# shellcheck disable=SC1090
[ -f "$SERVICES_ENV" ] && . "$SERVICES_ENV"

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/snapcrypt-copy.XXXXXX")
S3_PID=
cleanup() {
  [ -n "$S3_PID" ] && { kill "$S3_PID" 2>/dev/null || true; wait "$S3_PID" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp target/release/snapcrypt "$WORK/snapcrypt"
SC=$WORK/snapcrypt

# The S3 server.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/s3/root/backups"
bash tests/services/s3/start-s3s-fs.sh "$WORK/s3" "$PORT" bench bench-secret-key \
  > /dev/null 2> "$WORK/s3.log" &
S3_PID=$!
for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
RESTIC_S3=s3:http://127.0.0.1:$PORT/backups

export RESTIC_PASSWORD=bench RESTIC_FROM_PASSWORD=bench RESTIC_CACHE_DIR=$WORK/restic-cache
declare -A T R CHECK
# measure NAME CMD...: wall seconds into T[NAME], peak RSS KiB into R[NAME]
measure() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" || {
    echo "bench/copy.sh: $name failed:"; tail -20 "$WORK/$name.err"; exit 1; }
  read -r T[$name] R[$name] < "$WORK/time"
  echo "bench: $name ${T[$name]} s, peak RSS ${R[$name]} KiB"
}
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }

SRC=$WORK/src
echo "bench: generating a ${SIZE} MiB dbPath"
python3 bench/gen_dbpath.py make "$SRC" "$SIZE"
"$SC" backup --source "$SRC" --repo "$WORK/sc-a" --key-file "$WORK/key-a.json" > /dev/null 2>&1
restic -r "$WORK/restic-a" init --repository-version 2 > /dev/null
restic -r "$WORK/restic-a" backup --quiet "$SRC" > /dev/null

# The two copy commands, into $1 (arrays for measure: /usr/bin/time runs programs, not functions).
sc_copy() { SC_COPY=("$SC" copy --from "$WORK/sc-a" --key-file "$WORK/key-a.json" --to "$1" --to-key-file "$WORK/key-b.json"); }
restic_copy() { RESTIC_COPY=(restic -r "$1" copy --from-repo "$WORK/restic-a"); }
for target in local s3; do
  if [ $target = local ]; then sc_to=$WORK/sc-b; restic_to=$WORK/restic-b
  else sc_to=s3://backups/sc; restic_to=$RESTIC_S3/restic; fi
  restic -r "$restic_to" init --repository-version 2 --from-repo "$WORK/restic-a" --copy-chunker-params > /dev/null
  sc_copy "$sc_to"; restic_copy "$restic_to"
  measure "sc_full_$target" "${SC_COPY[@]}"
  measure "restic_full_$target" "${RESTIC_COPY[@]}"
done

python3 bench/gen_dbpath.py rewrite "$SRC" 1
"$SC" backup --source "$SRC" --repo "$WORK/sc-a" --key-file "$WORK/key-a.json" > /dev/null 2>&1
restic -r "$WORK/restic-a" backup --quiet "$SRC" > /dev/null
for target in local s3; do
  if [ $target = local ]; then sc_to=$WORK/sc-b; restic_to=$WORK/restic-b
  else sc_to=s3://backups/sc; restic_to=$RESTIC_S3/restic; fi
  sc_copy "$sc_to"; restic_copy "$restic_to"
  measure "sc_incr_$target" "${SC_COPY[@]}"
  measure "restic_incr_$target" "${RESTIC_COPY[@]}"
  "$SC" verify --repo "$sc_to" --key-file "$WORK/key-b.json" --read-data > /dev/null 2>&1 ||
    { echo "bench/copy.sh: the snapcrypt copy in $target does not verify"; exit 1; }
  "$SC" restore --repo "$sc_to" --key-file "$WORK/key-b.json" --snapshot latest --target "$WORK/out" > /dev/null 2>&1
  diff -r "$SRC" "$WORK/out" > /dev/null || { echo "bench/copy.sh: the restore from the $target copy differs"; exit 1; }
  rm -rf "$WORK/out"
  # The peer's own check is reported, not required (its copy into s3s-fs failed it once).
  if restic -r "$restic_to" check --read-data > "$WORK/restic-check-$target.out" 2>&1; then
    CHECK[$target]=passed
  else
    CHECK[$target]="FAILED: $(grep -m1 -iE 'error|fatal' "$WORK/restic-check-$target.out" || tail -1 "$WORK/restic-check-$target.out")"
  fi
done

echo
echo "bench/copy.sh $SIZE on $(date -u +%Y-%m-%d), $(nproc) cores, restic $(restic version | awk '{print $2}');"
echo "a $SIZE MiB generated dbPath copied whole, then again after 1% of its pages were rewritten"
echo "and backed up again. Local: directory to directory on one disk; S3: directory to s3s-fs on loopback."
echo
echo "| copy | restic s | snapcrypt s | ratio | restic peak RSS MiB | snapcrypt peak RSS MiB |"
echo "|---|---|---|---|---|---|"
for k in full_local full_s3 incr_local incr_s3; do
  echo "| $k | ${T[restic_$k]} | ${T[sc_$k]} | $(ratio "${T[sc_$k]}" "${T[restic_$k]}") | $(( R[restic_$k] / 1024 )) | $(( R[sc_$k] / 1024 )) |"
done
echo
echo "Each snapcrypt copy checked: verify --read-data and a restore equal to the source."
echo "restic check --read-data of restic's copies: local ${CHECK[local]}; S3 ${CHECK[s3]}."
