//! The Snapshot object a BackupJob creates for one scheduled run. Pure.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::backup_job::SnapshotDeletionPolicy;
use crate::api::common::LocalRef;
use crate::api::{BackupJob, Snapshot, SnapshotSpec};
use crate::controller::names::{
    MADE_BY_JOB_UID, SCHEDULED_TIME, job_labels, scheduled_snapshot_name,
};

/// The Snapshot for the run scheduled at `scheduled`: named `<job>-<yyyymmddhhmm>`, carrying
/// the scheduled time and the job's uid, owned by the job only with snapshotDeletionPolicy
/// Delete (an owner reference is what makes the API server delete it with the job). None if
/// the job has no uid yet (never from the API).
pub fn scheduled_snapshot(job: &BackupJob, scheduled: jiff::Timestamp) -> Option<Snapshot> {
    let name = scheduled_snapshot_name(&job.name_any(), scheduled);
    let mut tags = BTreeMap::new();
    tags.insert("backup-job".to_string(), job.name_any());
    tags.insert("scheduled".to_string(), scheduled.to_string());
    let annotations = BTreeMap::from([(SCHEDULED_TIME.to_string(), scheduled.to_string())]);
    job_snapshot(job, name, annotations, true, tags)
}

/// A Snapshot of `job` named `name`, with the job's labels and these annotations and tags;
/// one `made_by_job` (its schedule's, not a user's) carries the job's uid and, with
/// snapshotDeletionPolicy Delete, the job as its owner. None if the job has no uid. Pure.
pub fn job_snapshot(
    job: &BackupJob,
    name: String,
    mut annotations: BTreeMap<String, String>,
    made_by_job: bool,
    tags: BTreeMap<String, String>,
) -> Option<Snapshot> {
    let owner = job.controller_owner_ref(&())?;
    let mut owners = None;
    if made_by_job {
        annotations.insert(MADE_BY_JOB_UID.to_string(), owner.uid.clone());
        if job.spec.snapshot_deletion_policy == SnapshotDeletionPolicy::Delete {
            owners = Some(vec![owner]);
        }
    }
    Some(Snapshot {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: job.namespace(),
            labels: Some(job_labels(&job.name_any())),
            annotations: Some(annotations),
            owner_references: owners,
            ..Default::default()
        },
        spec: SnapshotSpec {
            backup_job_ref: LocalRef {
                name: job.name_any(),
            },
            tags,
        },
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_after_the_scheduled_minute_and_owned_by_the_job() {
        let job: BackupJob = serde_yaml::from_str(
            r#"
apiVersion: snapcrypt.dev/v1alpha1
kind: BackupJob
metadata: {name: rs0-nightly, namespace: mongodb, uid: 0b7c1f0e-0000-4000-8000-000000000001}
spec:
  source: {statefulSetName: rs0, dataVolumeName: data, syncSource: {mode: member, member: rs0-1}}
  destination: {pvc: {claimName: backups}}
  encryption: {localKeySecret: {name: k}}
"#,
        )
        .expect("yaml");
        let t: jiff::Timestamp = "2026-11-27T03:00:00Z".parse().expect("time");
        let s = scheduled_snapshot(&job, t).expect("snapshot");
        assert_eq!(s.name_any(), "rs0-nightly-202611270300");
        assert_eq!(s.namespace().as_deref(), Some("mongodb"));
        assert_eq!(s.spec.backup_job_ref.name, "rs0-nightly");
        assert_eq!(s.annotations()[SCHEDULED_TIME], "2026-11-27T03:00:00Z");
        assert_eq!(s.labels()["snapcrypt.dev/backup-job"], "rs0-nightly");
        assert_eq!(
            s.annotations()[MADE_BY_JOB_UID],
            "0b7c1f0e-0000-4000-8000-000000000001"
        );
        // Retain (the default): no owner, so deleting the job leaves the Snapshot.
        assert!(s.owner_references().is_empty());
        let mut deleting = job.clone();
        deleting.spec.snapshot_deletion_policy = SnapshotDeletionPolicy::Delete;
        let s = scheduled_snapshot(&deleting, t).expect("snapshot");
        let owner = &s.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("BackupJob", "rs0-nightly", Some(true))
        );
        // Without a uid (not from the API server) there is no owner to name.
        let mut unsaved = job.clone();
        unsaved.metadata.uid = None;
        assert!(scheduled_snapshot(&unsaved, t).is_none());
    }
}
