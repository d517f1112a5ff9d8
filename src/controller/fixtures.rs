//! Test objects for every controller's tests, written as a user writes them (YAML): one
//! BackupJob, its Snapshots and pods, a Restore, replica-set member pods.

use k8s_openapi::api::core::v1::Pod;
use serde_yaml::{Mapping, Value};

use crate::api::snapshot::{RunPhase, SnapshotStatus};
use crate::api::{BackupJob, Restore, Snapshot};

/// The spec of [`job`] before overrides: member rs0-1 of StatefulSet rs0, a PVC destination,
/// a local key.
pub const JOB_SPEC: &str = "
source: {statefulSetName: rs0, dataVolumeName: data, syncSource: {mode: member, member: rs0-1}}
destination: {pvc: {claimName: backups}}
encryption: {localKeySecret: {name: k}}
";

fn mapping(yaml: &str) -> Mapping {
    match serde_yaml::from_str::<Value>(yaml).expect("fixture yaml") {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        other => panic!("fixture yaml is not a mapping: {other:?}"),
    }
}

/// BackupJob rs0 in namespace db (uid u1, generation 3, created 2026-11-27T09:30:00Z): its spec
/// is [`JOB_SPEC`] with each top-level key of `overrides` (YAML) replaced or added.
pub fn job(overrides: &str) -> BackupJob {
    let mut spec = mapping(JOB_SPEC);
    for (k, v) in mapping(overrides) {
        spec.insert(k, v);
    }
    let mut doc = mapping(
        "apiVersion: snapcrypt.dev/v1alpha1
kind: BackupJob
metadata: {name: rs0, namespace: db, uid: u1, generation: 3, creationTimestamp: \"2026-11-27T09:30:00Z\"}",
    );
    doc.insert("spec".into(), Value::Mapping(spec));
    serde_yaml::from_value(Value::Mapping(doc)).expect("BackupJob fixture")
}

/// Snapshot `name` of job rs0 in namespace db (uid `uid-NAME`), created at `created`.
pub fn snapshot(name: &str, created: &str) -> Snapshot {
    serde_yaml::from_str(&format!(
        "apiVersion: snapcrypt.dev/v1alpha1
kind: Snapshot
metadata: {{name: {name}, namespace: db, uid: uid-{name}, creationTimestamp: \"{created}\"}}
spec: {{backupJobRef: {{name: rs0}}}}"
    ))
    .expect("Snapshot fixture")
}

/// [`snapshot`] in `phase`, with pod `pod` if it has one.
pub fn snapshot_in(name: &str, created: &str, phase: RunPhase, pod: Option<&str>) -> Snapshot {
    let mut s = snapshot(name, created);
    s.status = Some(SnapshotStatus {
        phase,
        pod_name: pod.map(String::from),
        ..Default::default()
    });
    s
}

/// Restore `back` in namespace db (uid r-uid) of Snapshot rs0-202611270300 into `target`
/// (a YAML flow mapping).
pub fn restore(target: &str) -> Restore {
    serde_yaml::from_str(&format!(
        "apiVersion: snapcrypt.dev/v1alpha1
kind: Restore
metadata: {{name: back, namespace: db, uid: r-uid}}
spec:
  snapshotRef: {{name: rs0-202611270300}}
  target: {target}"
    ))
    .expect("Restore fixture")
}

/// An agent pod of attempt `attempt` (named `s-ATTEMPT`) whose status is `status` (YAML
/// lines indented by two spaces).
pub fn agent_pod(attempt: u32, status: &str) -> Pod {
    serde_yaml::from_str(&format!(
        "metadata: {{name: s-{attempt}, labels: {{snapcrypt.dev/attempt: \"{attempt}\"}}}}\nstatus:\n{status}"
    ))
    .expect("pod fixture")
}

/// The status lines of an agent pod whose container ended with `exit_code` and `message`.
pub fn terminated(phase: &str, exit_code: i32, message: &str) -> String {
    format!(
        "  phase: {phase}\n  containerStatuses:\n  - {{name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: {exit_code}, message: {message:?}}}}}}}"
    )
}

/// Member pod `name` of StatefulSet rs0 (volume `data`), on `node`, its data volume backed by
/// claim `claim`.
pub fn member_pod(name: &str, node: Option<&str>, claim: Option<&str>) -> Pod {
    let node = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    let volume = match claim {
        Some(c) => format!("persistentVolumeClaim: {{claimName: {c}}}"),
        None => "emptyDir: {}".into(),
    };
    serde_yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: db}}
spec:
  hostname: {name}
  subdomain: rs0
{node}  containers: [{{name: mongod, image: mongo:7, volumeMounts: [{{name: data, mountPath: /data/db}}]}}]
  volumes:
  - name: data
    {volume}
status: {{phase: Running, podIP: 10.1.2.3}}"
    ))
    .expect("member pod fixture")
}

/// Snapshot `name` of job rs0 scheduled for `scheduled` (its annotation), in `phase` (none:
/// no status yet), with pod `pod` if it has one.
pub fn scheduled_snapshot(
    name: &str,
    scheduled: &str,
    phase: Option<RunPhase>,
    pod: Option<&str>,
) -> Snapshot {
    let mut s = snapshot(name, scheduled);
    s.metadata.creation_timestamp = None;
    s.metadata.annotations = Some(
        [(
            crate::controller::names::SCHEDULED_TIME.to_string(),
            scheduled.to_string(),
        )]
        .into(),
    );
    s.status = phase.map(|phase| SnapshotStatus {
        phase,
        pod_name: pod.map(String::from),
        ..Default::default()
    });
    s
}

/// PersistentVolumeClaim `name` in namespace db (uid `uid-NAME`).
pub fn claim(name: &str) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    serde_yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: db, uid: uid-{name}}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}"
    ))
    .expect("claim fixture")
}

/// Secret `name` in namespace db holding one entry, `key`.
pub fn secret(name: &str, key: &str) -> k8s_openapi::api::core::v1::Secret {
    serde_yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: db}}\ndata: {{{key}: c2VjcmV0}}"
    ))
    .expect("secret fixture")
}

/// [`snapshot`] `name` of job rs0, Succeeded as repository snapshot `id`.
pub fn succeeded_snapshot(name: &str, id: &str) -> Snapshot {
    let mut s = snapshot(name, "2026-11-27T03:00:00Z");
    s.status = Some(SnapshotStatus {
        phase: RunPhase::Succeeded,
        repository_snapshot_id: Some(id.into()),
        ..Default::default()
    });
    s
}

/// StatefulSet `name` in namespace db (the replica set a job copies from).
pub fn stateful_set(name: &str) -> k8s_openapi::api::apps::v1::StatefulSet {
    serde_yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: db}}
spec: {{selector: {{matchLabels: {{app: {name}}}}}, serviceName: {name}, template: {{metadata: {{labels: {{app: {name}}}}}, spec: {{containers: [{{name: mongod, image: mongo:7}}]}}}}}}"
    ))
    .expect("StatefulSet fixture")
}
