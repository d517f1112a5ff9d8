//! Backup: scan a source directory, cut files into fixed aligned chunks, skip chunks the
//! repository has, compress and seal the rest into packs on all cores, then write the file
//! list and, last, the snapshot object.

mod checkpoint;
mod feed;
mod scan;
mod tree;
mod workers;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use self::checkpoint::{CheckpointWriter, find_checkpoint};
pub use self::scan::{Scan, ScanEntry, scan, scan_with};
use self::tree::Totals;
use self::workers::{Inputs, Shared, run_pipeline};
use super::crypto::{ChunkId, DataKey, random_id};
use super::format::{BlobEntry, BlobKind, ObjectKind, SnapshotManifest};
use super::lock::{RepoLock, hostname, lock_wait};
use super::pack::{PackWriter, StagedPack};
use super::progress::Progress;
use super::repo::{Index, IndexBuilder, Repository, tree_ids};
use super::spill::{Sorter, SpillError};
use crate::engine::error::EngineError;
use crate::kms::KeyManager;

/// How often a backup checkpoints its file list by default.
pub const DEFAULT_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Bytes of a file one worker reads and processes at a time (a multiple of any chunk size).
const SEGMENT: u64 = 4 * 1024 * 1024;
/// Size of the pieces the compressed file list is stored in.
const TREE_PIECE: usize = 1024 * 1024;

/// Per-chunk compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Fast zstd, kept only where it saves at least 1/16 of the chunk.
    Auto,
    /// zstd level 1 for every chunk: smaller, slower.
    Zstd,
    /// Never compress.
    None,
}

/// What to back up and how.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub compression: Compression,
    pub tags: BTreeMap<String, String>,
    /// Worker threads (defaults to the number of cores).
    pub threads: usize,
    /// Reuse the chunk lists of files unchanged (size, mtime, inode, mode) since the last
    /// snapshot of the same source on this host, without reading them. Without it every
    /// file is read (its chunks are still compared with the parent's at the same offsets).
    pub reuse_unchanged: bool,
    /// The host the snapshot is recorded as, which with the source picks its parent (the
    /// newest snapshot of both). None: this machine's hostname. A pod's hostname is its
    /// name, new for every run, so the operator names its BackupJob instead.
    pub host: Option<String>,
    /// How often the file list so far is checkpointed, for a retry after this backup is
    /// killed to continue from (checkpoint.rs). None: never.
    pub checkpoint_every: Option<std::time::Duration>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            compression: Compression::Auto,
            tags: BTreeMap::new(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            reuse_unchanged: true,
            host: None,
            checkpoint_every: Some(DEFAULT_CHECKPOINT_EVERY),
        }
    }
}

