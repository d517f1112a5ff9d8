#!/usr/bin/env bash
# The operator's main job, on this machine, with real pods: start the local test cluster
# (tests/cluster/) with two real nodes (kubelet + containerd), build the snapcrypt image and
# load it (no registry), `helm install` the chart (the operator runs as a pod of its
# Deployment), then apply a BackupJob for a one-member "replica set" (a real pod whose data
# claim holds a sample dbPath; mongod itself is not available here) that copies a
# VolumeSnapshot of that claim, and a Restore of the
# Snapshot it takes, showing `kubectl get backupjobs,snapshots,restores` until both succeed.
#
#   examples/operator-demo.sh        run the demo (as root; leaves everything running)
#   examples/operator-demo.sh stop   uninstall and stop it all
#
# Needs root (containerd, kubelet). First run, with the cluster binaries cached: ~12 min (the
# release build of snapcrypt); add 5-7 min on a brand-new machine (Kubernetes from source).
# Later runs: about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=snapcrypt-demo
RELEASE=demo
DIR=/var/tmp/snapcrypt-demo
IMAGE_REPO=snapcrypt.test/snapcrypt
IMAGE_TAG=demo
HELM=${SNAPCRYPT_CACHE:-$HOME/.cache/snapcrypt}/bin/helm3
export KUBECONFIG=${SNAPCRYPT_CLUSTER_DIR:-/tmp/snapcrypt-cluster}/admin.kubeconfig
say() { echo "== $*"; }

if [ "${1:-}" = stop ]; then
  "$HELM" uninstall "$RELEASE" --namespace "$NS" 2>/dev/null || true
  kubectl delete namespace "$NS" --wait=false 2>/dev/null || true
  tests/cluster/stop.sh || true
  rm -rf "$DIR"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "run as root: the demo starts containerd and kubelets" >&2; exit 1; }

