#!/usr/bin/env bash
# Build the WiredTiger double: install Debian's WiredTiger (library, headers, the `wt`
# utility that judge.sh uses) and a C compiler if missing, compile writer.c into
# ${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}/bin/wt-writer when writer.c (or this script) is
# newer than the binary, and print the binary's path as the last line of stdout.
#
# Idempotent and quick when there is nothing to do; tests call it before each use.
# Progress goes to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SNAPCRYPT_CACHE:-${HOME:-/root}/.cache/snapcrypt}
BIN=$CACHE/bin/wt-writer
SRC=$HERE/writer.c
PACKAGES=(wiredtiger libwiredtiger-dev gcc libc6-dev)

log() { echo "[wiredtiger/build.sh] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi

apt_install() { # PACKAGE... ; output in $WORK_LOG
    # Wait for the dpkg lock rather than fail: another engineer's install may hold it.
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 \
        install -y -q --no-install-recommends "$@" >"$WORK_LOG" 2>&1
}

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    WORK_LOG=$(mktemp)
    trap 'rm -f "$WORK_LOG"' EXIT
    log "apt-get install ${missing[*]}"
    if ! apt_install "${missing[@]}"; then
        # Fresh machines and slim images ship without package lists; anything else is a
        # real failure that an update would not fix.
        if grep -qE 'Unable to locate package|has no installation candidate|404 +Not Found' "$WORK_LOG"; then
            log "no usable package lists: apt-get update, then install again"
            DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 \
                update -q >&2
            apt_install "${missing[@]}" || { cat "$WORK_LOG" >&2; die "apt-get install ${missing[*]} failed"; }
        else
            cat "$WORK_LOG" >&2
            die "apt-get install ${missing[*]} failed"
        fi
    fi
fi
command -v wt >/dev/null 2>&1 || die "the wiredtiger package is installed but wt is not on PATH"

if [[ ! -x $BIN || $SRC -nt $BIN || ${BASH_SOURCE[0]} -nt $BIN ]]; then
    log "gcc $SRC -> $BIN"
    mkdir -p "$(dirname "$BIN")"
    # Compile beside the target and rename: a test running the old binary, or a second
    # build.sh at the same time, never sees a half-written file.
    tmp=$(mktemp "$BIN.XXXXXX")
    if ! gcc -std=c11 -O2 -g -Wall -Wextra -Wshadow -Wformat=2 -pthread \
        -o "$tmp" "$SRC" -lwiredtiger; then
        rm -f "$tmp"
        die "compiling writer.c failed"
    fi
    chmod 0755 "$tmp"
    mv -f "$tmp" "$BIN"
fi
echo "$BIN"
