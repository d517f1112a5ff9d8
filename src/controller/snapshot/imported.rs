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
    let entry: CatalogEntry = serde_json::from_str(snap.annotations().get(IMPORTED_ANNOTATION)?).ok()?;
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
        conditions: merge(&prev.conditions, &conds, snap.metadata.generation, &Time(now)),
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
