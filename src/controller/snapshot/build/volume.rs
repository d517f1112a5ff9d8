//! Mode volumeSnapshot, pure: the CSI VolumeSnapshot of the member's data claim, the temporary
//! claim restored from it (the snapshot pod reads that one), and what a VolumeSnapshot's status
//! means. The VolumeSnapshot API (snapshot.storage.k8s.io/v1) is not in k8s-openapi: it is
//! handled as a dynamic object, and only the fields below are read.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::pod::{PodError, RunAs};
use crate::api::Snapshot;
use crate::api::snapshot::MemberChoice;
use crate::controller::names::{
    ATTEMPT_LABEL, MEMBER_ANNOTATION, MEMBER_REASON_ANNOTATION, MEMBER_ROLE_ANNOTATION,
    SNAPSHOT_UID_LABEL, job_labels, pod_name,
};

/// The VolumeSnapshot API group.
pub const GROUP: &str = "snapshot.storage.k8s.io";
/// The member's node and the user its mongod runs as, kept on the VolumeSnapshot so later
/// reconciles (and a restarted operator) need not choose again.
pub const NODE_ANNOTATION: &str = "snapcrypt.dev/member-node";
pub const RUN_AS_ANNOTATION: &str = "snapcrypt.dev/run-as";

/// The VolumeSnapshot resource.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

/// The VolumeSnapshot of attempt `attempt`: named as its pod.
pub fn volume_snapshot_name(snapshot: &str, attempt: u32) -> String {
    pod_name(snapshot, attempt)
}

/// The claim restored from attempt `attempt`'s VolumeSnapshot.
pub fn clone_claim_name(snapshot: &str, attempt: u32) -> String {
    format!("{}-clone", pod_name(snapshot, attempt))
}

/// Labels and owner of what an attempt creates besides its pod.
fn attempt_meta(snap: &Snapshot, attempt: u32, name: String) -> Result<ObjectMeta, PodError> {
    let owner = snap.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = snap.uid().ok_or(PodError::NoOwner)?;
    let job = &snap.spec.backup_job_ref.name;
    let mut labels = job_labels(job);
    labels.insert("app.kubernetes.io/name".into(), "snapcrypt".into());
    labels.insert("app.kubernetes.io/component".into(), "snapshot".into());
    labels.insert(SNAPSHOT_UID_LABEL.into(), uid);
    labels.insert(ATTEMPT_LABEL.into(), attempt.to_string());
    Ok(ObjectMeta {
        name: Some(name),
        namespace: snap.namespace(),
        labels: Some(labels),
        owner_references: Some(vec![owner]),
        ..Default::default()
    })
}

/// The VolumeSnapshot of the member's data claim `claim` for attempt `attempt`, with the
/// member's choice in its annotations.
pub fn volume_snapshot(
    snap: &Snapshot,
    attempt: u32,
    claim: &str,
    class: &str,
    member: &MemberChoice,
    run_as: RunAs,
) -> Result<DynamicObject, PodError> {
    let mut meta = attempt_meta(
        snap,
        attempt,
        volume_snapshot_name(&snap.name_any(), attempt),
    )?;
    let mut notes = BTreeMap::from([
        (MEMBER_ANNOTATION.to_string(), member.pod.clone()),
        (
            MEMBER_ROLE_ANNOTATION.to_string(),
            member.role.clone().unwrap_or_default(),
        ),
        (MEMBER_REASON_ANNOTATION.to_string(), member.reason.clone()),
        (
            RUN_AS_ANNOTATION.to_string(),
            format!("{}:{}", run_as.uid, run_as.gid),
        ),
    ]);
    if let Some(node) = &member.node {
        notes.insert(NODE_ANNOTATION.to_string(), node.clone());
    }
    meta.annotations = Some(notes);
    let mut obj = DynamicObject::new(&meta.name.clone().unwrap_or_default(), &api_resource());
    obj.metadata = meta;
    obj.data = json!({"spec": {
        "volumeSnapshotClassName": class,
        "source": {"persistentVolumeClaimName": claim},
    }});
    Ok(obj)
}

