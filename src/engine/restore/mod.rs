//! Restore: read each needed pack once, open and check every blob (authentication and chunk
//! id), and write it to every place it belongs, on all cores; then set modes and mtimes.

mod check;
mod plan;
mod target;
mod workers;
mod writer;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use self::plan::check_tree;
use super::crypto::ChunkId;
use super::format::{BlobKind, EntryKind, SnapshotManifest, TreeEntry};
use super::lock::{RepoLock, lock_wait};
use super::progress::Progress;
use super::repo::{BlobLoc, BlobMap, Index, Repository, tree_ids};
use super::spill::Sorter;
use crate::engine::error::EngineError;

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
    /// Once written, read every file back and compare it with the snapshot.
    pub check: bool,
    /// The target must lie beneath this directory (a claim's mount), and no part of it below
    /// this directory may be a link.
    pub target_within: Option<std::path::PathBuf>,
    /// How a refusal names the setting that would let the restore go on.
    pub fix_words: FixWords,
}

/// How a refused restore names the setting that would let it go on: the command line's flags
/// (`snapcrypt restore`), or the fields of a Restore (the agent in a Restore's pod, whose
/// reader sets the spec, not flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FixWords {
    #[default]
    Flags,
    RestoreSpec,
}

impl FixWords {
    /// What lets a restore write into a non-empty target.
    pub fn force(self) -> &'static str {
        match self {
            FixWords::Flags => "use --force",
            FixWords::RestoreSpec => "set spec.target.force",
        }
    }

    /// What lets a restore remove what the target holds that the snapshot does not.
    pub fn delete_extra(self) -> &'static str {
        match self {
            FixWords::Flags => "pass --delete-extra",
            FixWords::RestoreSpec => "set spec.target.deleteExtra (with force)",
        }
    }
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            force: false,
            delete_extra: false,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            check: false,
            target_within: None,
            fix_words: FixWords::Flags,
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
    /// Every restored file was read back and matched the snapshot (`check`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checked: bool,
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
    // Read and check the file list, and order the reads, before anything is written.
    let (index, blobs) = index_in_order(repo, snap).await?;
    let chunk_size = repo.config.chunker.size;
    let (tree, placements) = tokio::task::block_in_place(|| {
        let (tree, chunks, wanted) = read_file_list(repo, &index, snap)?;
        plan::check_tree(&tree, &snap.id)?;
        plan::check_shapes(&tree, &chunks, chunk_size, &snap.id)?;
        let mut placements = Sorter::in_temp_dir(SORT_BUDGET);
        plan::join(
            wanted.finish()?,
            blobs.finish()?,
            (&tree, &chunks),
            chunk_size,
            &snap.id,
            &mut placements,
        )?;
        Ok::<_, EngineError>((tree, placements.finish()?))
    })?;
    let files = tree.iter().filter(|e| e.kind == EntryKind::File);
    let total: u64 = files.clone().map(|e| e.size).sum();
    progress.set_totals(files.count() as u64, total);

    // Write: the target opened (never overlapping the repository), prepared and laid out,
    // every pack read once, then the finish.
    let mut t = target::open(target, &opts, repo.backend.local_root())?;
    target::prepare(&t, &tree, &opts)?;
    target::lay_out(&mut t, &tree)?;
    workers::read_packs(
        repo,
        &index,
        placements,
        chunk_size,
        (&t, &tree),
        &progress,
        opts.threads,
    )?;
    target::finish(&t, &tree, || progress.add_file())?;
    tamper_for_tests(&t);
    if opts.check {
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            check::check_restored(repo, &index, snap, &t, &handle)
                // The target is not what the snapshot holds: mark it as a restore that did
                // not finish.
                .inspect_err(|_| target::mark_incomplete(&t))
        })?;
    }
    Ok(RestoreStats {
        snapshot: snap.id.clone(),
        files: tree.iter().filter(|e| e.kind == EntryKind::File).count() as u64,
        bytes: total,
        read_without_lock: None,
        checked: opts.check,
    })
}

/// Fault hook for the tests of `--check` (tests/check_cli.rs): with
/// `SNAPCRYPT_FAULT_RESTORE_TAMPER=PATH`, the restored file PATH (relative to the target) has
/// its first byte changed after it was written, as a volume that returns other bytes than it
/// was given would. Never set outside tests.
fn tamper_for_tests(t: &target::Target) {
    let Ok(rel) = std::env::var("SNAPCRYPT_FAULT_RESTORE_TAMPER") else {
        return;
    };
    let Ok(f) = t.open(&rel, rustix::fs::OFlags::RDWR) else {
        return;
    };
    let mut b = [0u8; 1];
    if std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0).is_ok() {
        let _ = std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0xff], 0);
    }
}

/// Memory each of a restore's sorts may hold before it spills to scratch files (enough for
/// everything of a 1 GiB dbPath).
const SORT_BUDGET: usize = 4 * 1024 * 1024;

/// The index as a restore needs it: every pack (id and key, a few dozen bytes each), the
/// blobs of the snapshot's file list, and every data blob as a sorted stream.
async fn index_in_order(
    repo: &Repository,
    snap: &SnapshotManifest,
) -> Result<(Index, Sorter<{ plan::BLOB }>), EngineError> {
    let pieces: HashSet<ChunkId> = tree_ids(snap)?.into_iter().collect();
    let (mut packs, mut list) = (Vec::new(), Vec::new());
    let mut blobs = Sorter::in_temp_dir(SORT_BUDGET);
    repo.for_each_index_pack(|pack, entries| {
        let n = packs.len() as u32;
        packs.push(pack);
        for entry in entries {
            let loc = BlobLoc { pack: n, entry };
            match entry.kind {
                BlobKind::Tree if pieces.contains(&entry.id) => list.push(loc),
                BlobKind::Tree => {}
                BlobKind::Data => blobs.push(plan::blob_record(&loc))?,
            }
        }
        Ok(())
    })
    .await?;
    let index = Index {
        packs,
        blobs: BlobMap::from_preferred(list),
    };
    Ok((index, blobs))
}

/// The snapshot's file list, streamed: its entries without their chunks, each file's chunk
/// count, and every chunk as a sorted stream of (id, file, chunk number).
fn read_file_list(
    repo: &Repository,
    index: &Index,
    snap: &SnapshotManifest,
) -> Result<(Vec<TreeEntry>, Vec<u32>, Sorter<{ plan::WANT }>), EngineError> {
    let (mut tree, mut chunks) = (Vec::new(), Vec::new());
    let mut wanted = Sorter::in_temp_dir(SORT_BUDGET);
    let handle = tokio::runtime::Handle::current();
    repo.for_each_tree_entry(index, snap, &handle, |mut e| {
        let ids = std::mem::take(&mut e.chunks);
        // A later part of a file (checked to follow its first) adds to that file's chunks.
        if e.part == 0 {
            chunks.push(0u32);
            tree.push(e);
        }
        let file = tree.len() - 1;
        let first = chunks[file];
        let corrupt = |what: &str| EngineError::Corrupt {
            object: format!("snapshots/{}", snap.id),
            reason: format!("{}: more than 2^32 {what}", tree[file].path),
        };
        let end = u32::try_from(ids.len())
            .ok()
            .and_then(|n| n.checked_add(first))
            .ok_or_else(|| corrupt("chunks"))?;
        let f = u32::try_from(file).map_err(|_| corrupt("entries"))?;
        for (id, n) in ids.iter().zip(first..end) {
            wanted.push(plan::want_record(id, f, n))?;
        }
        chunks[file] = end;
        Ok(())
    })?;
    Ok((tree, chunks, wanted))
}
