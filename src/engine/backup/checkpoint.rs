//! Checkpoints of a backup under way. Every `--checkpoint-every`, and every fiftieth of the
//! source listed (and whenever the part not yet checkpointed passes [`SEGMENT_BUDGET`]), the
//! file-list entries written since the last checkpoint go to a new sealed object
//! `checkpoints/<run id>.<n>`. A run killed before its
//! snapshot object (an evicted pod, a lost node, a killed CLI) leaves them, and the next backup
//! of the same source and host reads them as its first parent: a file they list keeps its
//! chunks (those the repository serves; an id it does not serve is stored again), so the retry
//! reads and stores again only what the killed run had not finished or not committed.
//!
//! A checkpoint is never a snapshot: nothing lists or restores it, a run's checkpoints are
//! deleted when it (or the run that took them over) writes its snapshot, and prune deletes any
//! older than its grace (no backup runs while prune holds the exclusive lock). They live
//! where deleting is allowed under object lock and with the writer's credentials.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{ID_PREFIX, SORT_BUDGET, each_unserved, id_prefix};
use crate::engine::crypto::{ChunkId, DataKey};
use crate::engine::error::EngineError;
use crate::engine::format::{BlobKind, EntryKind, ObjectKind, TreeEntry};
use crate::engine::repo::{CheckpointHead, Repository, checkpoint_name};
use crate::engine::spill::Sorter;

/// Bytes of entries (JSON) a checkpoint holds at most: it is written when they pass this,
/// whatever the interval, so memory and each object stay small.
const SEGMENT_BUDGET: usize = 8 * 1024 * 1024;
/// Ids a checkpoint may name that the repository does not serve before it is not used at all
/// (a healthy one lacks only what was in flight: a few packs).
const UNSERVED_MAX: usize = 1 << 20;
/// The least data between two checkpoints by size (below it, only the interval counts).
const MIN_CHUNKS_BYTES: u64 = 16 << 20;

/// Writes a run's checkpoints as the file list is written.
pub(super) struct CheckpointWriter<'a> {
    repo: &'a Repository,
    key: &'a DataKey,
    handle: tokio::runtime::Handle,
    run: String,
    /// `{...head...,"entries":[`
    prefix: Vec<u8>,
    /// None: checkpoints are off (asked so, or one failed to be written).
    every: Option<Duration>,
    last: Instant,
    /// Chunks listed between two checkpoints at most, whatever the interval: a fiftieth of the
    /// source (at least [`MIN_CHUNKS_BYTES`]), so a short backup is checkpointed too.
    every_chunks: u64,
    chunks: u64,
    entries: Vec<u8>,
    seq: u32,
}

