//! Restore: bring a Snapshot back into a volume.
// kube-derive repeats `printcolumn(name, type_, ...)` per column; clippy reads that as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::backup_job::Encryption;
use super::common::{LocalRef, Progress};
use super::destination::Destination;
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
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.snapshotId"),
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
#[x_kube(validation = Rule::new("has(self.snapshotRef) != has(self.source)").message("set exactly one of spec.snapshotRef (a Snapshot object in this namespace) or spec.source (a repository and a snapshot in it, for a cluster without the Snapshot objects)"))]
#[x_kube(validation = Rule::new("has(self.target) != has(self.targets)").message("set exactly one of spec.target (one claim) or spec.targets (several claims, such as every member of a replica set)"))]
pub struct RestoreSpec {
    /// The Snapshot to restore (it names its BackupJob, and so the repository and key).
    /// Exactly one of snapshotRef and source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_ref: Option<LocalRef>,
    /// A repository and a snapshot in it, with no Snapshot object or BackupJob needed (a
    /// cluster rebuilt after a disaster). Exactly one of snapshotRef and source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RestoreSource>,
    /// Where to write the files: one claim. Exactly one of target and targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RestoreTarget>,
    /// Several claims, each restored from the same snapshot by its own pod (every member of a
    /// replica set). Exactly one of target and targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<RestoreTargets>,
    /// Read every restored file back and compare it with the snapshot (contents chunk by
    /// chunk, size, mode) before the restore counts as done.
    #[serde(default)]
    pub verify_restored: bool,
    /// A container run on the restored volume once the restore is done; its exit code and
    /// termination message are the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckContainer>,
}

/// A repository and a snapshot in it: what a Restore needs when the cluster holds no Snapshot
/// objects (a new cluster after a disaster).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// The BackupJob whose snapshots to choose among, as the repository's tags name it: NAME
    /// (a job of this namespace) or NAMESPACE/NAME. The job itself need not exist.
    #[schemars(length(min = 1, max = 317))]
    pub backup_job: String,
    /// The repository, as a BackupJob's spec.destination names it.
    pub destination: Destination,
    /// Its key, as a BackupJob's spec.encryption names it.
    pub encryption: Encryption,
    /// latest (the default), a snapshot id (or a unique prefix), or before:TIME, the newest
    /// snapshot taken at or before an RFC 3339 time.
    #[serde(default = "latest")]
    #[schemars(length(min = 1, max = 128))]
    #[schemars(pattern(r"^(latest|[0-9a-fA-F]{1,64}|before:.+)$"))]
    pub snapshot: String,
    /// Only snapshots with every one of these repository tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// What an absent spec.target reads as (a Restore with spec.targets writes through the
/// Restores it makes, one per claim, each with a target).
static NO_TARGET: RestoreTarget = RestoreTarget {
    claim_name: String::new(),
    path: None,
    force: false,
    delete_extra: false,
    scratch: None,
};

impl RestoreSpec {
    /// The one claim written (spec.target; empty with spec.targets).
    pub fn one_target(&self) -> &RestoreTarget {
        self.target.as_ref().unwrap_or(&NO_TARGET)
    }

    /// The Snapshot object named (empty with spec.source).
    pub fn snapshot_name(&self) -> &str {
        self.snapshot_ref.as_ref().map_or("", |r| r.name.as_str())
    }
}

fn latest() -> String {
    "latest".into()
}

/// Several claims to restore into, the same snapshot into each, one pod per claim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.claimNames) && size(self.claimNames) > 0) != has(self.selector)").message("targets: set exactly one of claimNames (a list) or selector (the members' data claims by label)"))]
#[x_kube(validation = Rule::new("!self.deleteExtra || self.force").message("targets: deleteExtra needs force (it removes what a non-empty target holds that the snapshot does not)"))]
pub struct RestoreTargets {
    /// The claims, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub claim_names: Vec<String>,
    /// Or the claims of this namespace whose labels match (a StatefulSet's data claims carry
    /// its volumeClaimTemplates' labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// How many claims are restored at once.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 50))]
    pub parallelism: u32,
    /// Directory inside each claim, as spec.target.path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9_\-][A-Za-z0-9._\-]*(/[A-Za-z0-9_\-][A-Za-z0-9._\-]*)*$"))]
    pub path: Option<String>,
    /// As spec.target.force, for every claim.
    #[serde(default)]
    pub force: bool,
    /// As spec.target.deleteExtra, for every claim.
    #[serde(default)]
    pub delete_extra: bool,
}

fn default_parallelism() -> u32 {
    3
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
    /// The repository snapshot restored: the Snapshot's, or the one the restore pod chose
    /// for spec.source.snapshot (the pod writes it before restoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// With spec.targets: each claim's restore (a Restore of its own, owned by this one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberRestore>,
}

/// One claim of a Restore with spec.targets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberRestore {
    /// The claim.
    pub claim_name: String,
    /// The Restore that restores it (absent until it is started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// Its phase.
    #[serde(default)]
    pub phase: RunPhase,
    /// Its progress, as one short line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_summary: Option<String>,
    /// Its message (why it waits or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
