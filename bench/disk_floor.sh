#!/usr/bin/env bash
# The disk's floor for a restore: read every file of REPO while writing SIZE_MIB of zeros to
# OUT.1..OUT.4 in four O_DIRECT streams of 512 KiB writes, all at once, then sync. A restore
# must read its repository and write the restored bytes; this does both with no CPU work in
# between, so no restorer from REPO to this disk can be faster (run it from an empty page
# cache, as the restores are).
#   bench/disk_floor.sh REPO SIZE_MIB OUT
set -euo pipefail
REPO=$1 SIZE=$2 OUT=$3
find "$REPO" -type f -print0 | xargs -0 -P4 -n8 cat > /dev/null &
reading=$!
per=$(( SIZE * 2 / 4 )) # 512 KiB writes per stream
pids=()
for i in 1 2 3 4; do
  dd if=/dev/zero of="$OUT.$i" bs=512K count="$per" oflag=direct status=none &
  pids+=($!)
done
wait "$reading" "${pids[@]}"
sync
