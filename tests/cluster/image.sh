#!/usr/bin/env bash
# Build the snapcrypt image with no registry and no base image, and load it into every real
# node's runtime (node.sh). The same image as the Dockerfile's final stage: the binary stripped
# (objcopy --strip-all, as the Dockerfile does), the C libraries it links (ldd) and the dynamic
# loader (the distroless cc base's glibc and libgcc_s), the CA bundle, user 65532, no shell,
# the same entrypoint and OCI labels. Prints the image's name and size.
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
STRIPPED=$(mktemp "$(dirname "$OUT")/snapcrypt.XXXXXX")
trap 'rm -f "$STRIPPED"' EXIT
objcopy --strip-all "$BINARY" "$STRIPPED"
chmod 0755 "$STRIPPED"
VERSION=$("$STRIPPED" --version | awk '{print $2}')
files=(--file "$STRIPPED=/usr/local/bin/snapcrypt")
while read -r lib; do
  [ -n "$lib" ] && files+=(--file "$lib=$lib")
done < <(ldd "$BINARY" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
# The distroless base has the CA bundle: the object-store clients refuse to build without roots.
CA=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA" ] && files+=(--file "$CA=$CA")
python3 "$HERE/mkimage.py" "$OUT" "$NAME" "${files[@]}" --dir /tmp \
  --entrypoint /usr/local/bin/snapcrypt --user 65532:65532 \
  --label org.opencontainers.image.title=snapcrypt \
  --label "org.opencontainers.image.description=Encrypted, deduplicated snapshots of MongoDB data volumes with master keys in KMIP" \
  --label org.opencontainers.image.source=https://github.com/snapcrypt/snapcrypt \
  --label "org.opencontainers.image.version=$VERSION" \
  --label org.opencontainers.image.licenses=Apache-2.0
"$HERE/node.sh" load "$OUT"
echo "$NAME $(( $(stat -c %s "$OUT") / 1000000 )) MB"
