#!/usr/bin/env bash
# Start the snapcrypt e2e test cluster on loopback: etcd, kube-apiserver v1.20.2 (RBAC, client
# certs, static token and ServiceAccount token auth, TokenRequest) and kube-controller-manager
# (garbage collector, namespace deletion, service accounts and their tokens, jobs, ...).
# The scheduler, the kubelets, containerd and the storage provisioner double are node.sh's
# (tests/run starts them after this as root; stop.sh stops them).
#
# Idempotent: if the cluster is already running and healthy it says so and exits 0.
# Writes into $SNAPCRYPT_CLUSTER_DIR (default /tmp/snapcrypt-cluster):
#   admin.kubeconfig        cluster-admin (client cert, O=system:masters)
#   admin-token.kubeconfig  cluster-admin through a static bearer token
#   pki/                    CA, serving and client certs, ServiceAccount signing key pair
#   pids/ logs/ etcd/       pid files, component logs, etcd data
# Needs tests/cluster/build.sh to have run (binaries in $SNAPCRYPT_CACHE/k8s/bin).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

START_TIMEOUT=${SNAPCRYPT_START_TIMEOUT:-120}
log() { echo "[start.sh $(date +%H:%M:%S)] $*" >&2; }
die() { echo "[start.sh] ERROR: $*" >&2; exit 1; }

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done
  etcd_healthy && apiserver_ready && kcm_healthy
}

if all_running; then
  log "already running and healthy: $APISERVER_URL (state $CLUSTER_DIR)"
  echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
  exit 0
fi
if [ -d "$CLUSTER_DIR" ]; then
  log "stale or partial cluster state in $CLUSTER_DIR: stopping it first"
  "$HERE/stop.sh" >&2
fi

for b in kube-apiserver kube-controller-manager; do
  [ -x "$K8S_BIN/$b" ] || die "$K8S_BIN/$b missing: run tests/cluster/build.sh first"
done
command -v etcd >/dev/null || die "etcd missing: run tests/cluster/build.sh first"
command -v openssl >/dev/null || die "openssl missing: run tests/cluster/build.sh first"

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT"; do
  port_busy "$p" && die "port $HOST:$p is already in use (override with SNAPCRYPT_*_PORT)"
done

T0=$(date +%s.%N)
umask 077
mkdir -p "$PKI" "$PIDS" "$LOGS" "$CLUSTER_DIR/etcd"
chmod 755 "$CLUSTER_DIR"

