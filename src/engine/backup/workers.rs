//! The backup's threads: the feeder hands out units of files (with the parent's chunk ids for
//! their offsets); a worker per core reads each, cuts it into chunks, skips chunks the parent
//! has at the same offset or this backup stored lately, compresses and seals the rest into
//! packs and hands full packs to the uploader; the file list is written as units finish.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use super::checkpoint::{Checkpoint, CheckpointWriter};
use super::feed::{Feeder, Out, Slot, Unit};
use super::scan::{ScanEntry, open_scanned};
use super::tree::{ABORTED, Assembler, Done, Totals};
use super::{BackupOptions, Compression, SEGMENT};
use crate::engine::beneath::Root;
use crate::engine::crypto::{ChunkId, DataKey};
use crate::engine::error::EngineError;
use crate::engine::format::{BlobKind, SnapshotManifest};
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

/// Ids of chunks this backup stored lately, so a chunk met again (a block of zeros, a page
/// copied) is stored once; in a fixed budget: two generations of [`RECENT`] ids, the older
/// dropped when the newer fills, an id met again moved to the newer. A chunk that has left it
/// is stored again (two copies of one blob are harmless; restore and prune take either).
#[derive(Default)]
pub(super) struct Recent {
    now: HashSet<ChunkId>,
    before: HashSet<ChunkId>,
}

/// Ids in each generation of [`Recent`]: about 2 MiB each.
const RECENT: usize = 32 * 1024;

impl Recent {
    /// True if `id` is new (the caller stores it); remembers it either way.
    pub(super) fn claim(&mut self, id: ChunkId) -> bool {
        if self.now.contains(&id) {
            return false;
        }
        let seen = self.before.remove(&id);
        if self.now.len() >= RECENT {
            self.before = std::mem::take(&mut self.now);
        }
        self.now.insert(id);
        !seen
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.now.len() + self.before.len()
    }
}

/// Shared state of the workers.
pub(super) struct Shared {
    key: Arc<DataKey>,
    recent: Mutex<Recent>,
    chunk_size: usize,
    pack_size: u64,
    compression: Compression,
    pub staging: PathBuf,
    pub progress: Arc<Progress>,
    /// Bytes added to the repository.
    pub stored: AtomicU64,
    /// Set by whoever fails first; everyone else stops quietly.
    pub abort: AtomicBool,
}

impl Shared {
    pub(super) fn new(
        repo: &Repository,
        key: Arc<DataKey>,
        opts: &BackupOptions,
        progress: Arc<Progress>,
    ) -> Result<Self, EngineError> {
        Ok(Shared {
            key,
            recent: Mutex::new(Recent::default()),
            chunk_size: repo.config.chunker.size as usize,
            pack_size: repo.config.pack_size,
            compression: opts.compression,
            staging: repo.backend.staging_dir()?.to_path_buf(),
            progress,
            stored: AtomicU64::new(0),
            abort: AtomicBool::new(false),
        })
    }

