//! Scheduled proof that a BackupJob's backups restore: reading a share of the repository's
//! packs (`readData`) and restoring the latest snapshot into a scratch claim, optionally with a
//! check container on the result (`restoreTest`). Types of the BackupJob and Restore specs and
//! of the BackupJob's status.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backup_job::Schedule;

/// What the operator checks on a schedule; absent (the default) checks nothing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Read a share of the repository's packs and authenticate every blob in them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data: Option<ReadData>,
    /// Restore the latest successful snapshot into a scratch claim and check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_test: Option<RestoreTest>,
    /// The repository both checks read: a copy's name (spec.copies[].name), so that the
    /// proof is of the off-site copy; absent: the job's own repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 40))]
    pub copy: Option<String>,
}

/// A scheduled read of part of the repository. The packs are split into `ceil(100 / percent)`
/// groups by their id; each run reads the next group, so every pack is read within that many
/// runs. A run that finds a damaged or missing object names it in the job's `DataVerified`
/// condition and in an Event.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReadData {
    /// When to run.
    pub schedule: Schedule,
    /// Share of the packs each run reads, 1 to 100.
    #[serde(default = "default_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: u8,
}

fn default_percent() -> u8 {
    10
}

/// A scheduled restore of the job's latest successful snapshot into a claim the operator
/// creates (and deletes afterwards, whatever happened), checked file by file against the
/// snapshot and then, optionally, by a check container. Never more than one at a time.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTest {
    /// When to run.
    pub schedule: Schedule,
    /// StorageClass of the scratch claim; absent means that of the source member's data claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Size of the scratch claim; absent means the source member's data claim's request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// A container run with the restored volume mounted; its exit code and termination
    /// message are the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckContainer>,
    /// How many finished restore-test Restores to keep (the newest), for their status.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 100))]
    pub keep: u32,
}

fn default_keep() -> u32 {
    3
}

/// Where a check container finds the restored volume.
pub const RESTORED_MOUNT: &str = "/restored";

/// A user's container that judges a restored volume, mounted at `/restored` (read-only unless
/// `writable`; the restored directory is in `$SNAPCRYPT_RESTORED_PATH`). For MongoDB: an
/// image that starts mongod on the files and runs `validate` (mongod recovers its journal, so
/// it needs `writable: true`). It runs as uid and gid 999 (mongod's), non-root, with a
/// read-only root filesystem, a writable `/tmp`, no API token. Exit 0 passes; anything else
/// fails, and its termination message (`/dev/termination-log`) is the Restore's message.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.env) || self.env.all(e, !has(e.valueFrom))").message("check.env: valueFrom is not allowed (the operator would read Secrets and ConfigMaps for whoever writes the check); give values inline"))]
pub struct CheckContainer {
    /// The image.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,
    /// Entrypoint; absent means the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment, values inline (`valueFrom` is refused: the operator would read
    /// Secrets and ConfigMaps of the namespace on behalf of whoever writes the check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Mount the restored volume read-write (mongod recovering its journal needs it);
    /// read-only by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writable: bool,
    /// Let the check pod open connections (to report somewhere, say). By default a
    /// NetworkPolicy the operator makes with the pod denies all its egress: the restored
    /// data never leaves through the check (where the cluster's network enforces policies).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_egress: bool,
    /// Resources of the check container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Longest the check may run, as a duration such as 30m; default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]+(s|m|h)$"))]
    pub timeout: Option<String>,
}

/// How a verification or restore test ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckResult {
    /// Started, not finished.
    #[default]
    Running,
    /// Everything checked was sound.
    Succeeded,
    /// Damage found, or the run could not finish; see the message.
    Failed,
}

/// The last scheduled read of the repository's data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerificationRun {
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The scheduled time it ran for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<Time>,
    /// Running, Succeeded, or Failed.
    #[serde(default)]
    pub result: CheckResult,
    /// Which group of packs it read, as `k/n`.
    pub subset: String,
    /// Packs read and checked.
    #[serde(default)]
    pub packs_read: u64,
    /// Packs in the repository.
    #[serde(default)]
    pub packs_total: u64,
    /// Bytes read.
    #[serde(default)]
    pub bytes_read: u64,
    /// Damaged or missing objects found.
    #[serde(default)]
    pub problem_count: u64,
    /// The first problems found, each naming the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// How long the run took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Why a run that could not finish failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The verify pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The last restore test.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTestRun {
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The Snapshot it restored.
    pub snapshot: String,
    /// The Restore that ran it (labelled snapcrypt.dev/restore-test=JOB).
    pub restore: String,
    /// Running, Succeeded, or Failed.
    #[serde(default)]
    pub result: CheckResult,
    /// From the Restore's creation to the check's end (claim, restore, read-back, check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// The Restore's message: on failure, what failed (the restore, or the check's own words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