# ------------------------------------------------------------------ PKI (openssl, ECDSA P-256)
ca_cert() {
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 365 -subj "/CN=snapcrypt-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
}
# leaf NAME SUBJECT EKU [SAN]
leaf_cert() {
  local name=$1 subj=$2 eku=$3 san=${4:-}
  local ext=$PKI/$name.ext
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$ext"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -out "$PKI/$name.crt" -days 365 -sha256 -extfile "$ext" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}
ca_cert
leaf_cert apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:${SERVICE_CIDR%.*}.1"
leaf_cert kcm-serving "/CN=kube-controller-manager" serverAuth "DNS:localhost,IP:127.0.0.1"
leaf_cert admin "/O=system:masters/CN=snapcrypt-admin" clientAuth
leaf_cert kcm "/CN=system:kube-controller-manager" clientAuth
# The apiserver's client certificate towards the kubelets (logs, exec, port-forward).
leaf_cert apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
# ServiceAccount token signing key pair (RSA, RS256).
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
chmod 644 "$PKI"/*.crt
ADMIN_TOKEN=$(openssl rand -hex 24)
echo "$ADMIN_TOKEN,snapcrypt-admin-token,snapcrypt-admin-token,system:masters" >"$PKI/tokens.csv"
echo "$ADMIN_TOKEN" >"$CLUSTER_DIR/admin-token"

b64() { base64 -w0 <"$1"; }
# kubeconfig FILE USER (cert KEY CERT | token TOKEN)
kubeconfig() {
  local file=$1 user=$2 kind=$3
  {
    cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: snapcrypt-test
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(b64 "$PKI/ca.crt")
contexts:
- name: snapcrypt-test
  context:
    cluster: snapcrypt-test
    user: $user
    namespace: default
current-context: snapcrypt-test
users:
- name: $user
  user:
EOF
    if [ "$kind" = cert ]; then
      echo "    client-certificate-data: $(b64 "$4")"
      echo "    client-key-data: $(b64 "$5")"
    else
      echo "    token: $4"
    fi
  } >"$file"
}
kubeconfig "$ADMIN_KUBECONFIG" snapcrypt-admin cert "$PKI/admin.crt" "$PKI/admin.key"
kubeconfig "$CLUSTER_DIR/admin-token.kubeconfig" snapcrypt-admin-token token "$ADMIN_TOKEN"
kubeconfig "$CLUSTER_DIR/kcm.kubeconfig" system:kube-controller-manager cert "$PKI/kcm.crt" "$PKI/kcm.key"
chmod 644 "$ADMIN_KUBECONFIG" "$CLUSTER_DIR/admin-token.kubeconfig"

# ------------------------------------------------------------------ processes
launch() { # NAME CMD...: detached (own session), logs to $LOGS/NAME.log, pid to $PIDS/NAME.pid
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}
check_alive() { # NAME: fail fast with the log tail if the process died
  pid_of "$1" >/dev/null && return 0
  echo "[start.sh] $1 exited; last lines of $LOGS/$1.log:" >&2
  tail -25 "$LOGS/$1.log" >&2
  return 1
}
wait_component() { # NAME DEADLINE PROBE
  local name=$1 secs=$2 probe=$3
  local end=$(( $(date +%s) + secs ))
  until $probe; do
    check_alive "$name" || die "$name did not start"
    [ "$(date +%s)" -lt "$end" ] || { tail -25 "$LOGS/$name.log" >&2; die "$name not healthy after ${secs}s"; }
    sleep 0.2
  done
}

log "etcd on $HOST:$ETCD_PORT"
launch etcd etcd --name snapcrypt-test --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls "http://$HOST:$ETCD_PORT" --advertise-client-urls "http://$HOST:$ETCD_PORT" \
  --listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
  --initial-cluster "snapcrypt-test=http://$HOST:$ETCD_PEER_PORT" --initial-cluster-state new \
  --logger zap --log-level warn
wait_component etcd "$START_TIMEOUT" etcd_healthy

log "kube-apiserver on $APISERVER_URL"
launch kube-apiserver "$HERE/apiserver.sh" "$APISERVER_PORT"
wait_component kube-apiserver "$START_TIMEOUT" apiserver_ready

log "kube-controller-manager (secure port $HOST:$KCM_PORT)"
launch kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$CLUSTER_DIR/kcm.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/kcm.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/kcm.kubeconfig" \
  --bind-address "$HOST" --secure-port "$KCM_PORT" --port 0 \
  --tls-cert-file "$PKI/kcm-serving.crt" --tls-private-key-file "$PKI/kcm-serving.key" \
  --leader-elect=false \
  --use-service-account-credentials \
  --root-ca-file "$PKI/ca.crt" \
  --service-account-private-key-file "$PKI/sa.key" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --controllers '*,-nodelifecycle,-cloud-node-lifecycle,-nodeipam,-route,-service,-attachdetach,-persistentvolume-expander' \
  --profiling=false \
  --v 1
wait_component kube-controller-manager "$START_TIMEOUT" kcm_healthy

# The cluster is usable once the default ServiceAccount has its token secret: pods can then pass
# the ServiceAccount admission plugin, and RBAC'd controllers are running.
default_sa_ready() {
  curl_admin /api/v1/namespaces/default/serviceaccounts/default 2>/dev/null | grep -q '"secrets"'
}
wait_component kube-controller-manager "$START_TIMEOUT" default_sa_ready

T1=$(date +%s.%N)
log "ready in $(awk "BEGIN{printf \"%.1f\", $T1-$T0}") s: $APISERVER_URL; kubeconfig $ADMIN_KUBECONFIG"
echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