/// The claim restored from `vs`: the source claim's class and access modes, at least the
/// snapshot's restore size.
pub fn clone_claim(
    snap: &Snapshot,
    attempt: u32,
    vs: &DynamicObject,
    source: &PersistentVolumeClaim,
) -> Result<PersistentVolumeClaim, PodError> {
    let meta = attempt_meta(snap, attempt, clone_claim_name(&snap.name_any(), attempt))?;
    let spec = source.spec.clone().unwrap_or_default();
    let requested = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned();
    let size = restore_size(vs).or(requested);
    Ok(PersistentVolumeClaim {
        metadata: meta,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: spec.access_modes.clone(),
            storage_class_name: spec.storage_class_name.clone(),
            volume_mode: spec.volume_mode.clone(),
            data_source: Some(TypedLocalObjectReference {
                api_group: Some(GROUP.into()),
                kind: "VolumeSnapshot".into(),
                name: vs.name_any(),
            }),
            resources: size.map(|s| VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), s)])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// Where a VolumeSnapshot stands.
#[derive(Clone, Debug, PartialEq)]
pub enum VolumeState {
    /// Not ready yet.
    Pending,
    /// Ready to restore from; `cut` is its creationTime (the data's point in time).
    Ready { cut: Option<Time> },
    /// The snapshotter reported this error.
    Failed(String),
}

