#!/usr/bin/env bash
# Start each test service on a free loopback port, prove it with its selfcheck,
# stop it. Needs .ci/install-deps.sh to have run.
#
#   tests/services/selfcheck.sh [kmip] [s3s-fs] [moto]     (default: all three)
#   KMIP_CAPTURE_DIR=DIR tests/services/selfcheck.sh kmip  (also write KMIP byte captures)
#
# Prints one "ok"/"FAIL" line per check and ends with
# "services selfcheck: N passed, N failed". Exit 0 iff nothing failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}
PY=${SNAPCRYPT_PYTHON:-$CACHE/venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/snapcrypt-services.XXXXXX")
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_tcp PORT PID SECONDS: until 127.0.0.1:PORT accepts TCP (or the server died)
wait_tcp() {
    local port=$1 pid=$2 deadline=$((SECONDS + $3))
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then echo "server pid $pid died" >&2; return 1; fi
        if ((SECONDS >= deadline)); then echo "port $port not up after $3 s" >&2; return 1; fi
        sleep 0.05
    done
}

passed=0
failed=0
count() { # count LOGFILE: add up the selfcheck's own summary line
    local line
    line=$(grep -E "^[a-z0-9 ()-]*selfcheck.*: [0-9]+ passed, [0-9]+ failed" "$1" | tail -1 || true)
    if [[ -z $line ]]; then
        failed=$((failed + 1))
        return
    fi
    passed=$((passed + $(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$line")))
    failed=$((failed + $(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")))
}

services=("$@")
((${#services[@]})) || services=(kmip s3s-fs moto)

for svc in "${services[@]}"; do
    port=$(free_port)
    t0=$(date +%s.%N)
    case $svc in
    kmip)
        "$HERE/kmip/start-pykmip.sh" "$WORK/kmip" "$port" >"$WORK/kmip.out" 2>"$WORK/kmip.err" &
        pid=$!
        ;;
    s3s-fs)
        "$HERE/s3/start-s3s-fs.sh" "$WORK/s3s-fs" "$port" SNAPCRYPTTESTKEY snapcrypt-test-secret \
            >"$WORK/s3s-fs.out" 2>&1 &
        pid=$!
        ;;
    moto)
        "$HERE/s3/start-moto.sh" "$port" >"$WORK/moto.out" 2>&1 &
        pid=$!
        ;;
    *)
        echo "unknown service $svc" >&2
        exit 2
        ;;
    esac
    PIDS+=("$pid")
    if ! wait_tcp "$port" "$pid" 20; then
        echo "FAIL $svc did not start:"
        cat "$WORK/$svc".* >&2 || true
        failed=$((failed + 1))
        continue
    fi
    printf '== %s on 127.0.0.1:%s (listening after %.2f s)\n' "$svc" "$port" "$(echo "$(date +%s.%N) - $t0" | bc)"
    log=$WORK/$svc.check
    set +e
    case $svc in
    kmip)
        "$PY" "$HERE/kmip/selfcheck.py" "$WORK/kmip" "$port" ${KMIP_CAPTURE_DIR:+--capture-dir "$KMIP_CAPTURE_DIR"} 2>&1 | tee "$log"
        ;;
    s3s-fs)
        "$PY" "$HERE/s3/selfcheck.py" "http://127.0.0.1:$port" SNAPCRYPTTESTKEY snapcrypt-test-secret \
            --name s3s-fs 2>&1 | tee "$log"
        ;;
    moto)
        "$PY" "$HERE/s3/selfcheck.py" "http://127.0.0.1:$port" test test --name moto --no-auth-check 2>&1 | tee "$log"
        ;;
    esac
    set -e
    count "$log"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done

echo "services selfcheck: $passed passed, $failed failed"
((failed == 0))