impl<'a> CheckpointWriter<'a> {
    /// The writer of run `run` of `source` on `hostname`, started at `started`.
    pub(super) fn new(
        repo: &'a Repository,
        key: &'a DataKey,
        handle: tokio::runtime::Handle,
        run: &str,
        (source, hostname, started): (&str, &str, &str),
        every: Option<Duration>,
        (source_bytes, chunk_size): (u64, u64),
    ) -> Result<Self, EngineError> {
        let head = CheckpointHead {
            source: source.into(),
            hostname: hostname.into(),
            started: started.into(),
            data_key: hex::encode(key.id),
        };
        let mut prefix = serde_json::to_vec(&head)?;
        prefix.pop(); // the closing brace
        prefix.extend_from_slice(br#","entries":["#);
        Ok(CheckpointWriter {
            repo,
            key,
            handle,
            run: run.into(),
            prefix,
            every,
            last: Instant::now(),
            every_chunks: (source_bytes / 50).max(MIN_CHUNKS_BYTES) / chunk_size.max(1),
            chunks: 0,
            entries: Vec::new(),
            seq: 0,
        })
    }

    /// One more entry of the file list (its JSON, and the chunks it lists); a checkpoint when
    /// one is due.
    pub(super) fn add(&mut self, entry: &[u8], chunks: usize) {
        let Some(every) = self.every else {
            return;
        };
        if !self.entries.is_empty() {
            self.entries.push(b',');
        }
        self.entries.extend_from_slice(entry);
        self.chunks += chunks as u64;
        if self.entries.len() >= SEGMENT_BUDGET
            || self.chunks >= self.every_chunks
            || self.last.elapsed() >= every
        {
            self.flush();
        }
    }

    /// Write what is buffered as the next checkpoint. A checkpoint that cannot be written
    /// turns checkpoints off for this run (the backup goes on: they only spare a retry work).
    fn flush(&mut self) {
        if self.entries.is_empty() {
            return;
        }
        let name = checkpoint_name(&self.run, self.seq);
        let mut body = std::mem::take(&mut self.prefix);
        body.extend_from_slice(&self.entries);
        body.extend_from_slice(b"]}");
        let written = zstd::bulk::compress(&body, 3)
            .map_err(|e| EngineError::Worker(format!("compressing a checkpoint: {e}")))
            .and_then(|z| {
                self.handle.block_on(self.repo.put_sealed(
                    self.key,
                    ObjectKind::Checkpoint,
                    &name,
                    z,
                ))
            });
        body.truncate(body.len() - self.entries.len() - 2);
        self.prefix = body;
        self.entries.clear();
        self.chunks = 0;
        self.last = Instant::now();
        match written {
            Ok(()) => self.seq += 1,
            Err(e) => {
                tracing::warn!(object = %name, error = %e, "could not write a checkpoint: this backup goes on without (a retry after it is killed starts over)");
                self.every = None;
            }
        }
    }
}

/// A killed run's checkpoints, checked against the repository, for a retry to continue from.
pub(super) struct Checkpoint {
    pub run: String,
    names: Vec<String>,
    /// The data key its chunks were stored under (hex).
    pub data_key: String,
    /// Id prefixes it names that the repository does not serve: never taken as stored.
    unserved: HashSet<[u8; ID_PREFIX]>,
    /// Files (by position among the files it lists) holding such an id, and the last file
    /// (which the run may not have finished): read again, never taken as unchanged.
    reread: HashSet<u32>,
}

/// The newest run of `source` on `host` that left checkpoints and no snapshot, checked
/// against the index: None when there is none, or it cannot be read or used (a retry then
/// simply starts over).
pub(super) async fn find_checkpoint(
    repo: &Repository,
    source: &str,
    host: &str,
) -> Result<Option<Checkpoint>, EngineError> {
    let mut best: Option<(jiff::Timestamp, String, Vec<String>, String)> = None;
    for (run, names) in repo.checkpoint_runs().await? {
        if repo.backend.exists(&format!("snapshots/{run}")).await? {
            continue;
        }
        let Some(last) = names.last() else { continue };
        let head = match repo.read_checkpoint(last).await {
            Ok(s) => s.head,
            Err(e) => {
                tracing::warn!(object = %last, error = %e, "an unreadable checkpoint is not used");
                continue;
            }
        };
        if head.source != source || head.hostname != host {
            continue;
        }
        let Ok(started) = head.started.parse::<jiff::Timestamp>() else {
            continue;
        };
        if best.as_ref().is_none_or(|(newest, ..)| started > *newest) {
            best = Some((started, run, names, head.data_key));
        }
    }
    let Some((_, run, names, data_key)) = best else {
        return Ok(None);
    };
    match check(repo, &names).await {
        Ok(Some((unserved, reread))) => Ok(Some(Checkpoint {
            run,
            names,
            data_key,
            unserved,
            reread,
        })),
        Ok(None) => Ok(None),
        Err(EngineError::Corrupt { object, reason }) => {
            tracing::warn!(%object, %reason, "an unreadable checkpoint is not used");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The ids `names` list that no index serves, and the files holding them (with the last
/// file); None past [`UNSERVED_MAX`]. Sorted streams spilled past their budget, as the parent
/// check: no structure grows with the repository.
type Checked = (HashSet<[u8; ID_PREFIX]>, HashSet<u32>);

async fn check(repo: &Repository, names: &[String]) -> Result<Option<Checked>, EngineError> {
    let mut served = Sorter::<ID_PREFIX>::in_temp_dir(SORT_BUDGET);
    repo.for_each_index_pack(|_, entries| {
        for e in entries.iter().filter(|e| e.kind == BlobKind::Data) {
            served.push(id_prefix(&e.id))?;
        }
        Ok(())
    })
    .await?;
    // (id prefix, file position), sorted by id.
    let mut wanted = Sorter::<{ ID_PREFIX + 4 }>::in_temp_dir(SORT_BUDGET);
    let mut files: u32 = 0;
    for name in names {
        for e in repo.read_checkpoint(name).await?.entries {
            if e.kind != EntryKind::File {
                continue;
            }
            if e.part == 0 {
                files += 1;
            }
            for id in &e.chunks {
                let mut rec = [0u8; ID_PREFIX + 4];
                rec[..ID_PREFIX].copy_from_slice(&id_prefix(id));
                rec[ID_PREFIX..].copy_from_slice(&(files - 1).to_be_bytes());
                wanted.push(rec)?;
            }
        }
    }
    let mut unserved = HashSet::new();
    let mut reread: HashSet<u32> = HashSet::from([files.saturating_sub(1)]);
    each_unserved(wanted.finish()?, served.finish()?, |w| {
        let mut id = [0u8; ID_PREFIX];
        id.copy_from_slice(&w[..ID_PREFIX]);
        unserved.insert(id);
        let mut file = [0u8; 4];
        file.copy_from_slice(&w[ID_PREFIX..]);
        reread.insert(u32::from_be_bytes(file));
        unserved.len() <= UNSERVED_MAX
    })?;
    if unserved.len() > UNSERVED_MAX {
        tracing::warn!(
            "a checkpoint names more chunks the repository lacks than a killed run leaves in flight: not used"
        );
        return Ok(None);
    }
    Ok(Some((unserved, reread)))
}

impl Checkpoint {
    /// Its entries in order, as a parent's: an id the repository does not serve never
    /// matches a chunk (it is stored again), and a file holding one, or the last file, never
    /// looks unchanged (it is read again).
    pub(super) fn for_each_entry(
        &self,
        repo: &Repository,
        handle: &tokio::runtime::Handle,
        mut f: impl FnMut(TreeEntry) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut files: u32 = 0;
        for name in &self.names {
            let seg = handle.block_on(repo.read_checkpoint(name))?;
            for mut e in seg.entries {
                if e.kind == EntryKind::File {
                    if e.part == 0 {
                        files += 1;
                        if self.reread.contains(&(files - 1)) {
                            // No scanned file has this time: never taken as unchanged.
                            e.mtime_ns = i128::MIN;
                        }
                    }
                    for id in e.chunks.iter_mut() {
                        if self.unserved.contains(&id_prefix(id)) {
                            *id = NEVER;
                        }
                    }
                }
                f(e)?;
            }
        }
        Ok(())
    }
}

/// An id no chunk has (keyed BLAKE3 never yields it in practice): where a checkpoint named a
/// chunk the repository lacks, so the chunk read there is stored.
const NEVER: ChunkId = [0u8; 32];
