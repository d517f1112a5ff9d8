//! The data path's one error type, below every part that returns it (lock, repository,
//! backup, restore, verify, prune) and above the parts whose errors it wraps.

use crate::kms::KmsError;

/// Errors of the data path, each written for the person who runs the command.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no repository at {repo} (a backup creates one on first use)")]
    NoRepository { repo: String },
    #[error("repository object {object} is damaged: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("no snapshot matches {which:?} (list them with `snapcrypt snapshots`)")]
    NoSuchSnapshot { which: String },
    #[error(
        "the snapshots of BackupJob {job} in this repository are written by cluster {owner} (since {since}); this cluster is {this}, so its BackupJob only reads them (imported Snapshots, restores) and neither backs up nor applies retention: two clusters never prune each other's snapshots. If cluster {owner} is gone for good, set the BackupJob's spec.takeOverFrom: {owner}"
    )]
    OwnedElsewhere {
        job: String,
        owner: String,
        since: String,
        this: String,
    },
    #[error("copy from {from} to {to}: {reason}")]
    Copy {
        from: String,
        to: String,
        reason: String,
    },
    #[error("no snapshot to restore: {reason}")]
    NoSnapshotSelected { reason: String },
    #[error("{count} snapshots match {which:?}: give more of the id")]
    AmbiguousSnapshot { which: String, count: usize },
    #[error("source {path}: {reason}")]
    Source { path: String, reason: String },
    #[error(
        "source {path} holds {count} files, at or over the limit of --max-files {max} (MongoDB Cloud Manager refuses 100,000 or more by default): nothing was written; raise --max-files to back it up anyway"
    )]
    TooManyFiles { path: String, count: u64, max: u64 },
    #[error("restore target {path}: {reason}")]
    Target { path: String, reason: String },
    #[error(
        "repository is locked by {holder} (an exclusive lock expires {stale_after_secs} s after its holder stops refreshing it)"
    )]
    Locked {
        holder: String,
        stale_after_secs: u64,
    },
    #[error(
        "lost the repository lock {lock}: {why}; stopped before committing, so nothing already in the repository is affected: run it again"
    )]
    LockLost { lock: String, why: String },
    #[error(transparent)]
    Backend(#[from] super::backend::BackendError),
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error("data key record {object}: {source}")]
    KeyRecord { object: String, source: KmsError },
    #[error(transparent)]
    Crypto(#[from] super::crypto::CryptoError),
    #[error(transparent)]
    Pack(#[from] super::pack::PackError),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a worker thread failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Scratch(#[from] super::spill::SpillError),
}
