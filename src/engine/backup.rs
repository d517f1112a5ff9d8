//! Backup: scan a source directory, cut files into fixed aligned chunks, skip chunks the
//! repository has, compress and seal the rest into packs on all cores, then write the file
//! list and, last, the snapshot object.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::EngineError;
use super::crypto::{ChunkId, DataKey, random_id};
use super::format::{BlobKind, EntryKind, ObjectKind, SnapshotManifest, TreeEntry};
use super::lock::{RepoLock, hostname, lock_wait};
use super::pack::{PackWriter, StagedPack};
use super::progress::Progress;
use super::repo::{Index, Repository};
use crate::kms::KeyManager;

/// Bytes of a file one worker reads and processes at a time (a multiple of any chunk size).
const SEGMENT: u64 = 4 * 1024 * 1024;
/// Size of the pieces the compressed file list is stored in.
const TREE_PIECE: usize = 1024 * 1024;

/// zstd level of `auto`: a fast (negative) level. On a dbPath of half compressed pages it
/// stores about 5% more than level 1 at 2.5 times the speed (bench/RESULTS.md).
const AUTO_LEVEL: i32 = -3;
/// zstd level of `zstd`.
const ZSTD_LEVEL: i32 = 1;

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

/// One entry found by the scan.
#[derive(Clone, Debug)]
pub struct ScanEntry {
    pub rel: String,
    pub abs: PathBuf,
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime_ns: i128,
    pub size: u64,
    pub inode: u64,
    pub target: Option<String>,
}

/// What a scan found.
#[derive(Debug)]
pub struct Scan {
    pub root: PathBuf,
    pub entries: Vec<ScanEntry>,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// What is not backed up, each with why: sockets, FIFOs, devices, a root lost+found.
    pub skipped: Vec<String>,
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Walk `root` (not following symlinks), in sorted order. Refuses, before anything is written,
/// a missing or unreadable source and one with `max_files` files or more.
pub fn scan(root: &Path, max_files: u64) -> Result<Scan, EngineError> {
    let err = |p: &Path, e: std::io::Error| EngineError::Source {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(root).map_err(|e| err(root, e))?;
    if !meta.is_dir() {
        return Err(EngineError::Source {
            path: root.display().to_string(),
            reason: "not a directory".into(),
        });
    }
    let root = &root.canonicalize().map_err(|e| err(root, e))?;
    let mut scan = Scan {
        root: root.to_path_buf(),
        entries: Vec::new(),
        files: 0,
        dirs: 0,
        bytes: 0,
        skipped: Vec::new(),
    };
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let m = std::fs::symlink_metadata(&dir).map_err(|e| err(&dir, e))?;
        scan.entries.push(ScanEntry {
            rel: rel.clone(),
            abs: dir.clone(),
            kind: EntryKind::Dir,
            mode: m.mode() & 0o7777,
            mtime_ns: mtime_ns(&m),
            size: 0,
            inode: m.ino(),
            target: None,
        });
        scan.dirs += 1;
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| err(&dir, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| err(&dir, e))?;
        children.sort();
        let mut subdirs = Vec::new();
        for path in children {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = std::fs::symlink_metadata(&path).map_err(|e| err(&path, e))?;
            let ft = m.file_type();
            // A data volume's root on ext4 holds lost+found (root's, mode 0700, unreadable by
            // mongod's user): filesystem bookkeeping, not data.
            if ft.is_dir() && child_rel == "lost+found" {
                scan.skipped
                    .push(format!("{child_rel}: filesystem bookkeeping, not data"));
                continue;
            }
            if ft.is_dir() {
                subdirs.push((path, child_rel));
                continue;
            }
            let (kind, target) = if ft.is_file() {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| err(&path, e))?;
                scan.files += 1;
                scan.bytes += m.len();
                if scan.files >= max_files {
                    return Err(EngineError::TooManyFiles {
                        path: root.display().to_string(),
                        count: count_files(root),
                        max: max_files,
                    });
                }
                (EntryKind::File, None)
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&path).map_err(|e| err(&path, e))?;
                (EntryKind::Symlink, Some(t.to_string_lossy().into_owned()))
            } else {
                scan.skipped.push(format!(
                    "{child_rel}: not a regular file, directory or symlink"
                ));
                continue;
            };
            scan.entries.push(ScanEntry {
                rel: child_rel,
                abs: path,
                kind,
                mode: m.mode() & 0o7777,
                mtime_ns: mtime_ns(&m),
                size: if kind == EntryKind::File { m.len() } else { 0 },
                inode: m.ino(),
                target,
            });
        }
        // Reverse so that popping visits subdirectories in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(scan)
}

/// Count regular files under `root` (for the too-many-files message).
fn count_files(root: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => n += 1,
                _ => {}
            }
        }
    }
    n
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

