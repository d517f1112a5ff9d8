//! Types shared by the four kinds: references, progress, conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The API group of every snapcrypt kind.
pub const GROUP: &str = "snapcrypt.dev";
/// The API version of every snapcrypt kind.
pub const VERSION: &str = "v1alpha1";

/// A reference to another object in the same namespace, by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced object, in the same namespace as this one.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to one key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_key() -> String {
    "key".to_string()
}

/// How far a running snapshot or restore has come, as reported by its pod about every 2 s.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Bytes read (backup) or written (restore) so far.
    pub bytes_done: u64,
    /// Bytes to process in all, known once the source has been scanned.
    pub bytes_total: u64,
    /// Files finished so far.
    pub files_done: u64,
    /// Files to process in all.
    pub files_total: u64,
    /// Share of bytes done, 0 to 100.
    pub percent: f64,
    /// Throughput over the run so far, in bytes per second.
    pub bytes_per_second: u64,
    /// Estimated seconds until done at the current rate; absent while unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// When the pod last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// Condition list type used by every status, keyed by `type`.
pub type Conditions = Vec<Condition>;

/// Condition status strings, as Kubernetes spells them.
pub mod condition_status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}
