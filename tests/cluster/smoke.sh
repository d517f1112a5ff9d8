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
# garbage-collects an ownerRef'd child; the test node agent registers Ready nodes, binds a pod
# by nodeSelector and runs it (--snapcrypt-binary /bin/sh, image snapcrypt:test) to Succeeded
# with the termination message in status, with a PVC dir and the pod's own ServiceAccount
# kubeconfig; FallbackToLogsOnError; a scenery (non-snapcrypt) pod is Running; deleting a
# running pod kills its process; the namespace deletion completes.
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
AGENT_PID=
AGENT_PIDFILE=$PIDS/node-agent-smoke-$$.pid

cleanup() {
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill -TERM "$AGENT_PID" 2>/dev/null
    wait "$AGENT_PID" 2>/dev/null
  fi
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

# ---------------------------------------------------------------- test node agent
mkdir -p "$WORK/agent"
python3 "$REPO/tests/node-agent/agent.py" --kubeconfig "$KUBECONFIG" --state-dir "$WORK/agent" \
  --snapcrypt-binary /bin/sh --run-image busybox --node node-a --node node-b --pid-file "$AGENT_PIDFILE" \
  >"$WORK/agent.stdout" 2>"$WORK/agent.stderr" &
AGENT_PID=$!
agent_ready() { grep -qs '^node-agent ready$' "$WORK/agent.stdout"; }
eventually "node agent prints 'node-agent ready'" 60 agent_ready
nodes_ready() {
  [ "$("${KC[@]}" get nodes node-a node-b -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{end}' 2>/dev/null)" = TrueTrue ]
}
eventually "nodes node-a and node-b are Ready" 20 nodes_ready

"${KC[@]}" -n "$NS" create configmap smoke-cfg --from-literal=greeting=hello -o name >/dev/null
cat >"$WORK/pods.yaml" <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: smoke-data, namespace: $NS}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: smoke-pod, namespace: $NS}
spec:
  restartPolicy: Never
  nodeSelector: {kubernetes.io/hostname: node-a}
  containers:
  - name: snapcrypt
    image: snapcrypt:test
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    args:
    - -c
    - >-
      kubectl --request-timeout=10s get configmap smoke-cfg -o jsonpath='{.data.greeting}' > /data/greeting &&
      echo "done \$(POD_NAME)" > /dev/termination-log
    volumeMounts:
    - {name: data, mountPath: /data}
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: smoke-data}}
---
apiVersion: v1
kind: Pod
metadata: {name: smoke-seeder, namespace: $NS}
spec:
  restartPolicy: Never
  nodeSelector: {kubernetes.io/hostname: node-a}
  containers:
  - name: seed
    image: busybox:1.36
    command: ["sh", "-c", "mkdir -p /seed/db && echo seeded > /seed/db/doc.json"]
    volumeMounts:
    - {name: data, mountPath: /seed}
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: smoke-data}}
---
apiVersion: v1
kind: Pod
metadata: {name: smoke-fail, namespace: $NS}
spec:
  restartPolicy: Never
  nodeName: node-b
  containers:
  - name: snapcrypt
    image: snapcrypt:test
    terminationMessagePolicy: FallbackToLogsOnError
    args: ["-c", "echo boom-from-logs; exit 7"]
---
apiVersion: v1
kind: Pod
metadata: {name: smoke-mongo, namespace: $NS}
spec:
  nodeSelector: {kubernetes.io/hostname: node-b}
  containers:
  - {name: mongod, image: mongo:4.4}
---
apiVersion: v1
kind: Pod
metadata: {name: smoke-sleeper, namespace: $NS}
spec:
  restartPolicy: Never
  nodeName: node-a
  terminationGracePeriodSeconds: 5
  containers:
  - name: snapcrypt
    image: snapcrypt:test
    args: ["-c", "echo \$\$ > /tmp/pid; exec sleep 300"]
    volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {}}]