/// A unit of work: a segment of one file.
struct Unit {
    file: usize,
    offset: u64,
    len: u64,
}

/// Shared state of the workers.
struct Shared {
    key: Arc<DataKey>,
    known: Index,
    claimed: Mutex<HashSet<ChunkId>>,
    chunk_size: usize,
    pack_size: u64,
    compression: Compression,
    staging: PathBuf,
    progress: Arc<Progress>,
    stored: AtomicU64,
    new_blobs: AtomicU64,
    abort: AtomicBool,
}

impl Shared {
    /// Compress (where it pays) and add one chunk to `pack`, unless the repository or another
    /// worker already has it.
    fn store_chunk(
        &self,
        chunk: &[u8],
        id: ChunkId,
        kind: BlobKind,
        pack: &mut Option<PackWriter>,
        zstd: &mut zstd::bulk::Compressor<'static>,
        done: &tokio::sync::mpsc::Sender<StagedPack>,
    ) -> Result<(), EngineError> {
        if self.known.blobs.contains_key(&id) {
            return Ok(());
        }
        if !self
            .claimed
            .lock()
            .map_err(|_| EngineError::Worker("lock poisoned".into()))?
            .insert(id)
        {
            return Ok(());
        }
        let (data, compressed) = match self.compression {
            Compression::None => (chunk.to_vec(), false),
            mode => {
                let c = zstd
                    .compress(chunk)
                    .map_err(|e| EngineError::Worker(e.to_string()))?;
                if mode == Compression::Zstd || c.len() + chunk.len() / 16 <= chunk.len() {
                    (c, true)
                } else {
                    (chunk.to_vec(), false)
                }
            }
        };
        let w = match pack {
            Some(w) => w,
            None => pack.insert(PackWriter::new(&self.staging, &self.key)?),
        };
        let before = w.size();
        w.add(id, kind, chunk.len() as u32, compressed, data)?;
        self.stored.fetch_add(w.size() - before, Ordering::Relaxed);
        self.new_blobs.fetch_add(1, Ordering::Relaxed);
        if w.size() >= self.pack_size
            && let Some(w) = pack.take()
        {
            self.send(w, done)?;
        }
        Ok(())
    }

