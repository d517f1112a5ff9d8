#!/usr/bin/env bash
# Self-check of the snapcrypt e2e test ground. Every wait has a deadline; exits non-zero on any
# failure and ends with a "N passed, N failed" line.
#
#   tests/cluster/smoke.sh            # builds (cached) and starts the cluster if it is not running,
#                                     # and stops it again afterwards if it started it
#   SNAPCRYPT_SMOKE_KEEP=1 ...        # leave a cluster it started running
#
# Checks: /version is v1.20.2; a CRD becomes Established and serves a custom resource; a
# ServiceAccount token without RBAC gets 403 and 200 once a Role allows it; the controller-manager
# garbage-collects an ownerRef'd child; node.sh starts two real nodes (kubelet + containerd)
# that become Ready; a pod pinned to real-b runs in a real container with a claim the
# provisioner double binds to a volume on real-b; the namespace deletion completes. Run as
# root (the nodes need it); the nodes stay up until stop.sh.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
check() { # DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@" >/dev/null; then pass "$what"; else fail "$what"; fi
}
# eventually DESCRIPTION DEADLINE COMMAND...: poll until true or deadline
eventually() {
  local what=$1 secs=$2; shift 2
  if wait_for "$what" "$secs" "$@" >/dev/null; then pass "$what"; else fail "$what"; fi
}

WORK=$(mktemp -d /tmp/snapcrypt-smoke.XXXXXX)
NS=snapcrypt-smoke-$$
STARTED_CLUSTER=0

cleanup() {
  if [ "$STARTED_CLUSTER" = 1 ] && [ "${SNAPCRYPT_SMOKE_KEEP:-0}" != 1 ]; then
    "$HERE/stop.sh" >/dev/null 2>&1
  elif [ -n "${KUBECONFIG:-}" ]; then
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

T0=$(date +%s)
if ! "$HERE/status.sh" >/dev/null 2>&1; then
  "$HERE/build.sh" || { echo "FAIL: build.sh"; echo "0 passed, 1 failed"; exit 1; }
  "$HERE/start.sh" >/dev/null || { echo "FAIL: start.sh"; echo "0 passed, 1 failed"; exit 1; }
  STARTED_CLUSTER=1
fi
export KUBECONFIG=$ADMIN_KUBECONFIG
KC=(kubectl --request-timeout=15s)

# ---------------------------------------------------------------- API server
version_ok() { "${KC[@]}" get --raw /version | grep -q '"gitVersion": "v1.20.2"'; }
check "kube-apiserver /version is v1.20.2" version_ok
check "create namespace $NS" "${KC[@]}" create namespace "$NS" -o name
wait_for "default ServiceAccount in $NS" 30 "${KC[@]}" -n "$NS" get serviceaccount default -o name >/dev/null 2>&1

# ---------------------------------------------------------------- CRD + custom resource
cat >"$WORK/crd.yaml" <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: smokes.e2e.snapcrypt.test
spec:
  group: e2e.snapcrypt.test
  scope: Namespaced
  names: {plural: smokes, singular: smoke, kind: Smoke}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
          status:
            type: object
            properties:
              phase: {type: string}
EOF
check "create CRD" "${KC[@]}" apply -f "$WORK/crd.yaml" -o name
check "CRD Established" "${KC[@]}" wait --for=condition=Established crd/smokes.e2e.snapcrypt.test --timeout=30s
cat >"$WORK/cr.yaml" <<EOF
apiVersion: e2e.snapcrypt.test/v1
kind: Smoke
metadata: {name: one, namespace: $NS}
spec: {size: 3}
EOF
# a CRD can be Established a moment before its REST mapping reaches the discovery cache
eventually "create custom resource" 30 "${KC[@]}" apply -f "$WORK/cr.yaml" -o name
check "read custom resource back" \
  test "$("${KC[@]}" -n "$NS" get smoke one -o jsonpath='{.spec.size}' 2>/dev/null)" = 3

# ---------------------------------------------------------------- RBAC with ServiceAccount tokens
"${KC[@]}" -n "$NS" create serviceaccount nobody -o name >/dev/null
wait_for "nobody ServiceAccount" 10 "${KC[@]}" -n "$NS" get sa nobody -o name >/dev/null 2>&1
echo '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":600}}' >"$WORK/tr.json"
TOKEN=$("${KC[@]}" create --raw "/api/v1/namespaces/$NS/serviceaccounts/nobody/token" -f "$WORK/tr.json" 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["token"])' 2>/dev/null)
check "TokenRequest returns a token" test -n "$TOKEN"
http_as_nobody() { # PATH -> HTTP status code
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$PKI/ca.crt" \
    -H "Authorization: Bearer $TOKEN" "$APISERVER_URL$1"
}
check "ServiceAccount without RBAC gets 403 on configmaps" test "$(http_as_nobody "/api/v1/namespaces/$NS/configmaps")" = 403
check "ServiceAccount without RBAC gets 403 on a custom resource" \
  test "$(http_as_nobody "/apis/e2e.snapcrypt.test/v1/namespaces/$NS/smokes")" = 403
check "a bad token gets 401" test "$(TOKEN=garbage http_as_nobody /api)" = 401
"${KC[@]}" -n "$NS" create role cm-reader --verb=get,list --resource=configmaps -o name >/dev/null
"${KC[@]}" -n "$NS" create rolebinding cm-reader --role=cm-reader \
  --serviceaccount="$NS:nobody" --serviceaccount="$NS:default" -o name >/dev/null
eventually "ServiceAccount gets 200 once a Role allows it" 10 \
  test "$(http_as_nobody "/api/v1/namespaces/$NS/configmaps")" = 200

# ---------------------------------------------------------------- garbage collection (ownerRef)
"${KC[@]}" -n "$NS" create configmap owner --from-literal=a=b -o name >/dev/null
OWNER_UID=$("${KC[@]}" -n "$NS" get configmap owner -o jsonpath='{.metadata.uid}')
cat >"$WORK/child.yaml" <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: child
  namespace: $NS
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: owner, uid: "$OWNER_UID"}
data: {c: d}
EOF
check "create ownerRef'd child" "${KC[@]}" apply -f "$WORK/child.yaml" -o name
"${KC[@]}" -n "$NS" delete configmap owner --wait=false >/dev/null
child_gone() { ! "${KC[@]}" -n "$NS" get configmap child -o name >/dev/null 2>&1; }
eventually "controller-manager garbage-collects the child of a deleted owner" 60 child_gone

