#!/usr/bin/env bash
# Run a kube-apiserver of the test cluster in the foreground on $HOST:PORT: start.sh's (on
# APISERVER_PORT), or another one beside it on the same etcd, as in a highly available control
# plane (tests/faults.rs restarts such a second one under a running operator).
#
#   apiserver.sh PORT
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
PORT=${1:?usage: apiserver.sh PORT}
exec "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://$HOST:$ETCD_PORT" \
  --bind-address "$HOST" --advertise-address "$HOST" --secure-port "$PORT" --insecure-port 0 \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --token-auth-file "$PKI/tokens.csv" \
  --requestheader-client-ca-file "$PKI/ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --authorization-mode Node,RBAC \
  --service-account-issuer "$SA_ISSUER" \
  --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" \
  --api-audiences "$SA_ISSUER" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --endpoint-reconciler-type none \
  --allow-privileged=true \
  --kubelet-client-certificate "$PKI/apiserver-kubelet.crt" --kubelet-client-key "$PKI/apiserver-kubelet.key" \
  --kubelet-preferred-address-types InternalIP \
  --profiling=false \
  --v 1