EOF
check "create pods" "${KC[@]}" apply -f "$WORK/pods.yaml" -o name
jp() { "${KC[@]}" -n "$NS" get pod "$1" -o jsonpath="$2" 2>/dev/null; }
phase_is() { [ "$(jp "$1" '{.status.phase}')" = "$2" ]; }
eventually "smoke-pod is bound to node-a by nodeSelector" 30 test "$(jp smoke-pod '{.spec.nodeName}')" = node-a
eventually "smoke-pod Succeeded" 60 phase_is smoke-pod Succeeded
check "smoke-pod termination message in status" \
  test "$(jp smoke-pod '{.status.containerStatuses[0].state.terminated.message}')" = "done smoke-pod"
check "smoke-pod read a ConfigMap with its ServiceAccount kubeconfig into its PVC dir" \
  test "$(cat "$WORK/agent/pvcs/$NS/smoke-data/greeting" 2>/dev/null)" = hello
check "smoke-pod podIP 127.0.0.1" test "$(jp smoke-pod '{.status.podIP}')" = 127.0.0.1
check "container log file written" test -f "$WORK/agent/logs/${NS}_smoke-pod_snapcrypt.log"
pvc_bound_on_node_a() {
  local pv
  pv=$("${KC[@]}" -n "$NS" get pvc smoke-data -o jsonpath='{.status.phase}/{.spec.volumeName}' 2>/dev/null)
  [ "${pv%%/*}" = Bound ] || return 1
  [ "$("${KC[@]}" get pv "${pv#*/}" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}')" = node-a ]
}
eventually "PVC smoke-data Bound to a PV on node-a (first consumer's node)" 30 pvc_bound_on_node_a
eventually "--run-image pod smoke-seeder Succeeded" 60 phase_is smoke-seeder Succeeded
check "smoke-seeder wrote into the PVC dir" \
  test "$(cat "$WORK/agent/pvcs/$NS/smoke-data/db/doc.json" 2>/dev/null)" = seeded
eventually "smoke-fail Failed" 60 phase_is smoke-fail Failed
check "smoke-fail exit code 7" test "$(jp smoke-fail '{.status.containerStatuses[0].state.terminated.exitCode}')" = 7
check "smoke-fail message falls back to the log" \
  bash -c "[[ \"\$1\" == *boom-from-logs* ]]" _ "$(jp smoke-fail '{.status.containerStatuses[0].state.terminated.message}')"
eventually "scenery pod smoke-mongo Running (not executed)" 30 phase_is smoke-mongo Running
eventually "smoke-sleeper Running" 30 phase_is smoke-sleeper Running
SLEEPER_PID=
sleeper_pid() { SLEEPER_PID=$(cat "$WORK"/agent/pods/"${NS}"_smoke-sleeper_*/volumes/tmp/pid 2>/dev/null) && [ -n "$SLEEPER_PID" ]; }
eventually "smoke-sleeper process started" 10 sleeper_pid
"${KC[@]}" -n "$NS" delete pod smoke-sleeper --wait=false >/dev/null
pod_gone() { ! "${KC[@]}" -n "$NS" get pod "$1" -o name >/dev/null 2>&1; }
eventually "deleted pod smoke-sleeper is gone from the API" 30 pod_gone smoke-sleeper
proc_gone() { [ -z "$SLEEPER_PID" ] || ! kill -0 "$SLEEPER_PID" 2>/dev/null; }
eventually "deleted pod's process was killed" 15 proc_gone

# ---------------------------------------------------------------- namespace deletion
"${KC[@]}" delete namespace "$NS" --wait=false >/dev/null
ns_gone() { ! "${KC[@]}" get namespace "$NS" -o name >/dev/null 2>&1; }
eventually "namespace deletion completes (controller-manager + node agent)" 120 ns_gone
"${KC[@]}" delete -f "$WORK/crd.yaml" --wait=false >/dev/null 2>&1

# ---------------------------------------------------------------- agent shutdown
kill -TERM "$AGENT_PID" 2>/dev/null
agent_exited() { ! kill -0 "$AGENT_PID" 2>/dev/null; }
eventually "node agent exits on SIGTERM" 15 agent_exited
AGENT_PID=
if grep -q -E 'Traceback|ERROR' "$WORK/agent/node-agent.log"; then
  fail "node agent log has errors:"; grep -E -A5 'Traceback|ERROR' "$WORK/agent/node-agent.log" | head -40
else
  pass "node agent log has no errors"
fi

echo "smoke: $(( $(date +%s) - T0 )) s"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
