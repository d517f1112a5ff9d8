//! A BackupJob's catalog: the snapshots its repository already holds for it, imported as
//! Snapshot objects (a cluster rebuilt from Git gets its catalog back), and which cluster
//! writes them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::snapshot::RunPhase;

/// The label on a Snapshot made from the repository rather than by a run of this cluster.
pub const IMPORTED_LABEL: &str = "snapcrypt.dev/imported";
/// The annotation holding what the repository says of an imported Snapshot (a
/// [`CatalogEntry`] as JSON); the Snapshot controller writes its status from it.
pub const IMPORTED_ANNOTATION: &str = "snapcrypt.dev/imported-snapshot";
/// The key of the catalog ConfigMap the catalog pod writes its entries into.
pub const CATALOG_KEY: &str = "catalog.json";

/// What the last look at the repository for this job's snapshots found.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CatalogStatus {
    /// Pending (the catalog pod runs), Succeeded, or Failed (see message; tried again).
    #[serde(default)]
    pub phase: RunPhase,
    /// The destination read (a digest of spec.destination): a new destination is read again.
    pub destination: String,
    /// The catalog pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// When the repository was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Snapshots of this job the repository holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<u64>,
    /// Snapshot objects created for those this cluster had none of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<u64>,
    /// The cluster that writes this job's snapshots, as the repository names it (none: no
    /// cluster has written any yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// This cluster, as the operator names it (its --cluster-id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub this_cluster: Option<String>,
    /// Why the catalog could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One snapshot of a job, as the catalog pod read it from the repository.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CatalogEntry {
    pub id: String,
    /// When it was taken and finished (RFC 3339).
    pub time: String,
    pub finished: String,
    pub files: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    /// The master key its data key is wrapped under.
    pub key_id: String,
    /// Its repository tags (backupjob, trigger, snapshot, member, cluster, capture, users').
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The catalog pod's result line (its termination message).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CatalogResult {
    /// Entries written into the catalog ConfigMap.
    pub found: u64,
    /// The cluster that writes the job's snapshots (owners/ in the repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}
