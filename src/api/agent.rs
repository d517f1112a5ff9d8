//! What an agent pod leaves in its termination message: one JSON result line on success, the
//! error message on failure. The agent (`cli/agent.rs`) writes it and the Snapshot and Restore
//! controllers read it; it is a contract between two builds of snapcrypt (an operator may read
//! the result of an older agent image), so fields are only ever added, with defaults.

use serde::{Deserialize, Serialize};

/// The result line of a successful `snapcrypt agent snapshot`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotResult {
    /// The snapshot's id in the repository.
    pub id: String,
    pub files: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    /// The master key the snapshot's data key is wrapped under.
    pub key_id: String,
    /// What the job's retention policy did after the backup (absent: no policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionResult>,
}

/// The result line of a `snapcrypt agent verify` that ran to its end, damage or not: damage
/// is in `problems`, and the pod exits 0 so that the line is read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResult {
    /// Packs in the repository.
    pub packs: u64,
    /// Packs read whole.
    pub packs_read: u64,
    pub bytes_read: u64,
    /// The group of packs read, `k/n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Problems found in all.
    pub problem_count: u64,
    /// The first [`MAX_PROBLEMS`] problems, each at most [`MAX_PROBLEM_LEN`] bytes.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Problems a verify result line names (the count says how many in all).
pub const MAX_PROBLEMS: usize = 8;
/// The longest problem kept in a verify result line.
pub const MAX_PROBLEM_LEN: usize = 300;

/// An agent's result from its termination message: the last non-empty line, as JSON. Shared
/// by the snapshot agent's [`SnapshotResult`] and the restore agent's `RestoreStats`.
pub fn parse_result_line<T: serde::de::DeserializeOwned>(message: &str) -> Option<T> {
    let line = message.lines().rev().find(|l| !l.trim().is_empty())?;
    serde_json::from_str(line.trim()).ok()
}

/// The outcome of the retention pass a snapshot pod runs after a successful backup. A failed
/// pass never fails the snapshot: the backup is complete and restorable either way.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionResult {
    /// Snapshots of the job kept.
    pub kept: usize,
    /// Ids of the snapshots forgotten, at most [`MAX_FORGOTTEN_IDS`] of them.
    #[serde(default)]
    pub forgotten: Vec<String>,
    /// How many were forgotten in all.
    pub forgotten_total: usize,
    pub bytes_freed: u64,
    /// Why the pass failed, if it did (the repository is unchanged or only partly pruned; the
    /// next run tries again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the result line says of a retention pass the pod did not live to finish.
pub const RETENTION_INTERRUPTED: &str = "retention did not finish: the snapshot pod stopped during it (killed at its memory limit, see \"Sizing agent pods\" in docs/OPERATIONS.md; stopped at spec.placement.runTimeout; or its node lost); the backup is complete, and the next run applies retention again";

/// Kubernetes keeps at most 4096 bytes of a termination message, and the result must stay one
/// whole JSON line: 64 ids of 32 hex digits take about 2.3 KiB.
pub const MAX_FORGOTTEN_IDS: usize = 64;
/// The longest retention error kept in the result line.
pub const MAX_RETENTION_ERROR: usize = 800;

impl SnapshotResult {
    /// Read a termination message: the last non-empty line must be the JSON result.
    pub fn parse(message: &str) -> Option<Self> {
        parse_result_line(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_noise() {
        let r = SnapshotResult {
            id: "3f2a".into(),
            files: 8,
            logical_bytes: 4_000_000,
            stored_bytes: 1_000_000,
            key_id: "local:ab12".into(),
            retention: None,
        };
        let line = serde_json::to_string(&r).expect("json");
        assert_eq!(SnapshotResult::parse(&format!("{line}\n")), Some(r.clone()));
        assert_eq!(
            SnapshotResult::parse(&format!("log line\n{line}\n\n")),
            Some(r)
        );
        assert_eq!(
            SnapshotResult::parse("snapcrypt: error: source /data: no such file"),
            None
        );
        assert_eq!(SnapshotResult::parse(""), None);
    }

    #[test]
    fn the_largest_result_fits_a_termination_message() {
        let r = SnapshotResult {
            id: "f".repeat(32),
            files: u64::MAX,
            logical_bytes: u64::MAX,
            stored_bytes: u64::MAX,
            key_id: "k".repeat(300),
            retention: Some(RetentionResult {
                kept: usize::MAX,
                forgotten: vec!["e".repeat(32); MAX_FORGOTTEN_IDS],
                forgotten_total: usize::MAX,
                bytes_freed: u64::MAX,
                error: Some("x".repeat(MAX_RETENTION_ERROR)),
            }),
        };
        let line = serde_json::to_string(&r).expect("json");
        assert!(line.len() < 4096 - 8, "{}", line.len());
        // Results from agents without retention still parse.
        let old = r#"{"id":"a","files":1,"logical_bytes":2,"stored_bytes":3,"key_id":"k"}"#;
        assert_eq!(SnapshotResult::parse(old).map(|r| r.retention), Some(None));
    }
}

/// The result line of a successful `snapcrypt agent copy` (a BackupJob's copy).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CopyResult {
    /// The copy's repository id.
    pub target_id: String,
    /// Whether this run created the copy's repository.
    #[serde(default)]
    pub created: bool,
    /// Snapshots sent by this run.
    pub snapshots_copied: u64,
    /// Snapshots the copy already held.
    pub already_there: u64,
    /// Snapshots of the primary the copy's retention would forget, not sent.
    #[serde(default)]
    pub outside_retention: u64,
    /// Packs sent by this run, and their bytes.
    pub packs_copied: u64,
    pub bytes_copied: u64,
    /// Key records written (data keys wrapped under the copy's master key).
    pub keys_written: u64,
    /// The master key the copy's key records are wrapped under.
    pub key_id: String,
    /// What the copy's retention pass did (absent: no policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionResult>,
}
