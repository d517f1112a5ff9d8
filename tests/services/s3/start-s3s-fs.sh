#!/usr/bin/env bash
# Start s3s-fs (an S3 server over a local directory) on 127.0.0.1:PORT in the
# foreground (exec).
#
#   start-s3s-fs.sh STATE_DIR PORT ACCESS_KEY SECRET_KEY
#
# Serves STATE_DIR/root (created if needed): each top-level folder there is a bucket.
# SigV4 signatures are checked against ACCESS_KEY/SECRET_KEY (region: any, e.g. us-east-1).
# Path-style addressing only: endpoint http://127.0.0.1:PORT. Plain HTTP, no TLS.
# Logs (tracing, incl. each request) go to stderr; RUST_LOG overrides the level.
# Ready when the port accepts TCP (well under 1 s). Stop with SIGTERM/SIGKILL.
#
# Env: S3S_FS (path of the binary; default: s3s-fs on PATH, else ~/.cargo/bin/s3s-fs)
set -euo pipefail

STATE_DIR=${1:?usage: start-s3s-fs.sh STATE_DIR PORT ACCESS_KEY SECRET_KEY}
PORT=${2:?usage: start-s3s-fs.sh STATE_DIR PORT ACCESS_KEY SECRET_KEY}
ACCESS_KEY=${3:?usage: start-s3s-fs.sh STATE_DIR PORT ACCESS_KEY SECRET_KEY}
SECRET_KEY=${4:?usage: start-s3s-fs.sh STATE_DIR PORT ACCESS_KEY SECRET_KEY}

BIN=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
if ! [[ -x $BIN ]]; then
    echo "start-s3s-fs.sh: s3s-fs not found ($BIN); run .ci/install-deps.sh first" >&2
    exit 1
fi

mkdir -p "$STATE_DIR/root"
exec "$BIN" --host 127.0.0.1 --port "$PORT" \
    --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" \
    "$STATE_DIR/root"
