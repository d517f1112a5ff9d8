//! Snapshot: one run of a BackupJob.
// kube-derive repeats `printcolumn(name, type_, ...)` per column; clippy reads that as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::common::{LocalRef, Progress};

/// The repository tag naming a snapshot's BackupJob (NAMESPACE/NAME): retention is scoped by
/// it, and a BackupJob applied in a new cluster imports the snapshots carrying it.
pub const JOB_TAG: &str = "backupjob";
/// The repository tag saying what started a snapshot: the job's schedule, or a user.
pub const TRIGGER_TAG: &str = "trigger";
pub const TRIGGER_SCHEDULE: &str = "schedule";
pub const TRIGGER_ON_DEMAND: &str = "on-demand";
/// The repository tag naming the cluster whose operator took a snapshot.
pub const CLUSTER_TAG: &str = "cluster";
/// The repository tag naming how a snapshot's copy was made consistent (its
/// status.capture.mode).
pub const CAPTURE_TAG: &str = "capture";

/// One encrypted snapshot of a BackupJob's source: created by the schedule, or by hand for an
/// on-demand run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "snapcrypt.dev",
    version = "v1alpha1",
    kind = "Snapshot",
    namespaced,
    status = "SnapshotStatus",
    shortname = "snap",
    category = "snapcrypt",
    doc = "One encrypted snapshot of a BackupJob's MongoDB data volume.",
    printcolumn(name = "Job", type_ = "string", json_path = ".spec.backupJobRef.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progressSummary"
    ),
    printcolumn(name = "Member", type_ = "string", json_path = ".status.member.pod"),
    printcolumn(
        name = "Size",
        type_ = "string",
        json_path = ".status.stats.logicalSize"
    ),
    printcolumn(name = "Key", type_ = "string", json_path = ".status.keyId"),
    printcolumn(
        name = "Consistent",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Consistent\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("Snapshot spec is immutable: create a new Snapshot instead"))]
pub struct SnapshotSpec {
    /// The BackupJob this snapshot runs. Immutable.
    pub backup_job_ref: LocalRef,
    /// Tags recorded in the repository's manifest of this snapshot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Lifecycle phase of a Snapshot or Restore.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunPhase {
    /// Waiting to start (a member is being chosen, or another run of the job is in progress).
    #[default]
    Pending,
    /// Writes on the member are being locked (fsyncLock) before its volume is snapshotted or
    /// copied.
    Quiescing,
    /// A Snapshot in mode volumeSnapshot: the member's data volume is being snapshotted (CSI
    /// VolumeSnapshot), before the copy. Restores never use it.
    SnapshottingVolume,
    /// The pod is copying data.
    Running,
    /// Finished; the data is in the repository (or restored) and verified.
    Succeeded,
    /// Gave up; see message and conditions.
    Failed,
}

/// The replica-set member a snapshot copied from, and why it was chosen.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberChoice {
    /// The member pod.
    pub pod: String,
    /// The node the member and the snapshot pod ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The member's role when chosen (PRIMARY, SECONDARY, or UNKNOWN without a connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Why this member was chosen.
    pub reason: String,
}

/// What a finished snapshot holds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStats {
    /// Files in the snapshot.
    pub files: u64,
    /// Bytes of the source files.
    pub logical_bytes: u64,
    /// Logical size in human units, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_size: Option<String>,
    /// Bytes this snapshot added to the repository (new chunks, compressed and encrypted).
    pub stored_bytes: u64,
    /// Logical bytes divided by bytes added.
    pub dedup_ratio: f64,
}

/// What the operator last saw of a Snapshot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: RunPhase,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (the snapshot exists and is restorable), Progressing, Failed, and Consistent
    /// (whether mongod can recover from the copy: False for copies of live files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Human-readable detail of the phase; on failure, the snapshot pod's own message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The member copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<MemberChoice>,
    /// Name of the snapshot pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Attempts made so far (the first run is attempt 1).
    #[serde(default)]
    pub attempts: u32,
    /// When copying started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the snapshot succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Progress while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Progress as one short line, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_summary: Option<String>,
    /// How the current attempt captured the data volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureStatus>,
    /// Totals once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SnapshotStats>,
    /// The snapshot's id inside the repository (what `snapcrypt restore --snapshot` takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_snapshot_id: Option<String>,
    /// The master key this snapshot's data key is wrapped under: it must stay in the key server
    /// while the snapshot is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Written by the snapshot agent, not the operator: its result, reported as soon as the
    /// backup is complete and before its retention pass. If the pod then ends without its
    /// termination message (stopped at spec.placement.runTimeout, killed, its node lost), the
    /// operator takes this result for that pod, and the Snapshot is Succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_result: Option<AgentResult>,
}