/// Back up `scan` into `repo`. The master key is checked (Active) before anything is written;
/// the snapshot object is written last.
pub async fn backup(
    repo: &mut Repository,
    km: &dyn KeyManager,
    scan: Scan,
    opts: BackupOptions,
    progress: Arc<Progress>,
) -> Result<SnapshotManifest, EngineError> {
    let started = jiff::Timestamp::now();
    // The data key is taken (or made) under the lock, so a rotation or migration, which holds
    // the exclusive lock, never misses a record made beside it.
    let lock = RepoLock::acquire(
        &repo.backend,
        false,
        lock_wait(std::time::Duration::from_secs(600)),
    )
    .await?;
    let key = match repo.reload_keys(&[km]).await {
        Ok(()) => repo.active_data_key(km).await,
        Err(e) => Err(e),
    };
    let (key, master_key_id) = match key {
        Ok(k) => k,
        Err(e) => {
            lock.release().await?;
            return Err(e);
        }
    };
    let result = run_backup(
        repo,
        &lock,
        key,
        master_key_id,
        scan,
        opts,
        progress,
        started,
    )
    .await;
    lock.release().await?;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_backup(
    repo: &Repository,
    lock: &RepoLock,
    key: Arc<DataKey>,
    master_key_id: String,
    scan: Scan,
    opts: BackupOptions,
    progress: Arc<Progress>,
    started: jiff::Timestamp,
) -> Result<SnapshotManifest, EngineError> {
    let source = scan.root.display().to_string();
    let host = opts.host.clone().unwrap_or_else(hostname);
    // The parent, read beside the scan: files unchanged since it keep their chunk lists
    // without being read, and chunks it has at the same offsets are not stored again. The
    // index is not read: no lookup structure grows with the repository.
    let parent = find_parent(repo, &source, &host).await?;
    // A run of the same source and host killed before its snapshot: continue from it.
    let checkpoint = find_checkpoint(repo, &source, &host).await?;
    if let Some(c) = &checkpoint {
        tracing::info!(run = %c.run, "continuing from the checkpoints of a backup that did not finish");
    }
    progress.set_totals(scan.files, scan.bytes);
    debug_assert!(SEGMENT.is_multiple_of(u64::from(repo.config.chunker.size)));

    // Write: the workers chunk, seal and stage packs, the uploader commits them, and the file
    // list is written as they go; then the snapshot object, last.
    let shared = Shared::new(repo, key.clone(), &opts, progress)?;
    let input = Inputs {
        root: &scan.dir,
        entries: &scan.entries,
        parent: parent.as_ref().map(|(snap, index)| (repo, index, snap)),
        checkpoint: checkpoint.as_ref().map(|c| (repo, c)),
        handle: tokio::runtime::Handle::current(),
        threads: opts.threads,
        reuse_unchanged: opts.reuse_unchanged,
    };
    let id = hex::encode(&random_id()?[..16]);
    let checkpoints = CheckpointWriter::new(
        repo,
        &key,
        input.handle.clone(),
        &id,
        (&source, &host, &started.to_string()),
        opts.checkpoint_every,
        (scan.bytes, u64::from(repo.config.chunker.size)),
    )?;
    let (tree_ids, totals) = copy(repo, &shared, &key, &input, &id, checkpoints).await?;
    let mut data_keys = data_keys(parent.as_ref().map(|(snap, _)| snap), &key.id);
    if let Some(c) = &checkpoint
        && !data_keys.contains(&c.data_key)
    {
        data_keys.push(c.data_key.clone());
        data_keys.sort();
    }
    let manifest = SnapshotManifest {
        id,
        time: started.to_string(),
        finished: jiff::Timestamp::now().to_string(),
        hostname: host,
        source,
        tags: opts.tags,
        parent: parent.map(|(snap, _)| snap.id),
        files: totals.files,
        dirs: totals.dirs,
        logical_bytes: totals.logical,
        stored_bytes: shared.stored.load(Ordering::Relaxed),
        tree: tree_ids,
        data_keys,
        master_key_id,
    };
    // Fault hook for tests: a backup that stalls here (a slow store) past its lock's expiry.
    if let Some(secs) = std::env::var("SNAPCRYPT_FAULT_BACKUP_STALL_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_secs_f64(secs.max(0.0))).await;
    }
    // The commit point: a backup whose lock may have been judged stale (so a prune may have
    // marked or removed what it reused) writes no snapshot.
    lock.check()?;
    repo.put_sealed(
        &key,
        ObjectKind::Snapshot,
        &format!("snapshots/{}", manifest.id),
        serde_json::to_vec(&manifest)?,
    )
    .await?;
    // The snapshot names its file list now; a record left behind is harmless (prune removes
    // it), so failing to delete it does not fail the backup.
    if let Err(e) = repo.delete_unfinished(&manifest.id).await {
        tracing::warn!(snapshot = %manifest.id, error = %e, "could not delete the backup's unfinished record (the next prune removes it)");
    }
    // Its checkpoints, and those it continued from, are spent.
    let spent: Vec<&str> = std::iter::once(manifest.id.as_str())
        .chain(checkpoint.as_ref().map(|c| c.run.as_str()))
        .collect();
    repo.delete_checkpoints(&spent).await;
    Ok(manifest)
}

/// The data keys (hex ids) a snapshot depends on: its parent's, whose chunks it may reuse,
/// and `new_key`, which new data was written under. Sorted, unique. (A key the parent needed
/// and this snapshot no longer does stays listed: kept, never lost.)
fn data_keys(parent: Option<&SnapshotManifest>, new_key: &[u8; 16]) -> Vec<String> {
    let mut keys: Vec<String> = parent.map(|p| p.data_keys.clone()).unwrap_or_default();
    keys.push(hex::encode(new_key));
    keys.sort();
    keys.dedup();
    keys
}

/// The newest snapshot of the same source on this host, with an index that locates its file
/// list (the packs holding its pieces, and nothing else), once the list has been read whole
/// and checked. A parent whose list is damaged, gone or going reuses nothing.
async fn find_parent(
    repo: &Repository,
    source: &str,
    host: &str,
) -> Result<Option<(SnapshotManifest, Index)>, EngineError> {
    let Some(parent) = repo
        .snapshots()
        .await?
        .into_iter()
        .rev()
        .find(|s| s.source == source && s.hostname == host)
    else {
        return Ok(None);
    };
    // Its chunks are taken on trust (no index is read to check them), so only from a
    // repository where every pack an index names is there (or going, by prune's mark).
    let missing = repo.missing_packs().await?;
    if let Some(first) = missing.first() {
        tracing::warn!(
            missing = missing.len(),
            first = %first,
            "packs the index names are missing: every file is read and stored again, nothing taken from the parent snapshot (run verify)"
        );
        return Ok(None);
    }
    // A parent whose list cannot be named is no parent, as one whose list cannot be read.
    let Ok(pieces) = tree_ids(&parent) else {
        return Ok(None);
    };
    let pieces: HashSet<ChunkId> = pieces.into_iter().collect();
    let mut index = IndexBuilder::default();
    // Every data blob the index knows, as a sorted stream (spilled past its budget, so no
    // lookup structure grows with the repository) of the first 16 bytes of each id: a false
    // match of keyed BLAKE3 ids on 128 bits is as unlikely as prune's (docs/REPOSITORY.md,
    // "Memory"), and it halves the scratch disk.
    let mut served = Sorter::<ID_PREFIX>::in_temp_dir(SORT_BUDGET);
    repo.for_each_index_pack(|pack, entries| {
        let mut mine: Vec<BlobEntry> = Vec::new();
        for e in entries {
            match e.kind {
                BlobKind::Data => served.push(id_prefix(&e.id))?,
                BlobKind::Tree if pieces.contains(&e.id) => mine.push(e),
                BlobKind::Tree => {}
            }
        }
        if !mine.is_empty() {
            index.add(pack, mine);
        }
        Ok(())
    })
    .await?;
    let index = index.finish();
    let handle = tokio::runtime::Handle::current();
    let mut wanted = Sorter::<ID_PREFIX>::in_temp_dir(SORT_BUDGET);
    let read = tokio::task::block_in_place(|| {
        repo.for_each_tree_entry(&index, &parent, &handle, |e| {
            for id in &e.chunks {
                wanted.push(id_prefix(id))?;
            }
            Ok(())
        })
    });
    match read {
        Ok(()) => {}
        Err(EngineError::Corrupt { .. }) => return Ok(None),
        Err(e) => return Err(e),
    }
    // Its chunks are reused without being read: only if the repository serves every one (a
    // pack and its index object both gone, by a lifecycle rule or a partial restore of the
    // bucket, leave chunks no index names, which a snapshot must never point to).
    let unserved =
        tokio::task::block_in_place(|| first_unserved(wanted.finish()?, served.finish()?))?;
    if let Some(id) = unserved {
        tracing::warn!(
            parent = %parent.id,
            blob = %hex::encode(id),
            "the parent snapshot needs blobs no index has (a pack and its index object are gone): every file is read and stored again, nothing taken from it (run verify)"
        );
        return Ok(None);
    }
    Ok(Some((parent, index)))
}

/// Memory each of find_parent's sorts may hold before it spills to scratch files.
const SORT_BUDGET: usize = 4 * 1024 * 1024;

/// Bytes of a blob id the parent check compares.
const ID_PREFIX: usize = 16;

fn id_prefix(id: &ChunkId) -> [u8; ID_PREFIX] {
    let mut p = [0u8; ID_PREFIX];
    p.copy_from_slice(&id[..ID_PREFIX]);
    p
}

/// The first id of sorted stream `wanted` that sorted stream `served` lacks. Pure.
fn first_unserved<const N: usize>(
    wanted: impl Iterator<Item = Result<[u8; N], SpillError>>,
    served: impl Iterator<Item = Result<[u8; N], SpillError>>,
) -> Result<Option<[u8; N]>, SpillError> {
    let mut first = None;
    each_unserved(wanted, served, |w| {
        first = Some(w);
        false
    })?;
    Ok(first)
}

/// Each record of sorted stream `wanted` whose first `S` bytes sorted stream `served` lacks,
/// in order, to `f`, until `f` returns false. Pure: the merge of the parent check and of the
/// checkpoint check.
fn each_unserved<const W: usize, const S: usize>(
    wanted: impl Iterator<Item = Result<[u8; W], SpillError>>,
    mut served: impl Iterator<Item = Result<[u8; S], SpillError>>,
    mut f: impl FnMut([u8; W]) -> bool,
) -> Result<(), SpillError> {
    let mut have: Option<[u8; S]> = None;
    let mut exhausted = false;
    for w in wanted {
        let w = w?;
        let mut key = [0u8; S];
        key.copy_from_slice(&w[..S]);
        while !exhausted && have.is_none_or(|h| h < key) {
            match served.next() {
                Some(h) => have = Some(h?),
                None => exhausted = true,
            }
        }
        if (exhausted || have != Some(key)) && !f(w) {
            return Ok(());
        }
    }
    Ok(())
}

/// Run the backup's threads and the uploader beside them until every unit is stored, every
/// pack committed with its index object, and the file list stored; the file list's piece ids
/// and totals. Blocks the calling thread (a multi-threaded runtime's, in place).
async fn copy(
    repo: &Repository,
    shared: &Shared,
    key: &DataKey,
    input: &Inputs<'_>,
    snapshot_id: &str,
    checkpoints: CheckpointWriter<'_>,
) -> Result<(Vec<String>, Totals), EngineError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<StagedPack>(2);
    let uploader = async {
        while let Some(staged) = rx.recv().await {
            if let Err(e) = commit(repo, key, &staged).await {
                shared.abort.store(true, Ordering::Relaxed);
                let _ = std::fs::remove_file(&staged.path);
                // Drain so workers blocked on send are released.
                rx.close();
                while let Some(s) = rx.recv().await {
                    let _ = std::fs::remove_file(&s.path);
                }
                return Err(e);
            }
        }
        Ok::<(), EngineError>(())
    };
    let (written, uploaded) = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let uploading = s.spawn(|| input.handle.block_on(uploader));
            let written = write_list(shared, key, input, checkpoints, tx);
            let uploaded = uploading
                .join()
                .unwrap_or_else(|_| Err(EngineError::Worker("uploader panicked".into())));
            (written, uploaded)
        })
    });
    // The uploader's failure is the cause of the workers' stop.
    uploaded?;
    let (pieces, totals) = written?;
    let Pieces { pack, ids, .. } = pieces;
    if pack.is_empty() {
        pack.discard();
    } else {
        let staged = pack.finish()?;
        shared.stored.fetch_add(staged.size, Ordering::Relaxed);
        // Before the file list can be seen (its index object), say whose it is: a backup
        // killed before its snapshot object leaves a list verify can tell from a deleted
        // snapshot's.
        if let Err(e) = repo.put_unfinished(snapshot_id, &ids, "backup").await {
            let _ = std::fs::remove_file(&staged.path);
            return Err(e);
        }
        commit(repo, key, &staged).await?;
    }
    Ok((ids, totals))
}