/// What `vs`'s status says. An error wins over readyToUse (the snapshotter may report both
/// while it retries).
pub fn volume_state(vs: &DynamicObject) -> VolumeState {
    let status = &vs.data["status"];
    if let Some(msg) = status["error"]["message"].as_str() {
        return VolumeState::Failed(msg.to_string());
    }
    if status["readyToUse"].as_bool() == Some(true) {
        let cut = status["creationTime"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(Time);
        return VolumeState::Ready { cut };
    }
    VolumeState::Pending
}

/// Whether the snapshotter is done cutting `vs`: its creationTime is set (the data's instant
/// is fixed, though an upload may go on), it is ready, or it failed. A lock for the cut may go.
pub fn cut_or_failed(vs: &DynamicObject) -> bool {
    let status = &vs.data["status"];
    status["creationTime"].is_string()
        || status["readyToUse"].as_bool() == Some(true)
        || status["error"]["message"].is_string()
}

/// What `vs` has been waiting for, judged against `timeout` at `now`: None while it may still
/// become ready, else the failure message.
pub fn overdue(vs: &DynamicObject, timeout: Duration, now: jiff::Timestamp) -> Option<String> {
    let created = vs.metadata.creation_timestamp.as_ref()?.0;
    let waited = now.duration_since(created).unsigned_abs();
    (waited > timeout).then(|| {
        format!(
            "VolumeSnapshot {} was not readyToUse after {}s (spec.source.consistency.volumeSnapshotTimeout)",
            vs.name_any(),
            timeout.as_secs()
        )
    })
}

/// The snapshot's restore size, when the snapshotter reported it.
fn restore_size(vs: &DynamicObject) -> Option<Quantity> {
    vs.data["status"]["restoreSize"]
        .as_str()
        .map(|s| Quantity(s.to_string()))
}

/// The member choice and the agent's user, as [`volume_snapshot`] recorded them.
pub fn recorded_member(vs: &DynamicObject) -> (MemberChoice, RunAs) {
    let a = vs.annotations();
    let get = |k: &str| a.get(k).cloned();
    let run_as = get(RUN_AS_ANNOTATION)
        .and_then(|s| {
            let (u, g) = s.split_once(':')?;
            Some(RunAs {
                uid: u.parse().ok()?,
                gid: g.parse().ok()?,
            })
        })
        .unwrap_or(RunAs {
            uid: crate::controller::agent::pod::MONGODB_UID,
            gid: crate::controller::agent::pod::MONGODB_UID,
        });
    let member = MemberChoice {
        pod: get(MEMBER_ANNOTATION).unwrap_or_default(),
        node: get(NODE_ANNOTATION),
        role: get(MEMBER_ROLE_ANNOTATION),
        reason: get(MEMBER_REASON_ANNOTATION).unwrap_or_default(),
    };
    (member, run_as)
}

/// The data claim a VolumeSnapshot was taken of.
pub fn source_claim(vs: &DynamicObject) -> Option<String> {
    vs.data["spec"]["source"]["persistentVolumeClaimName"]
        .as_str()
        .map(str::to_string)
}

/// The attempt a VolumeSnapshot or clone belongs to (its label).
pub fn attempt_of<K: Resource>(obj: &K) -> Option<u32> {
    obj.meta().labels.as_ref()?.get(ATTEMPT_LABEL)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;

    fn member() -> MemberChoice {
        MemberChoice {
            pod: "rs0-1".into(),
            node: Some("node-b".into()),
            role: Some("SECONDARY".into()),
            reason: "named in spec.source.syncSource.member".into(),
        }
    }

    fn with_status(mut vs: DynamicObject, status: serde_json::Value) -> DynamicObject {
        vs.data["status"] = status;
        vs
    }

    #[test]
    fn a_volume_snapshot_records_its_member_and_its_state() {
        let snap = fixtures::snapshot("rs0-202611270300", "2026-11-27T03:00:00Z");
        let run_as = RunAs {
            uid: 1001,
            gid: 2002,
        };
        let vs = volume_snapshot(&snap, 2, "mongo-data-rs0-1", "csi-snap", &member(), run_as)
            .expect("vs");
        assert_eq!(vs.name_any(), "rs0-202611270300-2");
        assert_eq!(
            vs.data["spec"]["source"]["persistentVolumeClaimName"],
            "mongo-data-rs0-1"
        );
        assert_eq!(vs.data["spec"]["volumeSnapshotClassName"], "csi-snap");
        assert_eq!(attempt_of(&vs), Some(2));
        assert_eq!(recorded_member(&vs), (member(), run_as));
        assert_eq!(source_claim(&vs).as_deref(), Some("mongo-data-rs0-1"));
        assert!(vs.owner_references().iter().any(|o| o.kind == "Snapshot"));

        assert_eq!(volume_state(&vs), VolumeState::Pending);
        let ready = with_status(
            vs.clone(),
            json!({"readyToUse": true, "creationTime": "2026-11-27T03:00:05Z", "restoreSize": "2Gi"}),
        );
        assert_eq!(
            volume_state(&ready),
            VolumeState::Ready {
                cut: Some(Time("2026-11-27T03:00:05Z".parse().expect("t")))
            }
        );
        let failed = with_status(
            vs.clone(),
            json!({"readyToUse": true, "error": {"message": "out of snapshot space"}}),
        );
        assert_eq!(
            volume_state(&failed),
            VolumeState::Failed("out of snapshot space".into())
        );

        let source: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "mongo-data-rs0-1"},
            "spec": {"accessModes": ["ReadWriteOncePod"], "storageClassName": "fast",
                     "resources": {"requests": {"storage": "1Gi"}}}}))
        .expect("pvc");
        let clone = clone_claim(&snap, 2, &ready, &source).expect("clone");
        assert_eq!(clone.name_any(), "rs0-202611270300-2-clone");
        let spec = clone.spec.expect("spec");
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.access_modes,
            Some(vec!["ReadWriteOncePod".to_string()])
        );
        assert_eq!(
            spec.data_source.map(|d| (d.kind, d.name)),
            Some(("VolumeSnapshot".into(), "rs0-202611270300-2".into()))
        );
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned());
        assert_eq!(size, Some(Quantity("2Gi".into())), "the restore size wins");
    }

    #[test]
    fn a_volume_snapshot_not_ready_in_time_is_overdue() {
        let snap = fixtures::snapshot("s", "2026-11-27T03:00:00Z");
        let mut vs =
            volume_snapshot(&snap, 1, "c", "k", &member(), RunAs { uid: 1, gid: 1 }).expect("vs");
        vs.metadata.creation_timestamp = Some(Time("2026-11-27T03:00:00Z".parse().expect("t")));
        let at = |t: &str| t.parse::<jiff::Timestamp>().expect("t");
        let limit = Duration::from_secs(600);
        assert_eq!(overdue(&vs, limit, at("2026-11-27T03:09:59Z")), None);
        let msg = overdue(&vs, limit, at("2026-11-27T03:10:01Z")).expect("overdue");
        assert!(
            msg.starts_with("VolumeSnapshot s-1 was not readyToUse after 600s"),
            "{msg}"
        );
    }
}