/// A snapshot agent's result, as the agent reported it through the API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentResult {
    /// The snapshot pod that reported it; the operator reads it for that pod only.
    pub pod: String,
    /// The agent's result line (JSON), as its termination message would hold it.
    pub result: String,
}

/// How a Snapshot's data volume was captured.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaptureStatus {
    /// volumeSnapshot, fsyncLock or stoppedMember (spec.source.consistency.mode).
    #[schemars(with = "String")]
    pub mode: CaptureMode,
    /// The attempt this capture belongs to.
    pub attempt: u32,
    /// The CSI VolumeSnapshot of the member's data claim (mode volumeSnapshot); deleted once
    /// the Snapshot finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot: Option<String>,
    /// The temporary claim restored from the VolumeSnapshot, which the snapshot pod reads;
    /// deleted once the Snapshot finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_claim: Option<String>,
    /// The instant the data is from: the VolumeSnapshot's creationTime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<Time>,
    /// The VolumeSnapshot, the restored claim and the pods that read it have been deleted
    /// (the Snapshot has finished).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// The fsync lock on the member (mode fsyncLock, or quiesce fsyncLock): when it was
    /// taken and released, and for how long writes were held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockStatus>,
}

/// How an attempt captures the member's data: serialised as the names of
/// spec.source.consistency.mode (the status schema keeps a string).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CaptureMode {
    /// From a CSI VolumeSnapshot's cut.
    VolumeSnapshot,
    /// While the member is fsyncLocked.
    FsyncLock,
    /// The files as they are (consistent only if the member is stopped).
    #[default]
    StoppedMember,
    /// A name this version does not know (written by another version): read, never written.
    #[serde(other)]
    Unknown,
}

/// An fsync lock on a member, as the operator took and released it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LockStatus {
    /// The member pod locked.
    pub member: String,
    /// Locking (asked for), Locked, Released, Failed (not taken, or ended early), Recovered
    /// (its holder was lost and the operator unlocked the member), or UnlockFailed.
    pub state: LockState,
    /// The member's lock count before this lock (another client's locks are not ours to
    /// release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_before: Option<i64>,
    /// When the lock was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_at: Option<Time>,
    /// When it was released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
    /// How long writes were held, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_seconds: Option<f64>,
    /// How the lock ended, when not as planned (an overrun, an election, an unlock failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where an fsync lock is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockState {
    /// Asked for: the member may be locked from here on.
    #[default]
    Locking,
    /// Held.
    Locked,
    /// Released by its holder.
    Released,
    /// Not taken, or ended before the cut or copy did (maxLockSeconds, an election, the
    /// member lost): released, and the attempt failed (see message).
    Failed,
    /// Its holder was lost (the operator restarted) and the operator unlocked the member.
    Recovered,
    /// Releasing failed: the member may still be locked (see message).
    UnlockFailed,
}

impl LockState {
    /// Whether the member may still be locked by this lock.
    pub fn may_be_held(self) -> bool {
        matches!(
            self,
            LockState::Locking | LockState::Locked | LockState::UnlockFailed
        )
    }
}

impl Snapshot {
    /// Whether the snapshot has started (its volume is being snapshotted, it is copying, or it
    /// is about to: its pod exists).
    pub fn has_started(&self) -> bool {
        self.status.as_ref().is_some_and(|st| {
            matches!(
                st.phase,
                RunPhase::Running | RunPhase::SnapshottingVolume | RunPhase::Quiescing
            ) || (st.phase == RunPhase::Pending && st.pod_name.is_some())
        })
    }
}

#[cfg(test)]
mod capture_mode_tests {
    use super::*;

    /// #30: the typed mode is written as the names status always had, and a name another
    /// version wrote is read (as Unknown), never a Snapshot the watcher cannot decode.
    #[test]
    fn capture_modes_keep_their_names_and_unknown_ones_are_read() {
        for (mode, name) in [
            (CaptureMode::VolumeSnapshot, "volumeSnapshot"),
            (CaptureMode::FsyncLock, "fsyncLock"),
            (CaptureMode::StoppedMember, "stoppedMember"),
        ] {
            assert_eq!(serde_json::to_value(mode).unwrap(), serde_json::json!(name));
            assert_eq!(
                serde_json::from_value::<CaptureMode>(name.into()).unwrap(),
                mode
            );
        }
        let c: CaptureStatus = serde_json::from_value(
            serde_json::json!({"mode": "snapshotOfTheFuture", "attempt": 1}),
        )
        .unwrap();
        assert_eq!(c.mode, CaptureMode::Unknown);
    }
}