# On a failure, keep what explains it before anyone runs `stop` (which deletes the cluster
# directory and its logs): every component's log, the pods, Events and the operator's log, in
# $FAILURES/<time>; print where, and the last lines of the logs that speak of errors.
FAILURES=/var/tmp/snapcrypt-demo-failures
keep_logs() {
  local rc=$? out
  [ "$rc" = 0 ] && return 0
  out=$FAILURES/$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$out"
  cp -r "${SNAPCRYPT_CLUSTER_DIR:-/tmp/snapcrypt-cluster}/logs/." "$out/" 2>/dev/null || true
  kubectl get nodes,pods -A -o wide >"$out/pods.txt" 2>&1 || true
  kubectl get events -A --sort-by=.lastTimestamp >"$out/events.txt" 2>&1 || true
  kubectl -n "$NS" logs -l app.kubernetes.io/component=operator --tail=200 --all-containers \
    >"$out/operator.log" 2>&1 || true
  kubectl -n "$NS" describe pods >"$out/describe-pods.txt" 2>&1 || true
  echo "== the demo failed (exit $rc); its logs are kept in $out" >&2
  local f
  for f in "$out"/*; do
    grep -qiE 'error|fail|timed out|refused' "$f" 2>/dev/null || continue
    echo "-- $f (last lines)" >&2
    tail -8 "$f" | sed 's/^/   /' >&2
  done
  echo "== then: examples/operator-demo.sh stop" >&2
}
trap keep_logs EXIT

say "installing what the cluster needs, building it (cached after the first run)"
SNAPCRYPT_SKIP_S3S_FS=1 bash .ci/install-deps.sh >/dev/null
tests/cluster/build.sh
tests/cluster/start.sh >/dev/null
say "two real nodes (kubelet + containerd), real-a and real-b, and the storage provisioner double"
tests/cluster/node.sh start real-a real-b
say "building snapcrypt (release) and its image $IMAGE_REPO:$IMAGE_TAG"
cargo build --release --quiet
tests/cluster/image.sh target/release/snapcrypt "$IMAGE_REPO:$IMAGE_TAG" >/dev/null

say "CRDs, namespace $NS, the chart (the operator as a pod)"
# The test ground's apiserver (1.20) predates CEL rules: it drops them (the client would refuse
# the unknown field without --validate=false). A current cluster enforces them.
kubectl apply --validate=false -f crds/ >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
"$HELM" upgrade --install "$RELEASE" charts/snapcrypt --namespace "$NS" --skip-crds \
  --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
  --set operator.watchNamespace="$NS" --wait --timeout 3m >/dev/null
kubectl -n "$NS" get pods -l app.kubernetes.io/component=operator -o wide

say "a member pod on real-b with its data claim, a repository claim, a key"
# Claims as a user writes them: the test ground's storage provisioner double
# (tests/cluster/provisioner.py) binds them (snapcrypt-local, the default class: a disk of the
# node of the first pod using it; snapcrypt-shared: network storage every node reaches).
[ -f "$DIR/key.json" ] || { mkdir -p "$DIR"; target/release/snapcrypt key new --out "$DIR/key.json" >/dev/null; }
kubectl -n "$NS" create secret generic rs0-key --from-file=key="$DIR/key.json" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: mongo-data-rs0-0, namespace: $NS}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: backups, namespace: $NS}
spec: {accessModes: [ReadWriteOnce], storageClassName: snapcrypt-shared, resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restored, namespace: $NS}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: rs0-0, namespace: $NS, labels: {app: demo-rs}}
spec:
  nodeSelector: {kubernetes.io/hostname: real-b}
  containers:
  - {name: mongod, image: "snapcrypt.test/pause:3.2", imagePullPolicy: Never,
     volumeMounts: [{name: mongo-data, mountPath: /data/db}]}
  volumes: [{name: mongo-data, persistentVolumeClaim: {claimName: mongo-data-rs0-0}}]
EOF
kubectl -n "$NS" wait pod/rs0-0 --for=condition=Ready --timeout=120s >/dev/null
volume_dir() { kubectl get pv "$(kubectl -n "$NS" get pvc "$1" -o jsonpath='{.spec.volumeName}')" -o jsonpath='{.spec.hostPath.path}'; }
DATA=$(volume_dir mongo-data-rs0-0)
say "a sample 64 MiB dbPath in the member's volume ($DATA; mongod itself cannot run here)"
[ -f "$DATA/WiredTiger" ] || python3 bench/gen_dbpath.py make "$DATA" 64 >/dev/null
chown -R 999:999 "$DATA"
kubectl apply -f - >/dev/null <<EOF
apiVersion: snapcrypt.dev/v1alpha1
kind: BackupJob
metadata: {name: rs0, namespace: $NS}
spec:
  source: {selector: {matchLabels: {app: demo-rs}}, dataVolumeName: mongo-data,
           syncSource: {mode: member, member: rs0-0},
           # A VolumeSnapshot of the member's volume is cut, then copied (the ground's
           # provisioner double plays the CSI snapshotter).
           consistency: {mode: volumeSnapshot, volumeSnapshotClassName: snapcrypt-snapshots}}
  destination: {pvc: {claimName: backups, path: repo}}
  encryption: {localKeySecret: {name: rs0-key}}
  retention: {keepLast: 7}
EOF

watch_until() { # DESCRIPTION KIND NAME: print the table until NAME's phase is final
  local end=$(( $(date +%s) + 300 )) phase=""
  while [ "$(date +%s)" -lt "$end" ]; do
    kubectl -n "$NS" get backupjobs,snapshots,restores 2>/dev/null | sed 's/^/   /'
    phase=$(kubectl -n "$NS" get "$2" "$3" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    case "$phase" in Succeeded|Failed) break ;; esac
    echo
    sleep 2
  done
  say "$1: ${phase:-unknown}"
  [ "$phase" = Succeeded ]
}
say "the BackupJob's Snapshot (progress updates every ~2 s)"
until SNAP=$(kubectl -n "$NS" get snapshots -o jsonpath='{.items[0].metadata.name}' 2>/dev/null) && [ -n "$SNAP" ]; do sleep 1; done
watch_until "Snapshot $SNAP" snapshot "$SNAP"

say "a Restore of $SNAP into the claim 'restored'"
kubectl apply -f - >/dev/null <<EOF
apiVersion: snapcrypt.dev/v1alpha1
kind: Restore
metadata: {name: back, namespace: $NS}
spec: {snapshotRef: {name: $SNAP}, target: {claimName: restored, path: db}}
EOF
watch_until "Restore back" restore back
diff -r "$DATA" "$(volume_dir restored)/db" >/dev/null && say "restored files are identical to the member's"
cat <<NEXT

Everything is still running (KUBECONFIG=$KUBECONFIG):
  kubectl -n $NS get backupjobs,snapshots,restores
  kubectl -n $NS describe snapshot $SNAP
Stop it all with: examples/operator-demo.sh stop
NEXT
