#!/usr/bin/env bash
# Report on the snapcrypt e2e test cluster. Exit 0 if every component is running and healthy.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

if [ ! -d "$CLUSTER_DIR" ]; then
  echo "not running (no $CLUSTER_DIR)"
  exit 1
fi
ok=0
for c in "${COMPONENTS[@]}"; do
  if p=$(pid_of "$c"); then
    rss=$(awk '/VmRSS/{printf "%d MiB", $2/1024}' "/proc/$p/status" 2>/dev/null)
    case $c in
      etcd) etcd_healthy && h=healthy || { h=UNHEALTHY; ok=1; } ;;
      kube-apiserver) apiserver_ready && h=ready || { h=NOT-READY; ok=1; } ;;
      kube-controller-manager) kcm_healthy && h=healthy || { h=UNHEALTHY; ok=1; } ;;
    esac
    printf '%-24s pid %-7s rss %-9s %s\n' "$c" "$p" "$rss" "$h"
  else
    printf '%-24s NOT RUNNING (log: %s)\n' "$c" "$LOGS/$c.log"
    ok=1
  fi
done
for f in "$PIDS"/kube-scheduler.pid "$PIDS"/provisioner.pid "$PIDS"/kubelet-*.pid "$PIDS"/containerd-*.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    rss=$(awk '/VmRSS/{printf "%d MiB", $2/1024}' "/proc/$p/status" 2>/dev/null)
    printf '%-24s pid %-7s rss %-9s running (node.sh)\n' "$(basename "$f" .pid)" "$p" "$rss"
  fi
done
echo "apiserver: $APISERVER_URL"
[ $ok = 0 ] && echo "version:   $(curl_admin /version 2>/dev/null | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p')"
echo "kubeconfig: $ADMIN_KUBECONFIG"
exit $ok
