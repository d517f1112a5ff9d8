#!/usr/bin/env bash
# Backup and restore timed against each kind of repository snapcrypt speaks: a local
# directory, and each object store through its local emulator on loopback, started the way the
# tests start them (tests/support/{s3,gcs,azurite}.rs): s3s-fs (S3, checks SigV4),
# fake-gcs-server behind tests/services/gcs/xml-bridge.py (Google Cloud Storage; the bridge
# turns object_store's XML writes into the JSON uploads fake-gcs-server has), Azurite (Azure
# Blob Storage, checks Shared Key). One generated dbPath (bench/gen_dbpath.py), one full backup
# into a new repository and one restore into a new directory per store, each restore compared
# with the source (diff -r). Reported, not asserted: these are emulators on this machine's
# disk, not the clouds, so the numbers say what snapcrypt's side costs per store, not what a
# bucket in a region would give.
# Against local and S3, restic (Debian's) backs up the same dbPath into the same kind of
# store in the same run (an S3 repository through the same s3s-fs), and the table gives
# snapcrypt's time over restic's (#33: backup to S3 on loopback, goal <= 0.3).
# Servers come from $HOME/.cache/snapcrypt/services.env (written by .ci/install-deps.sh); every
# server started here is stopped on exit, and the scratch directory removed.
# Usage: bench/stores.sh [SIZE_MIB (default 256)] [STORE... (local s3 gcs azure; default all)]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE=256
if [[ ${1:-} =~ ^[0-9]+$ ]]; then SIZE=$1; shift; fi
STORES=("$@")
[ ${#STORES[@]} -eq 0 ] && STORES=(local s3 gcs azure)
for s in "${STORES[@]}"; do
  case $s in local|s3|gcs|azure) ;; *) echo "bench/stores.sh: unknown store $s (local s3 gcs azure)" >&2; exit 2 ;; esac
done

# The servers' paths from services.env; a path already in the environment wins.
SERVICES_ENV=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}/services.env
if [ -f "$SERVICES_ENV" ]; then
  declare -A KEEP=()
  for v in S3S_FS FAKE_GCS_BIN AZURITE_BIN SNAPCRYPT_PYTHON; do
    if [ -n "${!v:-}" ]; then KEEP[$v]=${!v}; fi
  done
  # shellcheck disable=SC1090
  . "$SERVICES_ENV"
  for v in "${!KEEP[@]}"; do export "$v=${KEEP[$v]}"; done
fi
PY=${SNAPCRYPT_PYTHON:-python3}
[ -x "$PY" ] || PY=python3

SC=$ROOT/target/release/snapcrypt
[ -x "$SC" ] || SC=$ROOT/target/debug/snapcrypt
[ -x "$SC" ] || { echo "bench/stores.sh: no snapcrypt binary: cargo build --release" >&2; exit 1; }
BUILD=$(basename "$(dirname "$SC")")

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/snapcrypt-stores.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A copy: a rebuild during the run does not change the binary under measure.
cp "$SC" "$WORK/snapcrypt"
SC_RUN=$WORK/snapcrypt

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port NAME PID PORT LOG: until PORT accepts TCP (30 s), or fail if PID exits.
wait_port() {
  local i
  for i in $(seq 300); do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "bench/stores.sh: $1 exited at start (run .ci/install-deps.sh?):"; tail -20 "$4"; exit 1
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && return
    sleep 0.1
  done
  echo "bench/stores.sh: $1 did not listen on $3 within 30 s:"; tail -20 "$4"; exit 1
}

# Each start_* sets REPO and STORE_ENV (VAR=value words for env(1)) for its store.
start_local() { REPO=$WORK/local/repo; RESTIC_REPO=$WORK/local/restic; RESTIC_OPTS=(); STORE_ENV=(); }

S3_ACCESS_KEY=snapcrypt-bench S3_SECRET_KEY=snapcrypt-bench-secret
start_s3() {
  local state=$WORK/s3 port
  port=$(free_port)
  mkdir -p "$state/root/backups"
  bash tests/services/s3/start-s3s-fs.sh "$state" "$port" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" \
    > /dev/null 2> "$state.log" &
  PIDS+=($!)
  wait_port s3s-fs $! "$port" "$state.log"
  REPO=s3://backups/bench
  RESTIC_REPO=s3:http://127.0.0.1:$port/backups/restic
  RESTIC_OPTS=(-o s3.bucket-lookup=path)
  STORE_ENV=(AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY"
             AWS_REGION=us-east-1 AWS_ENDPOINT_URL="http://127.0.0.1:$port")
}

start_gcs() {
  local state=$WORK/gcs port bridge
  [ -f tests/services/gcs/xml-bridge.py ] || {
    echo "bench/stores.sh: tests/services/gcs/xml-bridge.py is missing: fake-gcs-server alone cannot take object_store's writes" >&2
    exit 1; }
  port=$(free_port)
  bridge=$(free_port)
  while [ "$bridge" = "$port" ]; do bridge=$(free_port); done
  mkdir -p "$state"
  bash tests/services/gcs/start-fake-gcs.sh "$state" "$port" > /dev/null 2> "$state.log" &
  PIDS+=($!)
  wait_port fake-gcs-server $! "$port" "$state.log"
  "$PY" tests/services/gcs/xml-bridge.py "$bridge" "$port" "$state/xml-bridge-uploads" \
    > /dev/null 2> "$state-bridge.log" &
  PIDS+=($!)
  wait_port xml-bridge.py $! "$bridge" "$state-bridge.log"
  # The bucket, with the JSON API (as tests/support/gcs.rs does).
  "$PY" - "$port" <<'PY'
import json, sys, urllib.error, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/storage/v1/b", method="POST",
                             data=json.dumps({"name": "backups"}).encode(),
                             headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=30).read()
