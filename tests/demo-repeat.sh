#!/usr/bin/env bash
# Run by hand (as root), not by ./tests/run: examples/operator-demo.sh then
# `operator-demo.sh stop`, N times in a row on this machine (default 10), and after each stop
# check that nothing of the demo is left: no process, no mount, no network namespace, veth or
# bridge, no iptables rule, no cluster directory. Stops at the first failure (the demo keeps its
# logs and prints where); prints one line per run and a summary.
#
#   tests/demo-repeat.sh [N]
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
CLUSTER_DIR=${SNAPCRYPT_CLUSTER_DIR:-/tmp/snapcrypt-cluster}
[ "$(id -u)" = 0 ] || { echo "run as root (the demo starts containerd and kubelets)" >&2; exit 1; }

leftovers() { # what a stopped demo must not leave, one line each; nothing when clean
  pgrep -a -f 'kube-apiserver|kube-controller-manager|kube-scheduler|kubelet --|etcd --|snapcrypt-containerd|containerd-shim-runc-v2 -namespace k8s.io|provisioner.py' \
    | grep -v -e pgrep -e demo-repeat | sed 's/^/process: /'
  awk '$2 ~ "^/var/lib/snapcrypt-kubelet|^/run/snapcrypt-containerd|^/var/lib/snapcrypt-volumes" {print "mount: " $2}' /proc/mounts
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    echo "network namespace: $ns"
  done
  ip -o link show type veth 2>/dev/null | awk -F': ' '{print "veth: " $2}'
  ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^snapcrypt[0-9]+/ {print "bridge: " $2}'
  iptables -t nat -S 2>/dev/null | grep -E 'snapcrypt-test|snapcrypt-' | sed 's/^/iptables: /'
  ip -o addr show dev lo 2>/dev/null | awk '$4 ~ /^10\.242\.0\./ {print "address: " $4}'
  [ -e "$CLUSTER_DIR" ] && echo "directory: $CLUSTER_DIR"
  [ -e /var/tmp/snapcrypt-demo ] && echo "directory: /var/tmp/snapcrypt-demo"
  return 0
}

before=$(leftovers)
[ -z "$before" ] || { echo "not clean before the first run (stop what runs first):" >&2; echo "$before" >&2; exit 1; }
ok=0
for i in $(seq 1 "$N"); do
  start=$(date +%s)
  if ./examples/operator-demo.sh >"/tmp/demo-repeat-$i.log" 2>&1; then demo=ok; else demo=FAILED; fi
  up=$(( $(date +%s) - start ))
  ./examples/operator-demo.sh stop >>"/tmp/demo-repeat-$i.log" 2>&1
  left=$(leftovers)
  echo "run $i: demo $demo in ${up}s; after stop: $( [ -z "$left" ] && echo "nothing left" || echo "$(echo "$left" | wc -l) things left")"
  if [ "$demo" != ok ] || [ -n "$left" ]; then
    [ -n "$left" ] && echo "$left" | sed 's/^/   /'
    echo "   its output: /tmp/demo-repeat-$i.log (last lines below)"
    tail -25 "/tmp/demo-repeat-$i.log" | sed 's/^/   /'
    echo "$ok of $N runs succeeded before run $i failed"
    exit 1
  fi
  ok=$((ok + 1))
  rm -f "/tmp/demo-repeat-$i.log"
done
echo "$ok of $N runs succeeded, and each stop left nothing"
