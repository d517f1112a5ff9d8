//! The workers: every core reads segments of files, cuts them into chunks, skips chunks the
//! repository or another worker has, compresses and seals the rest into packs, and hands full
//! packs to the uploader.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::plan::Unit;
use super::scan::{ScanEntry, open_scanned};
use super::{BackupOptions, Compression, SEGMENT};
use crate::engine::EngineError;
use crate::engine::crypto::{ChunkId, DataKey};
use crate::engine::format::BlobKind;
use crate::engine::pack::{PackWriter, StagedPack};
use crate::engine::progress::Progress;
use crate::engine::repo::{Index, Repository};

/// zstd level of `auto`. Level 1 stores 5% less than the fast levels (-3, -1), which is what
/// brings a repository below restic's on a dbPath of half compressed pages, for about 40%
/// more backup time than level -3 (still about a fifth of restic's); level 2 and above store
/// no less and cost more (the table is in bench/RESULTS.md).
const AUTO_LEVEL: i32 = 1;
/// zstd level of `zstd`.
const ZSTD_LEVEL: i32 = 1;

/// Shared state of the workers.
pub(super) struct Shared {
    key: Arc<DataKey>,
    /// What the repository had when the backup started.
    pub known: Index,
    claimed: Mutex<HashSet<ChunkId>>,
    chunk_size: usize,
    pack_size: u64,
    compression: Compression,
    pub staging: PathBuf,
    progress: Arc<Progress>,
    /// Bytes added to the repository.
    pub stored: AtomicU64,
    new_blobs: AtomicU64,
    /// Set by whoever fails first; everyone else stops quietly.
    pub abort: AtomicBool,
}

impl Shared {
    pub(super) fn new(
        repo: &Repository,
        key: Arc<DataKey>,
        known: Index,
        opts: &BackupOptions,
        progress: Arc<Progress>,
    ) -> Result<Self, EngineError> {
        Ok(Shared {
            key,
            known,
            claimed: Mutex::new(HashSet::new()),
            chunk_size: repo.config.chunker.size as usize,
            pack_size: repo.config.pack_size,
            compression: opts.compression,
            staging: repo.backend.staging_dir()?.to_path_buf(),
            progress,
            stored: AtomicU64::new(0),
            new_blobs: AtomicU64::new(0),
            abort: AtomicBool::new(false),
        })
    }

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

/// The chunk ids and bytes read of each unit, by position.
pub(super) type UnitResults = HashMap<usize, (Vec<ChunkId>, u64)>;

pub(super) fn run_workers(
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
