#!/usr/bin/env bash
# Stop what tests/cluster/start.sh started (by its pid files only) and remove the state dir.
# Stops the real nodes first (node.sh stop: containers, kubelets, containerd, scheduler,
# provisioner, volumes, bridges and rules) while the API server still runs.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
log() { echo "[stop.sh] $*" >&2; }

stop_pid() { # NAME PID: SIGTERM, wait up to 10 s, then SIGKILL
  local name=$1 p=$2 i
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    kill -0 "$p" 2>/dev/null || { log "stopped $name (pid $p)"; return 0; }
    sleep 0.2
  done
  log "$name (pid $p) ignored SIGTERM for 10 s: SIGKILL"
  kill -KILL "$p" 2>/dev/null || true
}

if [ -d "$PIDS" ]; then
  # the real nodes first, then the cluster in reverse start order
  if [ -d "$CLUSTER_DIR/nodes" ] && [ "$(id -u)" = 0 ]; then "$HERE/node.sh" stop || true; fi
  for (( i=${#COMPONENTS[@]}-1; i>=0; i-- )); do
    c=${COMPONENTS[$i]}
    if p=$(pid_of "$c"); then stop_pid "$c" "$p"; fi
  done
fi
if [ -d "$CLUSTER_DIR" ]; then
  rm -rf "$CLUSTER_DIR"
  log "removed $CLUSTER_DIR"
else
  log "nothing to stop ($CLUSTER_DIR does not exist)"
fi