/// Commit a staged pack, then its index object.
async fn commit(repo: &Repository, key: &DataKey, staged: &StagedPack) -> Result<(), EngineError> {
    repo.backend
        .commit_staged(&staged.path, &super::format::pack_object_name(&staged.id))
        .await?;
    repo.put_index(key, staged).await
}

/// The pipeline, writing the file list as JSON into zstd into pieces: neither the list as
/// JSON nor compressed is held whole.
fn write_list<'k>(
    shared: &Shared,
    key: &'k DataKey,
    input: &Inputs<'_>,
    checkpoints: CheckpointWriter<'_>,
    packs: tokio::sync::mpsc::Sender<StagedPack>,
) -> Result<(Pieces<'k>, Totals), EngineError> {
    let io = |e: std::io::Error| EngineError::Worker(format!("writing the file list: {e}"));
    let pieces = Pieces {
        key,
        pack: PackWriter::new(&shared.staging, key)?,
        piece: Vec::with_capacity(TREE_PIECE),
        ids: Vec::new(),
    };
    let json = std::io::BufWriter::with_capacity(
        64 * 1024,
        zstd::stream::write::Encoder::new(pieces, 3).map_err(io)?,
    );
    let (json, totals) = run_pipeline(shared, input, (json, Some(checkpoints)), packs)?;
    let mut pieces = json
        .into_inner()
        .map_err(|e| io(e.into_error()))?
        .finish()
        .map_err(io)?;
    pieces.store().map_err(io)?;
    Ok((pieces, totals))
}

