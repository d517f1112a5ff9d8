//! The snapshot's file list, written as the backup goes: each slot the feeder hands on, in
//! order, with the chunk ids the workers found for each read file's units (which finish in
//! any order and wait here until their turn). A file of more than `PART_CHUNKS` chunks is
//! written a part at a time, so no whole chunk list is held.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::mpsc::Receiver;

use super::checkpoint::CheckpointWriter;
use super::feed::Slot;
use super::scan::ScanEntry;
use crate::engine::crypto::ChunkId;
use crate::engine::error::EngineError;
use crate::engine::format::{EntryKind, PART_CHUNKS, TreeEntry};
use crate::engine::progress::Progress;

/// What the workers found in one unit.
#[derive(Debug)]
pub(super) struct Done {
    pub seq: u64,
    pub ids: Vec<ChunkId>,
    /// Bytes read (less than `len` if the file shrank while it was read).
    pub read: u64,
    pub len: u64,
}

impl Done {
    /// The sequence number no unit has: a worker that stopped (an error, or the backup
    /// aborted) says so with it, so the file list's writer never waits for a unit that worker
    /// held (it waited forever while the feeder waited on it: found by tests/hostile_volumes.rs
    /// with a file swapped for a link after the scan).
    pub const STOPPED: u64 = u64::MAX;

    pub fn stopped() -> Self {
        Done {
            seq: Self::STOPPED,
            ids: Vec::new(),
            read: 0,
            len: 0,
        }
    }
}

/// The file list's totals.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub logical: u64,
}

/// Writes the file list as one JSON array of entries into `out`.
pub(super) struct Assembler<'a, W: Write> {
    entries: &'a [ScanEntry],
    progress: &'a Progress,
    out: W,
    written: u64,
    totals: Totals,
    /// Units finished ahead of their turn.
    early: BTreeMap<u64, Done>,
    /// Where each entry also goes, for a retry (none in tests of the list alone).
    checkpoints: Option<CheckpointWriter<'a>>,
}

impl<'a, W: Write> Assembler<'a, W> {
    pub(super) fn new(entries: &'a [ScanEntry], progress: &'a Progress, out: W) -> Self {
        Assembler {
            entries,
            progress,
            out,
            written: 0,
            totals: Totals::default(),
            early: BTreeMap::new(),
            checkpoints: None,
        }
    }

    /// Each entry also into `checkpoints`.
    pub(super) fn with_checkpoints(mut self, checkpoints: Option<CheckpointWriter<'a>>) -> Self {
        self.checkpoints = checkpoints;
        self
    }

    /// Write every slot as it comes, until the feeder is done; the writer and the totals.
    pub(super) fn run(
        mut self,
        slots: &Receiver<Slot>,
        done: &Receiver<Done>,
    ) -> Result<(W, Totals), EngineError> {
        self.out.write_all(b"[").map_err(write_err)?;
        while let Ok(slot) = slots.recv() {
            self.slot(slot, done)?;
        }
        self.out.write_all(b"]").map_err(write_err)?;
        Ok((self.out, self.totals))
    }

    fn slot(&mut self, slot: Slot, done: &Receiver<Done>) -> Result<(), EngineError> {
        match slot {
            Slot::Entry(i) => {
                if self.entries[i].kind == EntryKind::Dir {
                    self.totals.dirs += 1;
                }
                self.write(i, 0, Vec::new(), 0)
            }
            Slot::Reused { file, part, chunks } => {
                let size = match part {
                    0 => self.count_file(file),
                    _ => 0,
                };
                self.write(file, part, chunks, size)
            }
            Slot::Read { file, first, units } => self.read(file, first..first + units, done),
        }
    }

    fn count_file(&mut self, file: usize) -> u64 {
        let size = self.entries[file].size;
        self.totals.files += 1;
        self.totals.logical += size;
        size
    }