    fn send(
        &self,
        w: PackWriter,
        done: &tokio::sync::mpsc::Sender<StagedPack>,
    ) -> Result<(), EngineError> {
        let staged = w.finish()?;
        self.stored.fetch_add(
            staged.size
                - staged
                    .entries
                    .iter()
                    .map(|e| u64::from(e.stored_len))
                    .sum::<u64>(),
            Ordering::Relaxed,
        );
        done.blocking_send(staged)
            .map_err(|_| EngineError::Worker("pack uploader stopped".into()))
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

    // Files unchanged since the parent snapshot keep their chunk lists without being read.
    let mut parent_id = None;
    let mut reuse: HashMap<String, TreeEntry> = HashMap::new();
    if opts.use_parent
        && let Some(parent) = repo
            .snapshots()
            .await?
            .into_iter()
            .rev()
            .find(|s| s.source == source && s.hostname == host)
    {
        match repo.load_tree(&index, &parent).await {
            Ok(tree) => {
                for e in tree {
                    if e.kind == EntryKind::File
                        && e.chunks.iter().all(|c| index.blobs.contains_key(c))
                    {
                        reuse.insert(e.path.clone(), e);
                    }
                }
                parent_id = Some(parent.id);
            }
            // The parent's file list is in a pack that is gone or going: read every file.
            Err(EngineError::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
    }

    let chunk = u64::from(repo.config.chunker.size);
    let mut units = Vec::new();
    let mut reused: HashMap<usize, Vec<ChunkId>> = HashMap::new();
    let mut remaining: Vec<AtomicU32> = Vec::with_capacity(scan.entries.len());
    progress.set_totals(scan.files, scan.bytes);
    for (i, e) in scan.entries.iter().enumerate() {
        let mut n = 0;
        if e.kind == EntryKind::File {
            match reuse.get(&e.rel) {
                Some(p)
                    if p.size == e.size
                        && p.mtime_ns == e.mtime_ns
                        && p.inode == e.inode
                        && p.mode == e.mode =>
                {
                    reused.insert(i, p.chunks.clone());
                    progress.add_bytes(e.size);
                    progress.add_file();
                }
                _ => {
                    let mut off = 0;
                    while off < e.size || (off == 0 && e.size == 0) {
                        let len = SEGMENT.min(e.size - off);
                        units.push(Unit {
                            file: i,
                            offset: off,
                            len,
                        });
                        n += 1;
                        off += len.max(1);
                    }
                }
            }
        }
        remaining.push(AtomicU32::new(n));
    }
    debug_assert!(SEGMENT.is_multiple_of(chunk));

    let staging = repo.backend.staging_dir()?.to_path_buf();
    let shared = Arc::new(Shared {
        key: key.clone(),
        known: index,
        claimed: Mutex::new(HashSet::new()),
        chunk_size: chunk as usize,
        pack_size: repo.config.pack_size,
        compression: opts.compression,
        staging,
        progress: progress.clone(),
        stored: AtomicU64::new(0),
        new_blobs: AtomicU64::new(0),
        abort: AtomicBool::new(false),
    });

    // Uploader: commits finished packs and their index objects while workers go on.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<StagedPack>(2);
    let uploader = {
        let backend = repo.backend.clone();
        let shared = shared.clone();
        let repo_ref: &Repository = repo;
        let key = key.clone();
        async move {
            while let Some(staged) = rx.recv().await {
                let r = async {
                    backend
                        .commit_staged(&staged.path, &super::format::pack_object_name(&staged.id))
                        .await?;
                    repo_ref.put_index(&key, &staged).await
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
        }
    };

    let entries = Arc::new(scan.entries);
    let units = Arc::new(units);
    let remaining = Arc::new(remaining);
    let workers = {
        let shared = shared.clone();
        let entries = entries.clone();
        let units = units.clone();
        let remaining = remaining.clone();
        let threads = opts.threads.max(1);
        tokio::task::spawn_blocking(move || {
            run_workers(&shared, &entries, &units, &remaining, threads, tx)
        })
    };
    let (work, upload) = tokio::join!(workers, uploader);
    let results = work.map_err(|e| EngineError::Worker(e.to_string()))?;
    upload?;
    let mut results = results?;

    // Assemble the file list.
    let mut files = 0;
    let mut logical = 0;
    let mut tree = Vec::with_capacity(entries.len());
    let mut by_file: HashMap<usize, Vec<(u64, Vec<ChunkId>, u64)>> = HashMap::new();
    for (u, (ids, read)) in results.drain() {
        let unit = &units[u];
        by_file
            .entry(unit.file)
            .or_default()
            .push((unit.offset, ids, read));
    }
    for (i, e) in entries.iter().enumerate() {
        let mut entry = TreeEntry {
            path: e.rel.clone(),
            kind: e.kind,
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            size: 0,
            target: e.target.clone(),
            inode: e.inode,
            chunks: Vec::new(),
        };
        if e.kind == EntryKind::File {
            files += 1;
            if let Some(ids) = reused.remove(&i) {
                entry.chunks = ids;
                entry.size = e.size;
            } else if let Some(mut parts) = by_file.remove(&i) {
                parts.sort_by_key(|p| p.0);
                for (_, ids, read) in parts {
                    entry.chunks.extend(ids);
                    entry.size += read;
                }
            }
            logical += entry.size;
        }
        tree.push(entry);
    }

    // The file list, compressed, in tree blobs; then the snapshot object, last.
    let json = serde_json::to_vec(&tree)?;
    let compressed =
        zstd::bulk::compress(&json, 3).map_err(|e| EngineError::Worker(e.to_string()))?;
    let mut tree_ids = Vec::new();
    let mut w = PackWriter::new(&shared.staging, &key)?;
    for piece in compressed.chunks(TREE_PIECE) {
        let id = key.chunk_id(piece);
        if !shared.known.blobs.contains_key(&id) && !w_has(&w, &id) {
            w.add(
                id,
                BlobKind::Tree,
                piece.len() as u32,
                false,
                piece.to_vec(),
            )?;
        }
        tree_ids.push(hex::encode(id));
    }
    if w.is_empty() {
        w.discard();
    } else {
        let staged = w.finish()?;
        shared.stored.fetch_add(staged.size, Ordering::Relaxed);
        repo.backend
            .commit_staged(&staged.path, &super::format::pack_object_name(&staged.id))
            .await?;
        repo.put_index(&key, &staged).await?;
    }

    // The data keys this snapshot depends on: those of the packs holding the chunks it reuses,
    // and the one new data was written under.
    let mut data_keys: Vec<String> = Vec::new();
    let mut seen_packs = HashSet::new();
    for e in &tree {
        for c in &e.chunks {
            if let Some(loc) = shared.known.blobs.get(c)
                && seen_packs.insert(loc.pack)
            {
                data_keys.push(hex::encode(
                    shared.known.packs[loc.pack as usize].data_key_id,
                ));
            }
        }
    }
    data_keys.push(hex::encode(key.id));
    data_keys.sort();
    data_keys.dedup();

    let id = hex::encode(&random_id()?[..16]);
    let manifest = SnapshotManifest {
        id: id.clone(),
        time: started.to_string(),
        finished: jiff::Timestamp::now().to_string(),
        hostname: host,
        source,
        tags: opts.tags,
        parent: parent_id,
        files,
        dirs: tree.iter().filter(|e| e.kind == EntryKind::Dir).count() as u64,
        logical_bytes: logical,
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
        &format!("snapshots/{id}"),
        serde_json::to_vec(&manifest)?,
    )
    .await?;
    Ok(manifest)
}

/// Open a scanned file for reading without following a symlink, and check it is the file the
/// scan saw (same inode, still a regular file): a path swapped for a link after the scan (to a
/// key file, say) is never read.
fn open_scanned(entry: &ScanEntry) -> Result<File, EngineError> {
    let err = |reason: String| EngineError::Source {
        path: entry.abs.display().to_string(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&entry.abs)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                err(
                    "became a symbolic link after the scan: not followed, no snapshot was written"
                        .into(),
                )
            } else {
                err(e.to_string())
            }
        })?;
    let m = file.metadata().map_err(|e| err(e.to_string()))?;
    if !m.is_file() || m.ino() != entry.inode {
        return Err(err(format!(
            "was replaced after the scan (inode {}, scanned {}): a consistent copy needs a quiesced source; no snapshot was written",
            m.ino(),
            entry.inode
        )));
    }
    Ok(file)
}

fn w_has(w: &PackWriter, id: &ChunkId) -> bool {
    w.entries().iter().any(|e| e.id == *id)
}

type UnitResults = HashMap<usize, (Vec<ChunkId>, u64)>;

fn run_workers(
    shared: &Shared,
    entries: &[ScanEntry],
    units: &[Unit],
    remaining: &[AtomicU32],
    threads: usize,
    tx: tokio::sync::mpsc::Sender<StagedPack>,
) -> Result<UnitResults, EngineError> {
    let cursor = AtomicUsize::new(0);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let tx = tx.clone();
                let cursor = &cursor;
                s.spawn(move || worker(shared, entries, units, remaining, cursor, &tx))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(EngineError::Worker("worker panicked".into())))
            })
            .collect::<Vec<_>>()
    });
    drop(tx);
    let mut all = HashMap::new();
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

