//! An imported Snapshot: one a BackupJob's catalog made for a snapshot its repository already
//! held (a cluster rebuilt from its manifests). Nothing runs for it: its status is what the
//! repository says, written once from the entry its annotation carries. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::api::catalog::{CatalogEntry, IMPORTED_ANNOTATION};
use crate::api::snapshot::{
    CAPTURE_TAG, CLUSTER_TAG, CaptureMode, CaptureStatus, MemberChoice, RunPhase, SnapshotStatus,
};
use crate::api::{Snapshot, agent::SnapshotResult};
use crate::controller::conditions::{Cond, CondType, merge};
use crate::controller::reason::Reason;

/// The status of an imported Snapshot, if `snap` is one and has none yet.
pub fn imported_status(snap: &Snapshot, now: jiff::Timestamp) -> Option<SnapshotStatus> {
    let entry: CatalogEntry =
        serde_json::from_str(snap.annotations().get(IMPORTED_ANNOTATION)?).ok()?;
    let prev = snap.status.clone().unwrap_or_default();
    let time = |t: &str| t.parse::<jiff::Timestamp>().ok().map(Time);
    let cluster = entry
        .tags
        .get(CLUSTER_TAG)
        .map(|c| format!(" by cluster {c}"))
        .unwrap_or_default();
    let message = format!(
        "imported from the repository: snapshot {} taken at {}{cluster}; restorable as any other",
        entry.id, entry.time
    );
    let mode = match entry.tags.get(CAPTURE_TAG).map(String::as_str) {
        Some("volumeSnapshot") => Some(CaptureMode::VolumeSnapshot),
        Some("fsyncLock") => Some(CaptureMode::FsyncLock),
        Some("stoppedMember") => Some(CaptureMode::StoppedMember),
        _ => None,
    };
    let consistent = match mode {
        Some(CaptureMode::VolumeSnapshot) => Cond::new(
            CondType::Consistent,
            true,
            Reason::VolumeSnapshotCut,
            "copied from a VolumeSnapshot (as the repository records it)",
        ),
        Some(CaptureMode::FsyncLock) => Cond::new(
            CondType::Consistent,
            true,
            Reason::CopiedUnderLock,
            "copied while the member was fsyncLocked (as the repository records it)",
        ),
        Some(CaptureMode::StoppedMember) => Cond::new(
            CondType::Consistent,
            false,
            Reason::CopiedLive,
            "copied as the files were (mode stoppedMember, as the repository records it): consistent only if the member was stopped",
        ),
        _ => Cond::unknown(
            CondType::Consistent,
            Reason::Imported,
            "the repository does not record how this snapshot was captured",
        ),
    };
    let conds = vec![
        Cond::new(CondType::Ready, true, Reason::Imported, &message),
        Cond::new(CondType::Progressing, false, Reason::Finished, ""),
        Cond::new(CondType::Failed, false, Reason::NotFailed, ""),
        consistent,
    ];
    let stats = super::build::status::stats(&SnapshotResult {
        id: entry.id.clone(),
        files: entry.files,
        logical_bytes: entry.logical_bytes,
        stored_bytes: entry.stored_bytes,
        key_id: entry.key_id.clone(),
        retention: None,
    });
    Some(SnapshotStatus {
        phase: RunPhase::Succeeded,
        observed_generation: snap.metadata.generation,
        conditions: merge(
            &prev.conditions,
            &conds,
            snap.metadata.generation,
            &Time(now),
        ),
        message: Some(message),
        member: entry.tags.get("member").map(|m| MemberChoice {
            pod: m.clone(),
            node: None,
            role: None,
            reason: "imported: the member the repository records".into(),
        }),
        start_time: time(&entry.time),
        completion_time: time(&entry.finished),
        capture: mode.map(|mode| CaptureStatus {
            mode,
            released: true,
            ..Default::default()
        }),
        stats: Some(stats),
        repository_snapshot_id: Some(entry.id),
        key_id: Some(entry.key_id),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #31: an imported Snapshot's status is the repository's record: Succeeded and Ready
    /// (Imported), its sizes, key, times, member and capture; Consistent as the capture tag
    /// says. A Snapshot without the annotation is not one.
    #[test]
    fn an_imported_snapshot_reads_as_the_repository_records_it() {
        let entry = serde_json::json!({
            "id": "aaa111", "time": "2026-12-01T03:00:00Z", "finished": "2026-12-01T03:01:00Z",
            "files": 12, "logicalBytes": 4096, "storedBytes": 1024, "keyId": "kmip-key-7",
            "tags": {"backupjob": "db/rs0", "member": "rs0-1", "cluster": "old", "capture": "fsyncLock"}
        });
        let mut snap = crate::controller::fixtures::snapshot("rs0-1", "2026-12-07T10:00:00Z");
        assert_eq!(
            imported_status(&snap, "2026-12-07T10:00:00Z".parse().unwrap()),
            None
        );
        snap.metadata.annotations =
            Some([(IMPORTED_ANNOTATION.to_string(), entry.to_string())].into());
        let st = imported_status(&snap, "2026-12-07T10:00:00Z".parse().unwrap()).expect("status");
        assert_eq!(st.phase, RunPhase::Succeeded);
        assert_eq!(st.repository_snapshot_id.as_deref(), Some("aaa111"));
        assert_eq!(st.key_id.as_deref(), Some("kmip-key-7"));
        assert_eq!(
            st.stats.as_ref().map(|s| (s.files, s.stored_bytes)),
            Some((12, 1024))
        );
        assert_eq!(st.member.as_ref().map(|m| m.pod.as_str()), Some("rs0-1"));
        assert_eq!(
            st.capture.as_ref().map(|c| c.mode),
            Some(CaptureMode::FsyncLock)
        );
        let cond = |t: &str| {
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .expect("condition");
            (c.status.clone(), c.reason.clone())
        };
        assert_eq!(cond("Ready"), ("True".into(), "Imported".into()));
        assert_eq!(
            cond("Consistent"),
            ("True".into(), "CopiedUnderLock".into())
        );
        assert!(
            st.message
                .unwrap_or_default()
                .contains("taken at 2026-12-01T03:00:00Z by cluster old")
        );
    }
}
