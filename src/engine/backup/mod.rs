//! Backup: scan a source directory, cut files into fixed aligned chunks, skip chunks the
//! repository has, compress and seal the rest into packs on all cores, then write the file
//! list and, last, the snapshot object.

mod plan;
mod scan;
mod tree;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use self::plan::Unit;
pub use self::scan::{Scan, ScanEntry, scan};
use self::workers::{Shared, UnitResults, run_workers};
use super::EngineError;
use super::crypto::{ChunkId, DataKey, random_id};
use super::format::{BlobKind, ObjectKind, SnapshotManifest, TreeEntry};
use super::lock::{RepoLock, hostname, lock_wait};
use super::pack::{PackWriter, StagedPack};
use super::progress::Progress;
use super::repo::{Index, Repository};
use crate::kms::KeyManager;

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
    /// snapshot of the same source on this host, without reading them.
    pub use_parent: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            compression: Compression::Auto,
            tags: BTreeMap::new(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            use_parent: true,
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
    let (key, master_key_id) = repo.active_data_key(km).await?;
    let lock = RepoLock::acquire(
        &repo.backend,
        false,
        lock_wait(std::time::Duration::from_secs(600)),
    )
    .await?;
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
    // Only packs that exist and are not marked for deletion are deduplicated against.
    let index = repo.load_index_for_writing().await?;
    let source = scan.root.display().to_string();
    let host = hostname();

    // Plan (pure once the parent is read): files unchanged since the parent snapshot keep
    // their chunk lists without being read; the rest become units of work.
    let (parent_id, reuse) = match opts.use_parent {
        true => parent_reuse(repo, &index, &source, &host).await?,
        false => (None, HashMap::new()),
    };
    progress.set_totals(scan.files, scan.bytes);
    let mut work = plan::plan_work(&scan.entries, &reuse);
    for (_, (_, size)) in work.reused.iter() {
        progress.add_bytes(*size);
        progress.add_file();
    }
    debug_assert!(SEGMENT.is_multiple_of(u64::from(repo.config.chunker.size)));

    // Write: the workers chunk, seal and stage packs; the uploader commits them.
    let shared = Arc::new(Shared::new(repo, key.clone(), index, &opts, progress)?);
    let entries = Arc::new(scan.entries);
    let units = Arc::new(std::mem::take(&mut work.units));
    let results = copy(
        repo,
        &shared,
        &key,
        entries.clone(),
        units.clone(),
        work.remaining,
        opts.threads,
    )
    .await?;

    // Assemble the file list (pure), store it, then the snapshot object, last.
    let reused = work
        .reused
        .into_iter()
        .map(|(i, (ids, _))| (i, ids))
        .collect();
    let assembled = tree::assemble(&entries, &units, results, reused)?;
    let tree_ids = write_tree(repo, &shared, &key, &assembled.tree).await?;
    let data_keys = tree::data_keys(&assembled.tree, &shared.known, &key.id);
    let manifest = SnapshotManifest {
        id: hex::encode(&random_id()?[..16]),
        time: started.to_string(),
        finished: jiff::Timestamp::now().to_string(),
        hostname: host,
        source,
        tags: opts.tags,
        parent: parent_id,
        files: assembled.files,
        dirs: assembled.dirs,
        logical_bytes: assembled.logical,
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
    Ok(manifest)
}

/// The newest snapshot of the same source on this host, and its files whose chunks are all
/// still in `index` (by path). A parent whose file list is gone or going reuses nothing.
async fn parent_reuse(
    repo: &Repository,
    index: &Index,
    source: &str,
    host: &str,
) -> Result<(Option<String>, HashMap<String, TreeEntry>), EngineError> {
    let Some(parent) = repo
        .snapshots()
        .await?
        .into_iter()
        .rev()
        .find(|s| s.source == source && s.hostname == host)
    else {
        return Ok((None, HashMap::new()));
    };
    match repo.load_tree(index, &parent).await {
        Ok(tree) => Ok((Some(parent.id), plan::reusable(tree, index))),
        // The parent's file list is in a pack that is gone or going: read every file.
        Err(EngineError::Corrupt { .. }) => Ok((None, HashMap::new())),
        Err(e) => Err(e),
    }
}

/// Run the workers on every core and the uploader beside them until every unit is stored
/// and every pack committed with its index object. The chunk ids of each unit.
async fn copy(
    repo: &Repository,
    shared: &Arc<Shared>,
    key: &Arc<DataKey>,
    entries: Arc<Vec<ScanEntry>>,
    units: Arc<Vec<Unit>>,
    remaining: Vec<AtomicU32>,
    threads: usize,
) -> Result<UnitResults, EngineError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<StagedPack>(2);
    let uploader = async {
        while let Some(staged) = rx.recv().await {
            let r = async {
                repo.backend
                    .commit_staged(&staged.path, &super::format::pack_object_name(&staged.id))
                    .await?;
                repo.put_index(key, &staged).await
            }
            .await;
            if let Err(e) = r {
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
    let workers = {
        let shared = shared.clone();
        let threads = threads.max(1);
        tokio::task::spawn_blocking(move || {
            run_workers(&shared, &entries, &units, &remaining, threads, tx)
        })
    };
    let (work, upload) = tokio::join!(workers, uploader);
    let results = work.map_err(|e| EngineError::Worker(e.to_string()))?;
    upload?;
    results
}

/// Store the file list, compressed, in tree blobs (pieces the repository has are not stored
/// again); their ids in order.
async fn write_tree(
    repo: &Repository,
    shared: &Shared,
    key: &DataKey,
    tree: &[TreeEntry],
) -> Result<Vec<String>, EngineError> {
    let mut pieces = Pieces {
        shared,
        key,
        pack: PackWriter::new(&shared.staging, key)?,
        piece: Vec::with_capacity(TREE_PIECE),
        ids: Vec::new(),
        error: None,
    };
    // Streamed: JSON into zstd into pieces, so neither the whole list as JSON nor the whole
    // compressed stream is held (together about 75 bytes a chunk at the end of a backup).
    let streamed = (|| -> std::io::Result<()> {
        let mut enc = zstd::stream::write::Encoder::new(&mut pieces, 3)?;
        {
            let mut json = std::io::BufWriter::with_capacity(64 * 1024, &mut enc);
            serde_json::to_writer(&mut json, tree)?;
            json.flush()?;
        }
        enc.finish()?;
        Ok(())
    })();
    if let Some(e) = pieces.error.take() {
        return Err(e);
    }
    streamed.map_err(|e| EngineError::Worker(format!("writing the file list: {e}")))?;
    pieces.store()?;
    let Pieces { pack: w, ids, .. } = pieces;
    if w.is_empty() {
        w.discard();
    } else {
        let staged = w.finish()?;
        shared.stored.fetch_add(staged.size, Ordering::Relaxed);
        repo.backend
            .commit_staged(&staged.path, &super::format::pack_object_name(&staged.id))
            .await?;
        repo.put_index(key, &staged).await?;
    }
    Ok(ids)
}

/// The compressed file list as it is written, cut into pieces of [`TREE_PIECE`] bytes, each
/// added to the tree pack unless the repository or the pack has it already.
struct Pieces<'a> {
    shared: &'a Shared,
    key: &'a DataKey,
    pack: PackWriter,
    piece: Vec<u8>,
    ids: Vec<String>,
    /// Why a piece could not be stored (the writer's caller sees only an I/O error).
    error: Option<EngineError>,
}

impl Pieces<'_> {
    /// Store the piece gathered so far, if any.
    fn store(&mut self) -> Result<(), EngineError> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(TREE_PIECE));
        let id = self.key.chunk_id(&piece);
        if !self.shared.known.blobs.contains_key(&id) && !w_has(&self.pack, &id) {
            self.pack
                .add(id, BlobKind::Tree, piece.len() as u32, false, piece)?;
        }
        self.ids.push(hex::encode(id));
        Ok(())
    }
}

impl Write for Pieces<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(TREE_PIECE - self.piece.len());
        self.piece.extend_from_slice(&data[..n]);
        if self.piece.len() == TREE_PIECE
            && let Err(e) = self.store()
        {
            let io = std::io::Error::other(e.to_string());
            self.error = Some(e);
            return Err(io);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn w_has(w: &PackWriter, id: &ChunkId) -> bool {
    w.entries().iter().any(|e| e.id == *id)
}