fn worker(
    shared: &Shared,
    entries: &[ScanEntry],
    units: &[Unit],
    remaining: &[AtomicU32],
    cursor: &AtomicUsize,
    tx: &tokio::sync::mpsc::Sender<StagedPack>,
) -> Result<UnitResults, EngineError> {
    let mut out = HashMap::new();
    let mut pack: Option<PackWriter> = None;
    let level = if shared.compression == Compression::Zstd {
        ZSTD_LEVEL
    } else {
        AUTO_LEVEL
    };
    let mut zstd =
        zstd::bulk::Compressor::new(level).map_err(|e| EngineError::Worker(e.to_string()))?;
    let mut buf = vec![0u8; SEGMENT as usize];
    let mut open: Option<(usize, File)> = None;
    let result = (|| {
        loop {
            // Another worker or the uploader failed and reports why; stop quietly.
            if shared.abort.load(Ordering::Relaxed) {
                if let Some(w) = pack.take() {
                    w.discard();
                }
                return Ok(());
            }
            let u = cursor.fetch_add(1, Ordering::Relaxed);
            let Some(unit) = units.get(u) else { break };
            let entry = &entries[unit.file];
            let err = |e: std::io::Error| EngineError::Source {
                path: entry.abs.display().to_string(),
                reason: e.to_string(),
            };
            if open.as_ref().map(|(i, _)| *i) != Some(unit.file) {
                open = Some((unit.file, open_scanned(entry)?));
            }
            let Some((_, file)) = open.as_ref() else {
                continue;
            };
            let want = unit.len as usize;
            let mut got = 0;
            while got < want {
                match file.read_at(&mut buf[got..want], unit.offset + got as u64) {
                    Ok(0) => break, // the file shrank while we read it: take what is there
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err(e)),
                }
            }
            let mut ids = Vec::with_capacity(got.div_ceil(shared.chunk_size));
            for chunk in buf[..got].chunks(shared.chunk_size) {
                let id = shared.key.chunk_id(chunk);
                shared.store_chunk(chunk, id, BlobKind::Data, &mut pack, &mut zstd, tx)?;
                ids.push(id);
                shared.progress.add_bytes(chunk.len() as u64);
            }
            out.insert(u, (ids, got as u64));
            if remaining[unit.file].fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.progress.add_file();
            }
        }
        if let Some(w) = pack.take() {
            shared.send(w, tx)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        if let Some(w) = pack.take() {
            w.discard();
        }
        shared.abort.store(true, Ordering::Relaxed);
        return Err(e);
    }
    Ok(out)
}
