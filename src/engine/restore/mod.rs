//! Restore: read each needed pack once, open and check every blob (authentication and chunk
//! id), and write it to every place it belongs, on all cores; then set modes and mtimes.

mod plan;
mod target;
mod workers;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use self::plan::check_tree;
use super::EngineError;
use super::format::{EntryKind, SnapshotManifest};
use super::lock::{RepoLock, lock_wait};
use super::progress::Progress;
use super::repo::Repository;

/// Left in the target while a restore runs; its presence means the restore did not finish.
pub const INCOMPLETE_MARKER: &str = ".snapcrypt-restore-incomplete";

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Write into a non-empty target.
    pub force: bool,
    /// With `force`, remove what the target holds that the snapshot does not (else such a
    /// target is refused, naming what is extra).
    pub delete_extra: bool,
    pub threads: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            force: false,
            delete_extra: false,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreStats {
    pub snapshot: String,
    pub files: u64,
    pub bytes: u64,
    /// Set when the repository could not be locked (read-only to this reader), with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_without_lock: Option<String>,
}

/// Restore snapshot `snap` into `target`. Holds a shared repository lock while it reads, so
/// no prune removes what it needs; a repository it cannot write to is read without one (the
/// deletion grace protects it then), and the stats say so.
pub async fn restore(
    repo: &Repository,
    snap: &SnapshotManifest,
    target: &Path,
    opts: RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreStats, EngineError> {
    let (lock, unlocked) =
        RepoLock::acquire_reader(&repo.backend, lock_wait(Duration::from_secs(600))).await?;
    let result = run_restore(repo, snap, target, opts, progress).await;
    if let Some(lock) = lock {
        lock.release().await?;
    }
    result.map(|stats| RestoreStats {
        read_without_lock: unlocked,
        ..stats
    })
}

async fn run_restore(
    repo: &Repository,
    snap: &SnapshotManifest,
    target: &Path,
    opts: RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreStats, EngineError> {
    // Read and check (pure) the file list, and plan the reads, before anything is written.
    let index = repo.load_index().await?;
    let tree = repo.load_tree(&index, snap).await?;
    plan::check_tree(&tree, &snap.id)?;
    let plan = plan::plan_reads(&tree, &index, &snap.id)?;
    let files = tree.iter().filter(|e| e.kind == EntryKind::File);
    let total: u64 = files.clone().map(|e| e.size).sum();
    progress.set_totals(files.count() as u64, total);

    // Write: the target prepared and laid out, every pack read once, then the finish.
    let marker = target::prepare(target, &tree, &opts)?;
    let paths = target::lay_out(target, &tree)?;
    workers::read_packs(repo, &index, &plan, &paths, &progress, opts.threads)?;
    target::finish(&tree, &paths, &marker, || progress.add_file())?;
    Ok(RestoreStats {
        snapshot: snap.id.clone(),
        files: tree.iter().filter(|e| e.kind == EntryKind::File).count() as u64,
        bytes: total,
        read_without_lock: None,
    })
}
