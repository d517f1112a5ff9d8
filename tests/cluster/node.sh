#!/usr/bin/env bash
# Real nodes for the e2e test cluster: a kube-scheduler and, per node, its own containerd and a
# kubelet (built by build.sh from the same source as the apiserver), so pods run in real
# containers. Pods reach the API server through the `kubernetes` Service: the Service IP is
# DNAT'ed to the apiserver on loopback (route_localnet), which stays bound to 127.0.0.1 only.
#
#   node.sh start NAME [NAME...]   start the scheduler, the storage provisioner double
#                                  (provisioner.py) and one node per NAME (idempotent); the
#                                  nodes it starts register with SNAPCRYPT_REGISTER_TAINTS
#                                  (kubelet --register-with-taints) when that is set
#   node.sh stop                   stop them all, remove their containers, state and rules
#   node.sh load IMAGE.tar         import an image (docker-archive) into every node's runtime
#   node.sh expose PORT            pods reach 127.0.0.1:PORT (a test's S3 or KMIP server) at
#                                  $HOST_ALIAS:PORT; the server stays bound to loopback
#
# Each node N (index i from 0): containerd at $CLUSTER_DIR/nodes/NAME/containerd.sock, kubelet
# on 10.242.0.(i+1):(10250+i) (an address on lo; kubectl logs/exec reach it) with root dir /var/lib/snapcrypt-kubelet/NAME, pods on bridge
# snapcrypt$i with subnet 10.244.i.0/24. Needs the cluster (start.sh) and root.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

NODES_DIR=$CLUSTER_DIR/nodes
KUBELET_ROOT=/var/lib/snapcrypt-kubelet
CONTAINERD_ROOT=/var/lib/snapcrypt-containerd
PAUSE_IMAGE=snapcrypt.test/pause:3.2
SERVICE_IP=${SERVICE_CIDR%.*}.1
# The address at which pods reach the test servers that listen on this machine's loopback.
HOST_ALIAS=10.243.0.1
# Node i's address (on lo): 10.242.0.(i+1).
NODE_NET=10.242.0
SRC=${SNAPCRYPT_CACHE}/k8s/src/kubernetes-1.20.2
log() { echo "[node.sh $(date +%H:%M:%S)] $*" >&2; }
die() { echo "[node.sh] ERROR: $*" >&2; exit 1; }

