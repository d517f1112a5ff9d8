//! Restore: bring a Snapshot back into a volume.
// kube-derive repeats `printcolumn(name, type_, ...)` per column; clippy reads that as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{LocalRef, Progress};
use super::snapshot::RunPhase;

/// Restores one Snapshot into a PersistentVolumeClaim.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "snapcrypt.dev",
    version = "v1alpha1",
    kind = "Restore",
    namespaced,
    status = "RestoreStatus",
    shortname = "rst",
    category = "snapcrypt",
    doc = "Restores one Snapshot into a PersistentVolumeClaim.",
    printcolumn(
        name = "Snapshot",
        type_ = "string",
        json_path = ".spec.snapshotRef.name"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.claimName"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progressSummary"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("Restore spec is immutable: create a new Restore instead"))]
pub struct RestoreSpec {
    /// The Snapshot to restore (it names its BackupJob, and so the repository and key).
    pub snapshot_ref: LocalRef,
    /// Where to write the files.
    pub target: RestoreTarget,
}

/// A directory on a PersistentVolumeClaim to restore into.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// Name of the PersistentVolumeClaim to write to.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory inside the claim, relative, without `.` segments; absent means the claim's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9_\-][A-Za-z0-9._\-]*(/[A-Za-z0-9_\-][A-Za-z0-9._\-]*)*$"))]
    pub path: Option<String>,
    /// Overwrite a non-empty target directory. Without it a non-empty target fails the restore
    /// and nothing is written.
    #[serde(default)]
    pub force: bool,
}

/// What the operator last saw of a Restore.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: RunPhase,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (restored and verified), Progressing, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Human-readable detail of the phase; on failure, the restore pod's own message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Name of the restore pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When restoring started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the restore succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Progress while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Progress as one short line, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_summary: Option<String>,
}