    /// Compress (where it pays) and add one chunk to `pack`, unless this backup stored it
    /// lately.
    fn store_chunk(
        &self,
        chunk: &[u8],
        id: ChunkId,
        kind: BlobKind,
        pack: &mut Option<PackWriter>,
        zstd: &mut zstd::bulk::Compressor<'static>,
        done: &tokio::sync::mpsc::Sender<StagedPack>,
    ) -> Result<(), EngineError> {
        self.progress
            .chunks_looked_up
            .fetch_add(1, Ordering::Relaxed);
        if !self
            .recent
            .lock()
            .map_err(|_| EngineError::Worker("lock poisoned".into()))?
            .claim(id)
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

/// What the backup's threads read besides [`Shared`].
pub(super) struct Inputs<'a> {
    /// The source's directory: every file is opened beneath it.
    pub root: &'a Root,
    pub entries: &'a [ScanEntry],
    /// The parent snapshot, and an index that locates its file list.
    pub parent: Option<(&'a Repository, &'a Index, &'a SnapshotManifest)>,
    /// A killed run's checkpoints, read as a parent before the parent.
    pub checkpoint: Option<(&'a Repository, &'a Checkpoint)>,
    pub handle: tokio::runtime::Handle,
    pub threads: usize,
    /// Files unchanged since the parent keep its chunks without being read.
    pub reuse_unchanged: bool,
}

/// Run the feeder, a worker per thread and the file list's writer (into `list`) until every
/// unit is stored; full packs go to `packs`. The writer and the list's totals.
pub(super) fn run_pipeline<W: std::io::Write>(
    shared: &Shared,
    input: &Inputs<'_>,
    (list, checkpoints): (W, Option<CheckpointWriter<'_>>),
    packs: tokio::sync::mpsc::Sender<StagedPack>,
) -> Result<(W, Totals), EngineError> {
    let threads = input.threads.max(1);
    // Bounded, so a part of a chunk list or a few units wait at a time, not the backup.
    let (slot_tx, slot_rx) = sync_channel::<Slot>(2);
    let (unit_tx, unit_rx) = sync_channel::<Unit>(threads * 2);
    let (done_tx, done_rx) = channel::<Done>();
    // The receiver goes with the last worker, so the feeder never waits on workers that left.
    let unit_rx = Arc::new(Mutex::new(unit_rx));
    std::thread::scope(|s| {
        let feeding =
            s.spawn(move || stop_all_on_error(shared, feed(shared, input, slot_tx, unit_tx)));
        let working: Vec<_> = (0..threads)
            .map(|_| {
                let (units, done, packs) = (unit_rx.clone(), done_tx.clone(), packs.clone());
                s.spawn(move || {
                    let r = worker(shared, (input.root, input.entries), &units, &done, &packs);
                    if r.is_err() || shared.abort.load(Ordering::Relaxed) {
                        // The unit it held will never be done: the file list's writer must
                        // not wait for it (nor the feeder for that writer).
                        let _ = done.send(Done::stopped());
                    }
                    stop_all_on_error(shared, r)
                })
            })
            .collect();
        drop((unit_rx, done_tx, packs));
        let assembled = Assembler::new(input.entries, &shared.progress, list)
            .with_checkpoints(checkpoints)
            .run(&slot_rx, &done_rx);
        let assembled = stop_all_on_error(shared, assembled);
        drop((slot_rx, done_rx));
        let panicked = |_| Err(EngineError::Worker("backup thread panicked".into()));
        let mut errors: Vec<EngineError> = working
            .into_iter()
            .chain([feeding])
            .filter_map(|h| h.join().unwrap_or_else(panicked).err())
            .collect();
        match assembled {
            Ok(out) if errors.is_empty() => Ok(out),
            Ok(_) => Err(errors.remove(0)),
            Err(e) => {
                errors.push(e);
                // The cause, not a thread that stopped because of it.
                let cause = errors
                    .iter()
                    .position(|e| !matches!(e, EngineError::Worker(m) if m == ABORTED));
                Err(errors.remove(cause.unwrap_or(0)))
            }
        }
    })
}

fn stop_all_on_error<T>(shared: &Shared, r: Result<T, EngineError>) -> Result<T, EngineError> {
    if r.is_err() {
        shared.abort.store(true, Ordering::Relaxed);
    }
    r
}

/// The feeder's thread: slots to the file list's writer, units to the workers.
fn feed(
    shared: &Shared,
    input: &Inputs<'_>,
    slots: SyncSender<Slot>,
    units: SyncSender<Unit>,
) -> Result<(), EngineError> {
    let mut feeder = Feeder::new(input.entries, shared.chunk_size as u32, &shared.progress);
    feeder.reuse_unchanged = input.reuse_unchanged;
    let mut out = |o: Out| {
        let sent = match o {
            Out::Slot(s) => slots.send(s).is_ok(),
            Out::Unit(u) => units.send(u).is_ok(),
        };
        sent.then_some(())
            .ok_or_else(|| EngineError::Worker(ABORTED.into()))
    };
    feeder.start(&mut out)?;
    // A killed run's files first: a file it listed is handed on from there, and the parent's
    // entry for it is then passed over.
    if let Some((repo, checkpoint)) = input.checkpoint {
        checkpoint.for_each_entry(repo, &input.handle, |e| feeder.parent_entry(e, &mut out))?;
    }
    if let Some((repo, index, snap)) = input.parent {
        repo.for_each_tree_entry(index, snap, &input.handle, |e| {
            feeder.parent_entry(e, &mut out)
        })?;
    }
    feeder.finish(&mut out)
}

fn worker(
    shared: &Shared,
    (root, entries): (&Root, &[ScanEntry]),
    units: &Mutex<Receiver<Unit>>,
    done: &Sender<Done>,
    tx: &tokio::sync::mpsc::Sender<StagedPack>,
) -> Result<(), EngineError> {
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
            // Another thread or the uploader failed and reports why; stop quietly.
            if shared.abort.load(Ordering::Relaxed) {
                if let Some(w) = pack.take() {
                    w.discard();
                }
                return Ok(());
            }
            let next = units
                .lock()
                .map_err(|_| EngineError::Worker("lock poisoned".into()))?
                .recv();
            let Ok(unit) = next else { break };
            let entry = &entries[unit.file];
            let err = |e: std::io::Error| EngineError::Source {
                path: entry.abs.display().to_string(),
                reason: e.to_string(),
            };
            if open.as_ref().map(|(i, _)| *i) != Some(unit.file) {
                open = Some((unit.file, open_scanned(root, entry)?));
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
            for (k, chunk) in buf[..got].chunks(shared.chunk_size).enumerate() {
                let id = shared.key.chunk_id(chunk);
                // The parent has this chunk at this offset: nothing to look up or store.
                if unit.parent.get(k) != Some(&id) {
                    shared.store_chunk(chunk, id, BlobKind::Data, &mut pack, &mut zstd, tx)?;
                }
                ids.push(id);
                shared.progress.add_bytes(chunk.len() as u64);
            }
            let finished = Done {
                seq: unit.seq,
                ids,
                read: got as u64,
                len: unit.len,
            };
            // The file list's writer stopped (and says why).
            if done.send(finished).is_err() {
                break;
            }
        }
        if let Some(w) = pack.take() {
            shared.send(w, tx)?;
        }
        Ok(())
    })();
    if result.is_err()
        && let Some(w) = pack.take()
    {
        w.discard();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory design, pinned: what a backup remembers of the chunks it stored is
    /// bounded, however many it stores; a chunk met again while remembered is not stored
    /// again, and one met again and again stays remembered.
    #[test]
    fn recent_chunks_are_remembered_in_a_fixed_budget() {
        let id = |n: u64| {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&n.to_le_bytes());
            id
        };
        let mut r = Recent::default();
        assert!(r.claim(id(0)));
        assert!(!r.claim(id(0)));
        for n in 1..(10 * RECENT as u64) {
            assert!(r.claim(id(n)), "{n}");
            // A block of zeros, met every 1000 chunks, is never stored twice.
            if n % 1000 == 0 {
                assert!(!r.claim(id(0)), "{n}");
            }
            assert!(r.len() <= 2 * RECENT);
        }
        // An id met only long ago has been let go: stored again, which is harmless.
        assert!(r.claim(id(1)));
    }
}