except urllib.error.HTTPError as e:
    if e.code != 409:
        sys.exit(f"creating bucket backups in fake-gcs-server: {e.code} {e.read()!r}")
PY
  # A service-account file with disable_oauth: object_store sends an empty bearer token (no
  # OAuth) and takes the base URL from it.
  cat > "$state/service-account.json" <<JSON
{"type": "service_account", "client_email": "snapcrypt-bench@fake-gcs.invalid",
 "private_key_id": "snapcrypt-bench", "private_key": "not-a-key", "disable_oauth": true,
 "gcs_base_url": "http://127.0.0.1:$bridge"}
JSON
  REPO=gs://backups/bench
  RESTIC_REPO=""
  STORE_ENV=(GOOGLE_SERVICE_ACCOUNT="$state/service-account.json"
             GOOGLE_BASE_URL="http://127.0.0.1:$bridge")
}

AZURE_ACCOUNT=devstoreaccount1
AZURE_KEY=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
start_azure() {
  local state=$WORK/azure port
  port=$(free_port)
  mkdir -p "$state"
  bash tests/services/azure/start-azurite.sh "$state" "$port" > /dev/null 2> "$state.log" &
  PIDS+=($!)
  wait_port azurite $! "$port" "$state.log"
  "$PY" tests/services/azure/create-container.py "http://127.0.0.1:$port" backups
  # As for any account: its name, its key and its blob endpoint (tests/support/azurite.rs).
  REPO=az://backups/bench
  RESTIC_REPO=""
  STORE_ENV=(AZURE_STORAGE_ACCOUNT_NAME="$AZURE_ACCOUNT" AZURE_STORAGE_ACCOUNT_KEY="$AZURE_KEY"
             AZURE_STORAGE_ENDPOINT="http://127.0.0.1:$port/$AZURE_ACCOUNT")
}

# timed NAME CMD...: wall seconds into T[NAME]
declare -A T
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e" -o "$WORK/time" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" || {
    echo "bench/stores.sh: $name failed:"; tail -20 "$WORK/$name.err"; exit 1; }
  T[$name]=$(cat "$WORK/time")
  echo "bench: $name ${T[$name]} s"
}
rate() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else print "-" }'; }

SRC=$WORK/src
echo "bench: generating a ${SIZE} MiB dbPath"
python3 bench/gen_dbpath.py make "$SRC" "$SIZE"
BYTES=$(du -sb "$SRC" | cut -f1)
"$SC_RUN" key new --out "$WORK/key.json" > /dev/null 2> "$WORK/key.err" ||
  { cat "$WORK/key.err"; exit 1; }

for store in "${STORES[@]}"; do
  "start_$store"
  run=(env -u SNAPCRYPT_REPO "${STORE_ENV[@]}" "$SC_RUN")
  sync
  timed "${store}_backup" "${run[@]}" backup --source "$SRC" --repo "$REPO" --key-file "$WORK/key.json"
  sync
  timed "${store}_restore" "${run[@]}" restore --repo "$REPO" --snapshot latest \
    --target "$WORK/out-$store" --key-file "$WORK/key.json"
  diff -r "$SRC" "$WORK/out-$store" > "$WORK/diff" ||
    { echo "bench/stores.sh: the restore from $store differs from the source:"; head "$WORK/diff"; exit 1; }
  rm -rf "$WORK/out-$store"
  if [ -n "$RESTIC_REPO" ] && command -v restic > /dev/null; then
    restic_run=(env "${STORE_ENV[@]}" RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$RESTIC_REPO"
                RESTIC_CACHE_DIR="$WORK/restic-cache-$store" restic "${RESTIC_OPTS[@]}")
    "${restic_run[@]}" init > "$WORK/restic-init.out" 2>&1 ||
      { echo "bench/stores.sh: restic init on $store failed:"; tail "$WORK/restic-init.out"; exit 1; }
    sync
    timed "${store}_restic_backup" "${restic_run[@]}" backup "$SRC"
  fi
done

echo
echo "bench/stores.sh $SIZE ${STORES[*]} on $(date -u +%Y-%m-%d), $(nproc) cores, $BUILD binary;"
echo "a $(awk -v b="$BYTES" 'BEGIN { printf "%.1f", b / 1048576 }') MiB generated dbPath, one full backup into a new repository, one restore into a new directory."
echo "Reported, not asserted. The stores are local emulators on loopback (s3s-fs, fake-gcs-server"
echo "behind the XML bridge, Azurite) on this machine's disk, not the clouds."
echo
echo "| store | backup s | backup MiB/s | restore s | restore MiB/s | restic backup s | backup vs restic |"
echo "|---|---|---|---|---|---|---|"
for store in "${STORES[@]}"; do
  b=${T[${store}_backup]} r=${T[${store}_restore]} rb=${T[${store}_restic_backup]:-}
  ratio=-
  [ -n "$rb" ] && ratio=$(awk -v a="$b" -v c="$rb" 'BEGIN { printf "%.2f", a / c }')
  echo "| $store | $b | $(rate "$BYTES" "$b") | $r | $(rate "$BYTES" "$r") | ${rb:--} | $ratio |"
done
echo
echo "Every restore was compared with the source (diff -r): identical."
