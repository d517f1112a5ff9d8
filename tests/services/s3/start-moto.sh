#!/usr/bin/env bash
# Start moto's S3 mock (moto_server) on 127.0.0.1:PORT in the foreground (exec).
#
#   start-moto.sh PORT
#
# In-memory only (everything is lost when it stops). Accepts any credentials and
# does not check signatures. Path-style: endpoint http://127.0.0.1:PORT.
# Ready when GET http://127.0.0.1:PORT/ answers (about 1-2 s). Stop with SIGTERM/SIGKILL.
#
# Env:
#   SNAPCRYPT_CACHE   default ~/.cache/snapcrypt; the venv is $SNAPCRYPT_CACHE/venv
#   MOTO_SERVER       path of moto_server (default: the venv's)
set -euo pipefail

PORT=${1:?usage: start-moto.sh PORT}
CACHE=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}
BIN=${MOTO_SERVER:-$CACHE/venv/bin/moto_server}
if ! [[ -x $BIN ]]; then
    echo "start-moto.sh: moto_server not found at $BIN; run .ci/install-deps.sh first" >&2
    exit 1
fi
exec "$BIN" -H 127.0.0.1 -p "$PORT"
