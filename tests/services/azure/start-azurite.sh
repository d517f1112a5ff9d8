#!/usr/bin/env bash
# Start Azurite's blob service (the Azure Storage emulator, npm package azurite 3.35.0) on
# 127.0.0.1:PORT in the foreground (exec).
#
#   start-azurite.sh STATE_DIR PORT
#
# Data (LokiJS metadata + blob extents) lives in STATE_DIR/azurite (created if needed); a
# restart on the same STATE_DIR keeps containers and blobs. Account: devstoreaccount1 with
# the well-known emulator key; path-style URLs: http://127.0.0.1:PORT/devstoreaccount1/CONTAINER.
# Shared Key and SAS signatures are checked. No container exists at start:
# create-container.py makes one. Strict mode (no --loose): CRC64 and customer-provided
# encryption key headers are refused with 400 rather than ignored.
# --skipApiVersionCheck: any x-ms-version is accepted. Access log off (--silent), no
# telemetry. Ready when the port accepts TCP (about 1 s). Stop with SIGTERM/SIGKILL.
#
# Env: AZURITE_BIN (path of azurite-blob; default: $SNAPCRYPT_CACHE/npm/node_modules/.bin/azurite-blob)
set -euo pipefail

STATE_DIR=${1:?usage: start-azurite.sh STATE_DIR PORT}
PORT=${2:?usage: start-azurite.sh STATE_DIR PORT}

CACHE=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}
BIN=${AZURITE_BIN:-$CACHE/npm/node_modules/.bin/azurite-blob}
if ! [[ -x $BIN ]]; then
    echo "start-azurite.sh: azurite-blob not found ($BIN); run .ci/install-deps.sh first" >&2
    exit 1
fi

mkdir -p "$STATE_DIR/azurite"
# AZURITE_ACCOUNTS would replace the default account; AZURITE_DB would switch to MySQL.
unset AZURITE_ACCOUNTS AZURITE_DB
exec "$BIN" --blobHost 127.0.0.1 --blobPort "$PORT" \
    --location "$STATE_DIR/azurite" \
    --skipApiVersionCheck --disableTelemetry --silent