    /// A file that was read: its units' chunks in order, written a part at a time. Its size
    /// is what was read (a file that shrank while read is recorded as read), unless it is
    /// listed in parts, whose first part, written before the file is read to the end, holds
    /// its scanned size. A file read short in one unit and longer in a later one (it shrank
    /// and grew again) is refused: its chunks would not be where fixed chunking puts them.
    fn read(
        &mut self,
        file: usize,
        units: std::ops::Range<u64>,
        done: &Receiver<Done>,
    ) -> Result<(), EngineError> {
        let entries = self.entries;
        let e = &entries[file];
        let changed = |what: &str| EngineError::Source {
            path: e.abs.display().to_string(),
            reason: format!(
                "it {what} while it was read: back up a copy that is not being written (a volume snapshot or fsyncLock)"
            ),
        };
        let (mut ids, mut part, mut read, mut short) = (Vec::new(), 0u32, 0u64, false);
        for seq in units {
            let d = self.take(seq, done)?;
            if short && d.read > 0 {
                return Err(changed("shrank and grew again"));
            }
            short |= d.read < d.len;
            read += d.read;
            ids.extend(d.ids);
            while ids.len() >= PART_CHUNKS {
                let rest = ids.split_off(PART_CHUNKS);
                let size = if part == 0 { e.size } else { 0 };
                self.write(file, part, std::mem::replace(&mut ids, rest), size)?;
                part += 1;
            }
        }
        if part == 0 {
            self.write(file, 0, ids, read)?;
        } else if read != e.size {
            return Err(changed("changed size"));
        } else if !ids.is_empty() {
            self.write(file, part, ids, 0)?;
        }
        self.totals.files += 1;
        self.totals.logical += read;
        self.progress.add_file();
        Ok(())
    }

    /// Unit `seq`'s result: waiting for it, and keeping those that finish first.
    fn take(&mut self, seq: u64, done: &Receiver<Done>) -> Result<Done, EngineError> {
        loop {
            if let Some(d) = self.early.remove(&seq) {
                return Ok(d);
            }
            let d = done
                .recv()
                .map_err(|_| EngineError::Worker(ABORTED.into()))?;
            if d.seq == Done::STOPPED {
                return Err(EngineError::Worker(ABORTED.into()));
            }
            self.early.insert(d.seq, d);
        }
    }

    fn write(
        &mut self,
        i: usize,
        part: u32,
        chunks: Vec<ChunkId>,
        size: u64,
    ) -> Result<(), EngineError> {
        let e = &self.entries[i];
        let entry = TreeEntry {
            path: e.rel.clone(),
            kind: e.kind,
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            size,
            target: e.target.clone(),
            inode: e.inode,
            chunks,
            part,
        };
        if self.written > 0 {
            self.out.write_all(b",").map_err(write_err)?;
        }
        let json = serde_json::to_vec(&entry)?;
        self.out.write_all(&json).map_err(write_err)?;
        if let Some(c) = self.checkpoints.as_mut() {
            c.add(&json, entry.chunks.len());
        }
        self.written += 1;
        Ok(())
    }
}

/// What a thread of the backup says when it stopped because another failed (and that one's
/// error is the one reported).
pub(super) const ABORTED: &str = "stopped: another part of the backup failed";

