#!/usr/bin/env bash
# Start a PyKMIP 0.11 KMIP server on 127.0.0.1:PORT in the foreground (exec).
#
#   start-pykmip.sh STATE_DIR PORT
#
# STATE_DIR is created if needed. It receives the test PKI (gen-certs.sh: ca.pem,
# server.pem/.key, client.pem/.key, client2.*, client-noeku.*, other-ca.*, other-client.*),
# server.conf, policies/, pykmip.db (SQLite) and server.log.
# Certificates are generated once per STATE_DIR (kept if present, so a restart
# on the same STATE_DIR keeps both certs and keys/objects).
#
# The server speaks TLS 1.2 only, requires a client certificate signed by
# STATE_DIR/ca.pem that carries the clientAuth EKU, and offers only
# ECDHE-ECDSA-AES128-GCM-SHA256 / ECDHE-ECDSA-AES256-GCM-SHA384 (rustls-compatible).
# Prints "PYKMIP READY 127.0.0.1:PORT" on stdout when listening (< 2 s).
# Stop it with SIGTERM (exits at once) or SIGKILL (helpers die with it).
#
# Env:
#   SNAPCRYPT_CACHE      default ~/.cache/snapcrypt; the venv is $SNAPCRYPT_CACHE/venv
#   SNAPCRYPT_PYTHON     python with PyKMIP installed (default: the venv's python)
#   PYKMIP_LOG_LEVEL     DEBUG (default: logs hex of every request/response) or INFO ...
set -euo pipefail

STATE_DIR=${1:?usage: start-pykmip.sh STATE_DIR PORT}
PORT=${2:?usage: start-pykmip.sh STATE_DIR PORT}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}
PY=${SNAPCRYPT_PYTHON:-$CACHE/venv/bin/python}
LOG_LEVEL=${PYKMIP_LOG_LEVEL:-DEBUG}

if ! [[ -x $PY ]]; then
    echo "start-pykmip.sh: no python at $PY; run .ci/install-deps.sh first" >&2
    exit 1
fi

mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
"$HERE/gen-certs.sh" "$STATE_DIR"
mkdir -p "$STATE_DIR/policies"

cat > "$STATE_DIR/server.conf" <<EOF
[server]
hostname=127.0.0.1
port=$PORT
certificate_path=$STATE_DIR/server.pem
key_path=$STATE_DIR/server.key
ca_path=$STATE_DIR/ca.pem
auth_suite=TLS1.2
policy_path=$STATE_DIR/policies
enable_tls_client_auth=True
tls_cipher_suites=
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
logging_level=$LOG_LEVEL
database_path=$STATE_DIR/pykmip.db
EOF

exec "$PY" -u "$HERE/pykmip_server.py" "$STATE_DIR/server.conf" "$STATE_DIR/server.log"
