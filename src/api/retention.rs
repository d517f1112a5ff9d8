//! What a BackupJob's retention pods (spec.retention.credentialsSecret, or a copy's) did, as
//! status reports it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::verification::CheckResult;

/// A repository's retention runs (the job's own, or a copy's): the last one that ended, and
/// the one running.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRun {
    /// How the last run that ended went (Running while the first runs).
    #[serde(default)]
    pub result: CheckResult,
    /// The Snapshot the last run that ended was started after (the job's newest successful
    /// one; for a copy, the newest one the copy held): the policy has been applied up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_snapshot: Option<String>,
    /// When the last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// The pod of the last run that ended (kept for its logs until the next run ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_pod: Option<String>,
    /// The retention pod running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_pod: Option<String>,
    /// Retention runs started so far.
    #[serde(default)]
    pub runs: u64,
    /// Runs that failed since the last success.
    #[serde(default)]
    pub consecutive_failures: u64,
    /// Snapshots of the job the last successful run kept.
    #[serde(default)]
    pub kept: u64,
    /// Snapshots the last successful run forgot (their Snapshot objects are deleted).
    #[serde(default)]
    pub forgotten: u64,
    /// Bytes the last successful run deleted.
    #[serde(default)]
    pub bytes_freed: u64,
    /// Why the last run failed (absent after a success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