launch() { # NAME CMD...: detached, logs to $LOGS/NAME.log, pid to $PIDS/NAME.pid
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}
alive() { local p; p=$(cat "$PIDS/$1.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }

ctr_of() { ctr --address "$NODES_DIR/$1/containerd.sock" -n k8s.io "${@:2}"; }

pause_image() {
  local tar=$NODES_DIR/pause.tar
  [ -s "$tar" ] && return 0
  [ -f "$SRC/build/pause/linux/pause.c" ] || die "no vendored pause.c: run tests/cluster/build.sh"
  gcc -Os -static -DVERSION=3.2 -o "$NODES_DIR/pause" "$SRC/build/pause/linux/pause.c"
  python3 "$HERE/mkimage.py" "$tar" "$PAUSE_IMAGE" --file "$NODES_DIR/pause=/pause" \
    --entrypoint /pause --user 65535:65535
}

client_identity() { # DIR SUBJECT: a client cert from the cluster CA and a kubeconfig using it
  local dir=$1 subj=$2
  mkdir -p "$dir"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/client.key" -out "$dir/client.csr" -subj "$subj" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' >"$dir/ext"
  openssl x509 -req -in "$dir/client.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -out "$dir/client.crt" -days 30 -sha256 -extfile "$dir/ext" 2>/dev/null
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "$APISERVER_URL", certificate-authority: "$PKI/ca.crt"}
users:
- name: u
  user: {client-certificate: "$dir/client.crt", client-key: "$dir/client.key"}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
EOF
}

start_node() { # NAME INDEX
  local name=$1 i=$2 dir=$NODES_DIR/$1
  if alive "kubelet-$name" && alive "containerd-$name"; then
    log "$name already running"
    return 0
  fi
  mkdir -p "$dir/cni" "$KUBELET_ROOT/$name" "$CONTAINERD_ROOT/$name"
  cat >"$dir/cni/10-snapcrypt.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "snapcrypt-$name", "plugins": [
  {"type": "bridge", "bridge": "snapcrypt$i", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "dataDir": "$dir/ipam",
            "ranges": [[{"subnet": "10.244.$i.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT/$name"
state = "/run/snapcrypt-containerd/$name"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd-ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # These machines lack CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  log "containerd for $name"
  launch "containerd-$name" containerd --config "$dir/containerd.toml"
  wait_for "containerd of $name" 30 ctr_of "$name" version >/dev/null 2>&1 \
    || { tail -20 "$LOGS/containerd-$name.log" >&2; die "containerd of $name did not start"; }
  ctr_of "$name" images import "$NODES_DIR/pause.tar" >/dev/null
  client_identity "$dir" "/O=system:nodes/CN=system:node:$name"
  # The node's address: the kubelet refuses a loopback --node-ip, and the apiserver reaches a
  # kubelet (kubectl logs/exec) at the node's InternalIP. 10.242.0.(i+1)/32 on lo is local to
  # this machine as 127.0.0.1 is (these machines have no dummy interface driver).
  local ip=$NODE_NET.$((i + 1))
  ip addr show dev lo | grep -q " $ip/32 " || ip addr add "$ip/32" dev lo
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: $((10250 + i))
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((10248 - i))
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
EOF
  log "kubelet $name on $ip:$((10250 + i))"
  launch "kubelet-$name" "$K8S_BIN/kubelet" --config "$dir/kubelet.yaml" \
    --kubeconfig "$dir/kubeconfig" --hostname-override "$name" --node-ip "$ip" \
    --container-runtime remote --container-runtime-endpoint "unix://$dir/containerd.sock" \
    --root-dir "$KUBELET_ROOT/$name" --cert-dir "$dir/pki" --v 1 \
    ${SNAPCRYPT_REGISTER_TAINTS:+--register-with-taints "$SNAPCRYPT_REGISTER_TAINTS"}
  node_ready() {
    curl_admin "/api/v1/nodes/$1" 2>/dev/null \
      | python3 -c 'import json,sys; n=json.load(sys.stdin); sys.exit(0 if any(c["type"]=="Ready" and c["status"]=="True" for c in n["status"]["conditions"]) else 1)' 2>/dev/null
  }
  wait_for "node $name Ready" 90 node_ready "$name" \
    || { tail -30 "$LOGS/kubelet-$name.log" >&2; die "node $name not Ready"; }
  # The nodelifecycle controller (off in start.sh: nothing here needs its evictions) would lift
  # the not-ready taint of a Ready node; do it here.
  KUBECONFIG=$ADMIN_KUBECONFIG kubectl taint nodes "$name" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
}

service_route() { # the kubernetes Service IP reaches the apiserver on loopback
  sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.default.route_localnet=1
  local rule=(-d "$SERVICE_IP/32" -p tcp --dport 443 -j DNAT --to-destination "127.0.0.1:$APISERVER_PORT"
              -m comment --comment snapcrypt-test)
  iptables -t nat -C PREROUTING "${rule[@]}" 2>/dev/null || iptables -t nat -A PREROUTING "${rule[@]}"
  iptables -t nat -C OUTPUT "${rule[@]}" 2>/dev/null || iptables -t nat -A OUTPUT "${rule[@]}"
}

start_scheduler() {
  alive kube-scheduler && return 0
  local dir=$NODES_DIR/scheduler
  client_identity "$dir" "/CN=system:kube-scheduler"
  log "kube-scheduler"
  launch kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$dir/kubeconfig" \
    --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10359 --port 0 --leader-elect=false --v 1
}

start_provisioner() { # the storage provisioner double (provisioner.py) and its StorageClasses
  alive provisioner && return 0
  log "storage provisioner (volumes under /var/lib/snapcrypt-volumes)"
  launch provisioner python3 "$HERE/provisioner.py" "$APISERVER_URL" "$PKI"
  wait_for "the storage provisioner" 30 grep -qs '^provisioner ready$' "$LOGS/provisioner.log" \
    || { tail -20 "$LOGS/provisioner.log" >&2; die "the storage provisioner did not start"; }
}

cmd_start() {
  [ $# -ge 1 ] || die "usage: node.sh start NAME [NAME...]"
  apiserver_ready || die "the cluster is not running: tests/cluster/start.sh"
  mkdir -p "$NODES_DIR" "$PIDS" "$LOGS"
  pause_image
  service_route
  start_scheduler
  start_provisioner
  local i=0 n
  for n in "$@"; do start_node "$n" "$i"; i=$((i + 1)); done
  log "nodes ready: $*"
}

cmd_expose() {
  local port=$1
  sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.default.route_localnet=1
  local rule=(-d "$HOST_ALIAS/32" -p tcp --dport "$port" -j DNAT --to-destination "127.0.0.1:$port"
              -m comment --comment snapcrypt-test)
  iptables -t nat -C PREROUTING "${rule[@]}" 2>/dev/null || iptables -t nat -A PREROUTING "${rule[@]}"
  # This machine's own processes (the operator outside the cluster) use the same address.
  iptables -t nat -C OUTPUT "${rule[@]}" 2>/dev/null || iptables -t nat -A OUTPUT "${rule[@]}"
}

cmd_load() {
  local tar=$1 d
  for d in "$NODES_DIR"/*/containerd.sock; do
    [ -S "$d" ] || continue
    ctr --address "$d" -n k8s.io images import "$tar" >/dev/null
  done
}

stop_pid() { # NAME
  local f=$PIDS/$1.pid p
  p=$(cat "$f" 2>/dev/null) || return 0
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

sandbox_netns() { # SOCKET: the network namespace path of every sandbox of that containerd
  local c
  for c in $(ctr --address "$1" -n k8s.io containers ls -q 2>/dev/null); do
    ctr --address "$1" -n k8s.io containers info "$c" 2>/dev/null
  done | python3 -c '
import json, sys
text, dec, i = sys.stdin.read(), json.JSONDecoder(), 0
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    info, i = dec.raw_decode(text, i)
    for ns in (((info.get("Spec") or {}).get("linux") or {}).get("namespaces") or []):
        if ns.get("type") == "network" and ns.get("path"):
            print(ns["path"])
' || true
}

remove_netns() { # the sandboxes' namespaces noted by cmd_stop, and any left by an older stop
  local ns paths=()
  [ -f "$NODES_DIR/netns.left" ] && mapfile -t paths <"$NODES_DIR/netns.left"
  # Older stops left theirs: a containerd-made namespace ("cni-*") holding an address of the
  # nodes' pod subnets (10.244.i.0/24) is one of ours, as the snapcrypt$i bridges are.
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    if ip netns exec "$ns" ip -o -4 addr show 2>/dev/null | grep -q ' 10\.244\.'; then
      paths+=("/var/run/netns/$ns")
    fi
  done
  for ns in "${paths[@]}"; do
    [ -e "$ns" ] || continue
    # Deleting the namespace deletes the veth pair in it (and its end on the host).
    umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
}

cmd_stop() {
  local d name
  stop_pid kube-scheduler
  stop_pid provisioner
  KUBECONFIG=$ADMIN_KUBECONFIG kubectl delete pv -l snapcrypt.test/provisioned --wait=false >/dev/null 2>&1 || true
  # The provisioner's snapshots: their copies go with /var/lib/snapcrypt-volumes below.
  KUBECONFIG=$ADMIN_KUBECONFIG kubectl delete volumesnapshotcontents --all --wait=false >/dev/null 2>&1 || true
  for d in "$NODES_DIR"/*/; do
    name=$(basename "$d")
    [ "$name" = scheduler ] && continue
    [ -f "$PIDS/kubelet-$name.pid" ] || [ -f "$PIDS/containerd-$name.pid" ] || continue
    stop_pid "kubelet-$name"
    # The pods' containers and their network, before their runtime goes. Killed with its
    # runtime, a sandbox is never torn down through CNI: its network namespace (and the veth
    # pair in it) would outlive the node, so note where each is and remove it below.
    if [ -S "$d/containerd.sock" ]; then
      sandbox_netns "$d/containerd.sock" >>"$NODES_DIR/netns.left"
      for t in $(ctr --address "$d/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
        ctr --address "$d/containerd.sock" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true
      done
    fi
    stop_pid "containerd-$name"
    # Shims left by a runtime that died first, with the container processes they hold.
    local shim
    for shim in $(pgrep -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address ${d%/}/containerd.sock"); do
      pkill -KILL -P "$shim" 2>/dev/null || true
      kill -KILL "$shim" 2>/dev/null || true
    done
    for m in $(awk -v r="$KUBELET_ROOT/$name" '$2 ~ "^"r {print $2}' /proc/mounts | sort -r); do
      umount -l "$m" 2>/dev/null || true
    done
    for m in $(awk -v r="/run/snapcrypt-containerd/$name" '$2 ~ "^"r {print $2}' /proc/mounts | sort -r); do
      umount -l "$m" 2>/dev/null || true
    done
    rm -rf "${KUBELET_ROOT:?}/$name" "${CONTAINERD_ROOT:?}/$name" "/run/snapcrypt-containerd/$name"
    # The Node object too: a stale Ready node would draw the scheduler's pods.
    KUBECONFIG=$ADMIN_KUBECONFIG kubectl delete node "$name" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  done
  remove_netns
  ip link show | awk -F': ' '/snapcrypt[0-9]+[:@]/{print $2}' | cut -d@ -f1 \
    | while read -r br; do ip link delete "$br" 2>/dev/null || true; done
  while iptables -t nat -S PREROUTING 2>/dev/null | grep -q snapcrypt-test; do
    iptables -t nat -S PREROUTING | grep snapcrypt-test | head -1 | sed 's/^-A/-D/' | xargs iptables -t nat
  done
  while iptables -t nat -S OUTPUT 2>/dev/null | grep -q snapcrypt-test; do
    iptables -t nat -S OUTPUT | grep snapcrypt-test | head -1 | sed 's/^-A/-D/' | xargs iptables -t nat
  done
  # The bridge plugin's masquerade chains of sandboxes that ended with their runtime.
  local c r
  for c in $(iptables -t nat -S | awk '$1 == "-A" && $2 ~ /^CNI-/ && /snapcrypt-/ {print $2}' | sort -u); do
    iptables -t nat -S POSTROUTING | grep -- "-j $c\$" | sed 's/^-A/-D/' | while read -r r; do
      eval "iptables -t nat $r" || true
    done
    iptables -t nat -F "$c" 2>/dev/null || true
    iptables -t nat -X "$c" 2>/dev/null || true
  done
  ip -o addr show dev lo | awk -v n="$NODE_NET." '$4 ~ "^"n {print $4}' \
    | while read -r a; do ip addr del "$a" dev lo 2>/dev/null || true; done
  rm -rf "$NODES_DIR" /var/lib/snapcrypt-volumes
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  load) shift; cmd_load "$1" ;;
  expose) shift; cmd_expose "$1" ;;
  *) die "usage: node.sh start NAME... | stop | load IMAGE.tar | expose PORT" ;;
esac
