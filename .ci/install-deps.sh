#!/usr/bin/env bash
# Install what the snapcrypt tests need on this machine. Idempotent; takes about
# a second when everything is already there.
#
#   apt   : restic, openssl, curl, python3-venv (apt-get update only if something is missing)
#   python: a venv at ${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}/venv with
#           tests/services/requirements.txt (+ constraints.txt): PyKMIP 0.11.0, moto[server], boto3
#   cargo : s3s-fs 0.14.1 (cargo install --features binary --locked), ~2-6 min when missing
#
# Writes $SNAPCRYPT_CACHE/services.env (sourceable) with the paths found, and prints them.
# Env: SNAPCRYPT_CACHE, SNAPCRYPT_BASE_PYTHON (python used to create the venv),
#      SNAPCRYPT_SKIP_S3S_FS=1 (don't build s3s-fs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}
VENV=$CACHE/venv
REQ=$ROOT/tests/services/requirements.txt
CONS=$ROOT/tests/services/constraints.txt
S3S_FS_VERSION=0.14.1
export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$CACHE"

log() { echo "install-deps: $*"; }
SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi

# ---------------------------------------------------------------- cargo (background)
S3S_FS_BIN=""
cargo_pid=""
cargo_log=$CACHE/s3s-fs-install.log
if [[ ${SNAPCRYPT_SKIP_S3S_FS:-0} != 1 ]]; then
    if S3S_FS_BIN=$(command -v s3s-fs) && [[ $("$S3S_FS_BIN" --version 2>/dev/null) == "s3s-fs $S3S_FS_VERSION" ]]; then
        :
    else
        S3S_FS_BIN=""
        log "building s3s-fs $S3S_FS_VERSION in the background (log: $cargo_log)"
        # Unset CARGO_TARGET_DIR: cargo install then builds in its own temporary
        # dir, never locking the project's target dir.
        env -u CARGO_TARGET_DIR nice -n 10 cargo install "s3s-fs@$S3S_FS_VERSION" \
            --features binary --locked >"$cargo_log" 2>&1 &
        cargo_pid=$!
        trap '[[ -n $cargo_pid ]] && kill "$cargo_pid" 2>/dev/null || true' EXIT
    fi
fi

# ---------------------------------------------------------------- apt
pick_python() {
    if [[ -n ${SNAPCRYPT_BASE_PYTHON:-} ]]; then echo "$SNAPCRYPT_BASE_PYTHON"; return; fi
    local p
    for p in python3.11 python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
            echo "$p"; return
        fi
    done
    echo python3
}
BASE_PY=$(pick_python)

need_apt=()
command -v restic >/dev/null 2>&1 || need_apt+=(restic)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [[ ! -x $VENV/bin/python ]] && ! "$BASE_PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need_apt+=(python3-venv)
fi
if ((${#need_apt[@]})); then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    nice -n 10 "${SUDO[@]}" apt-get update -qq
    nice -n 10 "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# ---------------------------------------------------------------- python venv
stamp=$VENV/.snapcrypt-requirements
want=$(cat "$REQ" "$CONS" | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]] \
    && "$VENV/bin/python" -W ignore -c 'import kmip.services.server, moto, boto3' >/dev/null 2>&1; then
    :
else
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating venv $VENV with $BASE_PY ($("$BASE_PY" --version 2>&1))"
        "$BASE_PY" -m venv "$VENV"
    fi
    log "pip install -r $REQ (-c constraints.txt)"
    nice -n 10 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$REQ" -c "$CONS"
    "$VENV/bin/python" -W ignore -c 'import kmip.services.server, moto, boto3'
    echo "$want" > "$stamp"
fi

# ---------------------------------------------------------------- wait for cargo
if [[ -n $cargo_pid ]]; then
    rc=0; wait "$cargo_pid" || rc=$?
    cargo_pid=""
    if ((rc)); then
        tail -30 "$cargo_log" >&2
        log "cargo install s3s-fs failed (log: $cargo_log)" >&2
        exit 1
    fi
    S3S_FS_BIN=$(command -v s3s-fs)
    "$S3S_FS_BIN" --version >/dev/null
fi

# ---------------------------------------------------------------- report
cat > "$CACHE/services.env" <<EOF
# written by .ci/install-deps.sh
export SNAPCRYPT_CACHE="$CACHE"
export SNAPCRYPT_PYTHON="$VENV/bin/python"
export MOTO_SERVER="$VENV/bin/moto_server"
export S3S_FS="${S3S_FS_BIN}"
export RESTIC="$(command -v restic)"
EOF
log "python  : $VENV/bin/python ($("$VENV/bin/python" --version 2>&1); PyKMIP $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("pykmip"))'))"
log "moto    : $VENV/bin/moto_server ($("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))'))"
log "s3s-fs  : ${S3S_FS_BIN:-skipped} ${S3S_FS_BIN:+($("$S3S_FS_BIN" --version))}"
log "restic  : $(command -v restic) ($(restic version 2>/dev/null | cut -d' ' -f2))"
log "openssl : $(command -v openssl) ($(openssl version))"
log "env     : source $CACHE/services.env"
