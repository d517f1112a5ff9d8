#!/usr/bin/env bash
# Build the restore tests' check container image, snapcrypt.test/wt-check:dev: wt-check
# (check.c, linked statically against Debian's libwiredtiger.a) alone in a one-layer
# docker-archive (tests/cluster/mkimage.py: no registry, no base image), entrypoint
# /usr/local/bin/wt-check, user 999:999. Loads it into every running real node
# (tests/cluster/node.sh load; nothing to load into when no node runs) and prints the image
# name as the last line of stdout.
#
#   check-image.sh
#
# Idempotent: the binary is rebuilt only when check.c (or this script) is newer, the archive
# only when the binary (or mkimage.py, or this script) is. Packages come from build.sh (which
# installs them if missing, and builds wt-writer). Progress on stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER=$(cd "$HERE/../../cluster" && pwd)
# shellcheck source=../../cluster/common.sh
. "$CLUSTER/common.sh"  # SNAPCRYPT_CACHE, CLUSTER_DIR
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
SRC=$HERE/check.c
BIN=$SNAPCRYPT_CACHE/bin/wt-check
TAR=$SNAPCRYPT_CACHE/images/wt-check.tar
NAME=snapcrypt.test/wt-check:dev

log() { echo "[wiredtiger/check-image.sh] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wiredtiger, libwiredtiger-dev, gcc, libc6-dev (apt-get only when missing).
"$HERE/build.sh" >/dev/null

mkdir -p "$(dirname "$BIN")" "$(dirname "$TAR")"
# One build at a time (two tests starting together): the loser waits, then finds it done.
exec 9>"$SNAPCRYPT_CACHE/images/wt-check.lock"
flock 9

if [[ ! -x $BIN || $SRC -nt $BIN || $SELF -nt $BIN ]]; then
    libwt=$(gcc -print-file-name=libwiredtiger.a)
    [[ $libwt == /* && -f $libwt ]] || die "no libwiredtiger.a (libwiredtiger-dev) for gcc"
    log "gcc -static $SRC -> $BIN"
    tmp=$(mktemp "$BIN.XXXXXX")
    out=$(mktemp)
    # Static: the image then needs nothing but the binary. glibc warns that dlopen in a
    # static program needs its own shared libraries at run time: WiredTiger dlopens only
    # extensions, and wt-check loads none.
    if ! gcc -std=c11 -O2 -g -Wall -Wextra -Wshadow -Wformat=2 -static -pthread \
        -o "$tmp" "$SRC" "$libwt" -ldl -lrt -lm >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$tmp" "$out"
        die "compiling check.c failed"
    fi
    grep -v -e "Using 'dlopen' in statically linked" -e "in function \`__wt_dlopen'" "$out" >&2 || true
    rm -f "$out"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$BIN"
fi

if [[ ! -s $TAR || $BIN -nt $TAR || $CLUSTER/mkimage.py -nt $TAR || $SELF -nt $TAR ]]; then
    log "mkimage.py $NAME -> $TAR"
    # /restored: where the restore test mounts the restored volume (SNAPCRYPT_RESTORED_PATH
    # names another place); /tmp: a mount point for an emptyDir, as for the snapcrypt image.
    python3 "$CLUSTER/mkimage.py" "$TAR" "$NAME" --file "$BIN=/usr/local/bin/wt-check" \
        --dir /tmp --dir /restored --entrypoint /usr/local/bin/wt-check --user 999:999
fi

# Every node node.sh started (a containerd socket): none when the test ground is down.
nodes=0
for sock in "$CLUSTER_DIR"/nodes/*/containerd.sock; do
    [[ -S $sock ]] && nodes=$((nodes + 1))
done
if ((nodes > 0)); then
    log "loading $NAME into $nodes node(s)"
    "$CLUSTER/node.sh" load "$TAR"
else
    log "no running node under $CLUSTER_DIR/nodes: $NAME not loaded"
fi
echo "$NAME"