# ---------------------------------------------------------------- real nodes
check "node.sh starts real-a and real-b" "$HERE/node.sh" start real-a real-b
nodes_ready() {
  [ "$("${KC[@]}" get nodes real-a real-b -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{end}' 2>/dev/null)" = TrueTrue ]
}
eventually "both nodes Ready" 60 nodes_ready
cat >"$WORK/pod.yaml" <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: $NS}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: sleeper, namespace: $NS}
spec:
  nodeSelector: {kubernetes.io/hostname: real-b}
  containers:
  - {name: pause, image: snapcrypt.test/pause:3.2, imagePullPolicy: Never,
     volumeMounts: [{name: data, mountPath: /data}]}
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
EOF
check "create a pod with a claim of the default class" "${KC[@]}" apply -f "$WORK/pod.yaml" -o name
pod_running() { [ "$("${KC[@]}" -n "$NS" get pod sleeper -o jsonpath='{.status.phase}' 2>/dev/null)" = Running ]; }
eventually "the pod runs in a real container on real-b" 90 pod_running
pv_local() {
  local pv; pv=$("${KC[@]}" -n "$NS" get pvc data -o jsonpath='{.spec.volumeName}' 2>/dev/null) && [ -n "$pv" ] &&
  [ "$("${KC[@]}" get pv "$pv" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}')" = real-b ]
}
eventually "the provisioner double bound the claim to a volume on real-b" 30 pv_local

# ---------------------------------------------------------------- namespace deletion
"${KC[@]}" delete namespace "$NS" --wait=false >/dev/null
ns_gone() { ! "${KC[@]}" get namespace "$NS" -o name >/dev/null 2>&1; }
eventually "namespace deletion completes (controller-manager + kubelets + provisioner)" 120 ns_gone
"${KC[@]}" delete -f "$WORK/crd.yaml" --wait=false >/dev/null 2>&1

echo "smoke: $(( $(date +%s) - T0 )) s"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
