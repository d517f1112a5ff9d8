#!/usr/bin/env bash
# Build the snapcrypt test image with no registry and no base image, and load it into every
# real node's runtime (node.sh). Same entrypoint, user and binary as the Dockerfile's final
# stage; instead of debian:bookworm-slim, the layer holds only the C libraries the binary links
# (ldd), the dynamic loader and the CA bundle (the Dockerfile's ca-certificates).
#
#   image.sh [BINARY] [NAME:TAG]   default: target/debug/snapcrypt, snapcrypt.test/snapcrypt:dev
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
BINARY=${1:-$HERE/../../target/debug/snapcrypt}
NAME=${2:-snapcrypt.test/snapcrypt:dev}
[ -x "$BINARY" ] || { echo "[image.sh] no binary $BINARY (cargo build first)" >&2; exit 1; }
OUT=$CLUSTER_DIR/nodes/snapcrypt-image.tar
mkdir -p "$(dirname "$OUT")"
files=(--file "$BINARY=/usr/local/bin/snapcrypt")
while read -r lib; do
  [ -n "$lib" ] && files+=(--file "$lib=$lib")
done < <(ldd "$BINARY" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
# The Dockerfile's base installs ca-certificates: the S3 client refuses to build without roots.
CA=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA" ] && files+=(--file "$CA=$CA")
python3 "$HERE/mkimage.py" "$OUT" "$NAME" "${files[@]}" --dir /tmp \
  --entrypoint /usr/local/bin/snapcrypt --user 65532:65532
"$HERE/node.sh" load "$OUT"
echo "$NAME"