/// The compressed file list as it is written, cut into pieces of [`TREE_PIECE`] bytes, each
/// added to the tree pack unless the pack has it already.
struct Pieces<'a> {
    key: &'a DataKey,
    pack: PackWriter,
    piece: Vec<u8>,
    ids: Vec<String>,
}

impl Pieces<'_> {
    /// Store the piece gathered so far, if any.
    fn store(&mut self) -> std::io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(TREE_PIECE));
        let id = self.key.chunk_id(&piece);
        if !self.pack.entries().iter().any(|e| e.id == id) {
            self.pack
                .add(id, BlobKind::Tree, piece.len() as u32, false, piece)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        self.ids.push(hex::encode(id));
        Ok(())
    }
}

impl Write for Pieces<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(TREE_PIECE - self.piece.len());
        self.piece.extend_from_slice(&data[..n]);
        if self.piece.len() == TREE_PIECE {
            self.store()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ns: &[u8]) -> Vec<Result<[u8; 32], SpillError>> {
        ns.iter().map(|n| Ok([*n; 32])).collect()
    }

    /// A wanted id the served stream lacks is found wherever it falls: before, between,
    /// after every served id; repeated wanted ids and served ids nobody wants are fine.
    #[test]
    fn the_first_unserved_blob_is_found() {
        let run = |w: &[u8], s: &[u8]| {
            first_unserved(ids(w).into_iter(), ids(s).into_iter())
                .unwrap()
                .map(|id| id[0])
        };
        assert_eq!(run(&[2, 2, 4], &[1, 2, 3, 4, 5]), None);
        assert_eq!(run(&[], &[]), None);
        assert_eq!(run(&[0, 2], &[1, 2]), Some(0));
        assert_eq!(run(&[1, 2, 3], &[1, 3]), Some(2));
        assert_eq!(run(&[1, 9], &[1, 3]), Some(9));
        assert_eq!(run(&[1], &[]), Some(1));
    }

    /// Every wanted record whose key the served stream lacks is found, its payload (bytes
    /// past the key) kept, however the served stream ends.
    #[test]
    fn every_unserved_record_is_found_with_its_payload() {
        let all = |w: &[(u8, u8)], s: &[u8]| {
            let wanted = w.iter().map(|(k, p)| Ok([*k, *p]));
            let served = s.iter().map(|k| Ok([*k]));
            let mut out = Vec::new();
            each_unserved(wanted, served, |r| {
                out.push((r[0], r[1]));
                true
            })
            .unwrap();
            out
        };
        assert_eq!(
            all(&[(1, 9), (2, 8), (2, 7), (5, 6)], &[2, 3]),
            [(1, 9), (5, 6)]
        );
        assert_eq!(all(&[(1, 1), (4, 2), (4, 3)], &[1]), [(4, 2), (4, 3)]);
        assert_eq!(all(&[(3, 0)], &[1, 3, 4]), []);
    }
}
