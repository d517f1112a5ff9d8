//! Restore: bring a Snapshot back into a volume.
// kube-derive repeats `printcolumn(name, type_, ...)` per column; clippy reads that as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{LocalRef, Progress};
use super::snapshot::RunPhase;
use super::verification::{CheckContainer, CheckResult};

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
    /// Read every restored file back and compare it with the snapshot (contents chunk by
    /// chunk, size, mode) before the restore counts as done.
    #[serde(default)]
    pub verify_restored: bool,
    /// A container run on the restored volume once the restore is done; its exit code and
    /// termination message are the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckContainer>,
}

/// A directory on a PersistentVolumeClaim to restore into.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.deleteExtra || self.force").message("target: deleteExtra needs force (it removes what a non-empty target holds that the snapshot does not)"))]
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
    /// With force: remove what the target holds that the snapshot does not (another
    /// collection's files, a stale journal), so that it holds exactly the snapshot, as a
    /// member restored in place must. Without it such a target fails the restore, naming
    /// what is extra, and nothing is written.
    #[serde(default)]
    pub delete_extra: bool,
    /// Create the claim for this restore, and delete it once the restore and its check are
    /// over, whatever happened (a restore test). The claim must not exist yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<ScratchClaim>,
}

/// A claim the operator creates for one Restore and deletes afterwards.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScratchClaim {
    /// Its StorageClass; absent means the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Its size.
    pub size: Quantity,
}

/// The check container's run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    /// The check pod.
    pub pod: String,
    /// Running, Succeeded, or Failed.
    #[serde(default)]
    pub result: CheckResult,
    /// Its termination message, or what Kubernetes said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
    /// The check container's run (spec.check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckStatus>,
    /// The scratch claim (spec.target.scratch) was deleted.
    #[serde(default)]
    pub scratch_claim_deleted: bool,
}
