//! A BackupJob's copies (spec.copies[]): second repositories, each under its own master key,
//! that the job's snapshots are copied into (`snapcrypt agent copy` in a copy pod), and what
//! the job's status says of each.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::backup_job::{Encryption, Retention, Schedule};
use super::destination::Destination;
use super::verification::CheckResult;

/// A second repository the job's snapshots are copied into: the same encrypted data (nothing
/// is re-encrypted), its data keys wrapped by the copy's own master key, so the copy restores
/// with that key alone and survives the loss of the primary repository, its bucket or its
/// credentials. Each copy runs as a copy pod (the job's agent identity), never two of one
/// copy at once, holding a reader's lock on the primary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CopySpec {
    /// The copy's name, unique in the job: a DNS label (it names the copy's pods, its entry in
    /// status.copies and the `copy` label of its metrics).
    #[schemars(length(min = 1, max = 40))]
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Where the copy lives: exactly one of `pvc`, `s3`, `gcs` and `azure`, with its own
    /// credentials; not the job's own destination.
    pub destination: Destination,
    /// The copy's master key: exactly one of `kmipServerRef` and `localKeySecret`. Another key
    /// (a second KMIP server, or another key file) than the job's is the point of a copy; the
    /// same one is allowed.
    pub encryption: Encryption,
    /// Which of the job's snapshots the copy keeps, applied to the copy alone after each
    /// copy run (snapshots it would forget are not copied); absent: the job's own retention
    /// (none: the copy keeps every snapshot it receives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// When to copy; absent: after each successful Snapshot of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// One copy, as status reports it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CopyStatus {
    /// The copy (spec.copies[].name).
    pub name: String,
    /// How the last run that ended went (Running while the first runs).
    #[serde(default)]
    pub result: CheckResult,
    /// The newest Snapshot of the job the copy is known to hold: the one the last
    /// successful run was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_copied_snapshot: Option<String>,
    /// When that Snapshot completed (lag counts the successful Snapshots completed since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_copied_snapshot_time: Option<Time>,
    /// When the last successful run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_copy_time: Option<Time>,
    /// Successful Snapshots of the job newer than lastCopiedSnapshot (all of them, when the
    /// copy holds none yet): how many runs the copy is behind.
    #[serde(default)]
    pub lag: u64,
    /// The copy pod running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_pod: Option<String>,
    /// Copy runs started so far.
    #[serde(default)]
    pub runs: u64,
    /// Runs that failed since the last success.
    #[serde(default)]
    pub consecutive_failures: u64,
    /// Snapshots the last run that ended sent.
    #[serde(default)]
    pub snapshots_copied: u64,
    /// Packs the last run that ended sent.
    #[serde(default)]
    pub packs_copied: u64,
    /// Bytes the last run that ended sent.
    #[serde(default)]
    pub bytes_copied: u64,
    /// The master key the copy's key records are wrapped under (from the last success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The copy's repository id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    /// Why the copy cannot run now (a Secret, claim or KmipServer of its spec is missing);
    /// absent when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// Why the last run failed (absent after a success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// The Snapshot the last run that ended was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_snapshot: Option<String>,
    /// The pod of the last run that ended (kept for its logs until the next run ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_pod: Option<String>,
    /// With retention.credentialsSecret: the copy's retention pods' runs (its copy pods then
    /// do not prune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<super::retention::RetentionRun>,
}
