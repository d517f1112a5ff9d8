#!/usr/bin/env bash
# Run Kubernetes' node lifecycle controller (kube-controller-manager with that controller only)
# in the foreground against the test cluster, with a grace period of GRACE: it marks a node whose
# kubelet stopped reporting Ready=Unknown and taints it, as in a production cluster. The ground's
# own kube-controller-manager runs without it (start.sh: a loaded 2-core machine must not see
# its nodes marked lost); tests/operator_faults.rs runs this one while it loses a node.
#
#   node-lifecycle.sh PORT GRACE     (GRACE: a duration, for example 20s)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
PORT=${1:?usage: node-lifecycle.sh PORT GRACE}
GRACE=${2:?usage: node-lifecycle.sh PORT GRACE}
exec "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$ADMIN_KUBECONFIG" \
  --authentication-kubeconfig "$ADMIN_KUBECONFIG" \
  --authorization-kubeconfig "$ADMIN_KUBECONFIG" \
  --bind-address "$HOST" --secure-port "$PORT" --port 0 \
  --tls-cert-file "$PKI/kcm-serving.crt" --tls-private-key-file "$PKI/kcm-serving.key" \
  --leader-elect=false \
  --controllers nodelifecycle \
  --node-monitor-period 2s \
  --node-monitor-grace-period "$GRACE" \
  --profiling=false \
  --v 1