fn write_err(e: std::io::Error) -> EngineError {
    EngineError::Worker(format!("writing the file list: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn entry(rel: &str, kind: EntryKind, size: u64) -> ScanEntry {
        ScanEntry {
            rel: rel.into(),
            abs: format!("/src/{rel}").into(),
            kind,
            mode: 0o600,
            mtime_ns: 5,
            size,
            inode: 9,
            dev: 0,
            target: None,
        }
    }

    fn assemble(
        entries: &[ScanEntry],
        slots: Vec<Slot>,
        done: Vec<Done>,
    ) -> Result<(Vec<TreeEntry>, Totals), EngineError> {
        let (stx, srx) = channel();
        let (dtx, drx) = channel();
        slots.into_iter().for_each(|s| stx.send(s).unwrap());
        done.into_iter().for_each(|d| dtx.send(d).unwrap());
        drop((stx, dtx));
        let progress = Progress::default();
        let (json, totals) = Assembler::new(entries, &progress, Vec::new()).run(&srx, &drx)?;
        Ok((serde_json::from_slice(&json).unwrap(), totals))
    }

    fn done(seq: u64, ids: Vec<ChunkId>, read: u64, len: u64) -> Done {
        Done {
            seq,
            ids,
            read,
            len,
        }
    }

    /// Units finish in any order and are written in theirs; a file that shrank while read is
    /// recorded as read; reused files keep their chunks.
    #[test]
    fn chunks_follow_their_units_and_reused_files_keep_their_lists() {
        let entries = vec![
            entry("", EntryKind::Dir, 0),
            entry("a", EntryKind::File, 30),
            entry("b", EntryKind::File, 7),
        ];
        let slots = vec![
            Slot::Entry(0),
            Slot::Read {
                file: 1,
                first: 0,
                units: 2,
            },
            Slot::Reused {
                file: 2,
                part: 0,
                chunks: vec![[3; 32]],
            },
        ];
        // The second unit finished first, and read less (the file shrank).
        let results = vec![
            done(1, vec![[2; 32]], 4, 10),
            done(0, vec![[1; 32]], 20, 20),
        ];
        let (tree, totals) = assemble(&entries, slots, results).unwrap();
        assert_eq!(
            totals,
            Totals {
                files: 2,
                dirs: 1,
                logical: 24 + 7
            }
        );
        assert_eq!(tree[1].chunks, vec![[1; 32], [2; 32]]);
        assert_eq!(tree[1].size, 24);
        assert_eq!((tree[2].chunks.clone(), tree[2].size), (vec![[3; 32]], 7));
        assert_eq!(tree[0].path, "");
    }

    /// A file that shrank and grew again while read is refused, never listed with chunks out
    /// of place.
    #[test]
    fn a_file_that_shrank_and_grew_while_read_is_refused() {
        let entries = vec![
            entry("", EntryKind::Dir, 0),
            entry("f", EntryKind::File, 40),
        ];
        let run = |first: u64, second: u64| {
            let slots = vec![Slot::Read {
                file: 1,
                first: 0,
                units: 2,
            }];
            let results = vec![
                done(0, vec![[1; 32]], first, 20),
                done(1, vec![], second, 20),
            ];
            assemble(&entries, slots, results)
        };
        assert_eq!(run(20, 5).unwrap().0[0].size, 25);
        assert_eq!(run(12, 0).unwrap().0[0].size, 12);
        let e = run(12, 5).unwrap_err().to_string();
        assert!(e.contains("/src/f") && e.contains("shrank and grew"), "{e}");
    }

    /// A file of more than PART_CHUNKS chunks is written in parts: the first with the size,
    /// the next with the rest; a listed-in-parts file whose read size differs is refused.
    #[test]
    fn a_long_chunk_list_is_written_in_parts() {
        let n = PART_CHUNKS as u64 + 1;
        let entries = vec![entry("big", EntryKind::File, n)];
        let slots = || {
            vec![Slot::Read {
                file: 0,
                first: 0,
                units: n,
            }]
        };
        let results = |last: u64| {
            (0..n)
                .map(|s| done(s, vec![[s as u8; 32]], if s + 1 == n { last } else { 1 }, 1))
                .collect::<Vec<_>>()
        };
        let (tree, totals) = assemble(&entries, slots(), results(1)).unwrap();
        assert_eq!(tree.len(), 2);
        assert_eq!(
            (tree[0].part, tree[0].size, tree[0].chunks.len()),
            (0, n, PART_CHUNKS)
        );
        assert_eq!(
            (tree[1].part, tree[1].size, tree[1].chunks.len()),
            (1, 0, 1)
        );
        assert_eq!((totals.files, totals.logical), (1, n));
        let e = assemble(&entries, slots(), results(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed size"), "{e}");
    }
}
