//! What a backup reads, in order: the parent's file list streamed beside the scan. A file
//! whose size, mtime, inode and mode match its parent entry keeps the parent's chunks without
//! being read; every other file is cut into units, each carrying the parent's chunk ids for
//! the same offsets, so the workers store only chunks that differ. Holds one part of one
//! file's chunk list at a time, never the index or a whole list.
//!
//! Order of the new file list: directories and symlinks (scan order, so each comes after its
//! directory), then files in the parent list's order, then files the parent did not have (scan
//! order).

use std::collections::HashMap;

use super::SEGMENT;
use super::scan::ScanEntry;
use crate::engine::crypto::ChunkId;
use crate::engine::error::EngineError;
use crate::engine::format::{EntryKind, PART_CHUNKS, TreeEntry};
use crate::engine::progress::Progress;

/// A unit of work: a segment of one file, and the parent's chunk ids for the same offsets
/// (fewer, or none, where the parent's file was shorter or absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Unit {
    /// Position among all units of the backup.
    pub seq: u64,
    /// The file's position in the scan.
    pub file: usize,
    pub offset: u64,
    pub len: u64,
    pub parent: Vec<ChunkId>,
}

/// What the file list holds next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    /// A directory or symlink, as scanned.
    Entry(usize),
    /// A part of a file reused from the parent as it is.
    Reused {
        file: usize,
        part: u32,
        chunks: Vec<ChunkId>,
    },
    /// A file read in `units` units, numbered from `first`.
    Read { file: usize, first: u64, units: u64 },
}

/// What the feeder hands on: slots to the file list's writer, units to the workers.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Out {
    Slot(Slot),
    Unit(Unit),
}

/// A file being cut into units as its parent's parts arrive.
struct Reading {
    file: usize,
    /// Units handed on so far, and in all.
    done: u64,
    total: u64,
}

/// The parent file the parts that follow belong to.
enum Current {
    None,
    Reused(usize),
    Read(Reading),
}

pub(super) struct Feeder<'a> {
    entries: &'a [ScanEntry],
    chunk_size: u64,
    progress: &'a Progress,
    /// Scanned files by path, and whether each has been handed on.
    files: HashMap<&'a str, usize>,
    handed: Vec<bool>,
    current: Current,
    next_seq: u64,
    /// Files whose metadata matches the parent's keep its chunks unread (else every file is
    /// read, compared with the parent's chunks at the same offsets).
    pub reuse_unchanged: bool,
}

type Emit<'e> = &'e mut dyn FnMut(Out) -> Result<(), EngineError>;

impl<'a> Feeder<'a> {
    pub(super) fn new(entries: &'a [ScanEntry], chunk_size: u32, progress: &'a Progress) -> Self {
        let files = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::File)
            .map(|(i, e)| (e.rel.as_str(), i))
            .collect();
        Feeder {
            entries,
            chunk_size: u64::from(chunk_size),
            progress,
            files,
            handed: vec![false; entries.len()],
            current: Current::None,
            next_seq: 0,
            reuse_unchanged: true,
        }
    }

    /// Directories and symlinks first.
    pub(super) fn start(&mut self, out: Emit) -> Result<(), EngineError> {
        for (i, e) in self.entries.iter().enumerate() {
            if e.kind != EntryKind::File {
                out(Out::Slot(Slot::Entry(i)))?;
            }
        }
        Ok(())
    }

    /// The parent's next entry (or part of one).
    pub(super) fn parent_entry(&mut self, p: TreeEntry, out: Emit) -> Result<(), EngineError> {
        if p.kind != EntryKind::File {
            return Ok(());
        }
        if p.part > 0 {
            return match &mut self.current {
                Current::Reused(file) => out(Out::Slot(Slot::Reused {
                    file: *file,
                    part: p.part,
                    chunks: p.chunks,
                })),
                Current::Read(_) => self.units(p.part, &p.chunks, out),
                Current::None => Ok(()),
            };
        }
        self.flush(out)?;
        let Some(&i) = self.files.get(p.path.as_str()) else {
            return Ok(());
        };
        if std::mem::replace(&mut self.handed[i], true) {
            return Ok(());
        }
        let e = &self.entries[i];
        if self.reuse_unchanged
            && p.size == e.size
            && p.mtime_ns == e.mtime_ns
            && p.inode == e.inode
            && p.mode == e.mode
        {
            self.progress.add_bytes(e.size);
            self.progress.add_file();
            self.current = Current::Reused(i);
            return out(Out::Slot(Slot::Reused {
                file: i,
                part: 0,
                chunks: p.chunks,
            }));
        }
        self.read(i, out)?;
        self.units(0, &p.chunks, out)
    }

    /// After the parent's list: the rest of the file being read, then every file the parent
    /// did not have.
    pub(super) fn finish(&mut self, out: Emit) -> Result<(), EngineError> {
        self.flush(out)?;
        for i in 0..self.entries.len() {
            if self.entries[i].kind == EntryKind::File && !self.handed[i] {
                self.handed[i] = true;
                self.read(i, out)?;
                self.flush(out)?;
            }
        }
        Ok(())
    }

    /// Start reading file `i`: its slot, with the units it will be cut into.
    fn read(&mut self, i: usize, out: Emit) -> Result<(), EngineError> {
        let total = self.entries[i].size.div_ceil(SEGMENT).max(1);
        out(Out::Slot(Slot::Read {
            file: i,
            first: self.next_seq,
            units: total,
        }))?;
        self.current = Current::Read(Reading {
            file: i,
            done: 0,
            total,
        });
        Ok(())
    }

    /// The units of the file being read that lie in part `part`, with the parent's chunk ids
    /// of that part (a part is a whole number of units).
    fn units(&mut self, part: u32, ids: &[ChunkId], out: Emit) -> Result<(), EngineError> {
        let per_part = PART_CHUNKS as u64 * self.chunk_size;
        let part_start = u64::from(part) * per_part;
        self.emit_until(Some((part_start, part_start + per_part, ids)), out)
    }

    /// The rest of the file being read, without parent ids.
    fn flush(&mut self, out: Emit) -> Result<(), EngineError> {
        self.emit_until(None, out)?;
        self.current = Current::None;
        Ok(())
    }

    /// Hand on the units of the file being read that start before `until`'s end (all, with
    /// none), with the parent ids of the part `until` describes.
    fn emit_until(
        &mut self,
        until: Option<(u64, u64, &[ChunkId])>,
        out: Emit,
    ) -> Result<(), EngineError> {
        let Current::Read(r) = &mut self.current else {
            return Ok(());
        };
        let size = self.entries[r.file].size;
        while r.done < r.total {
            let offset = r.done * SEGMENT;
            let len = SEGMENT.min(size - offset);
            let parent = match until {
                Some((_, end, _)) if offset >= end => break,
                Some((start, _, ids)) if offset >= start => {
                    let first = ((offset - start) / self.chunk_size) as usize;
                    let n = len.div_ceil(self.chunk_size) as usize;
                    ids.get(first..(first + n).min(ids.len()))
                        .unwrap_or_default()
                        .to_vec()
                }
                _ => Vec::new(),
            };
            out(Out::Unit(Unit {
                seq: self.next_seq,
                file: r.file,
                offset,
                len,
                parent,
            }))?;
            self.next_seq += 1;
            r.done += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(rel: &str, kind: EntryKind, size: u64, mtime_ns: i128) -> ScanEntry {
        ScanEntry {
            rel: rel.into(),
            abs: format!("/src/{rel}").into(),
            kind,
            mode: 0o600,
            mtime_ns,
            size,
            inode: 7,
            dev: 0,
            target: None,
        }
    }

    fn parent(path: &str, size: u64, mtime_ns: i128, chunks: Vec<ChunkId>) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o600,
            mtime_ns,
            size,
            target: None,
            inode: 7,
            chunks,
            part: 0,
        }
    }

    fn run(entries: &[ScanEntry], chunk_size: u32, parent: Vec<TreeEntry>) -> Vec<Out> {
        let progress = Progress::default();
        let mut f = Feeder::new(entries, chunk_size, &progress);
        let mut got = Vec::new();
        let mut out = |o: Out| {
            got.push(o);
            Ok(())
        };
        f.start(&mut out).unwrap();
        for p in parent {
            f.parent_entry(p, &mut out).unwrap();
        }
        f.finish(&mut out).unwrap();
        got
    }

    fn id(n: u64) -> ChunkId {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id
    }

    /// Unchanged files keep the parent's chunks unread; a changed file's units carry the
    /// parent's ids for their own offsets; files the parent lacks come last, in scan order;
    /// directories first.
    #[test]
    fn units_carry_the_parents_chunks_for_their_offsets() {
        const C: u64 = SEGMENT / 2; // two chunks a unit
        let entries = vec![
            scanned("", EntryKind::Dir, 0, 1),
            scanned("new", EntryKind::File, 0, 1),
            scanned("same", EntryKind::File, 10, 1),
            scanned("touched", EntryKind::File, 2 * SEGMENT + 1, 2),
            scanned("z", EntryKind::Dir, 0, 1),
        ];
        let parent_list = vec![
            parent("touched", 2 * SEGMENT, 1, (0..4).map(id).collect()),
            parent("gone", 5, 1, vec![id(9)]),
            parent("same", 10, 1, vec![id(7)]),
        ];
        let got = run(&entries, C as u32, parent_list);
        let unit = |seq, offset, len, parent: Vec<ChunkId>| {
            Out::Unit(Unit {
                seq,
                file: 3,
                offset,
                len,
                parent,
            })
        };
        assert_eq!(
            got,
            [
                Out::Slot(Slot::Entry(0)),
                Out::Slot(Slot::Entry(4)),
                Out::Slot(Slot::Read {
                    file: 3,
                    first: 0,
                    units: 3
                }),
                unit(0, 0, SEGMENT, vec![id(0), id(1)]),
                unit(1, SEGMENT, SEGMENT, vec![id(2), id(3)]),
                unit(2, 2 * SEGMENT, 1, vec![]),
                Out::Slot(Slot::Reused {
                    file: 2,
                    part: 0,
                    chunks: vec![id(7)]
                }),
                Out::Slot(Slot::Read {
                    file: 1,
                    first: 3,
                    units: 1
                }),
                Out::Unit(Unit {
                    seq: 3,
                    file: 1,
                    offset: 0,
                    len: 0,
                    parent: vec![]
                }),
            ]
        );
    }

    /// A file listed in parts: each part's ids go to the units of that part's offsets, and
    /// a reused file's parts are reused part by part.
    #[test]
    fn a_parent_listed_in_parts_is_followed_part_by_part() {
        // 4 MiB chunks: a unit is one chunk, a part PART_CHUNKS units.
        let c = SEGMENT;
        let part_bytes = PART_CHUNKS as u64 * c;
        let entries = vec![
            scanned("", EntryKind::Dir, 0, 1),
            scanned("big", EntryKind::File, part_bytes + 2 * c, 2),
            scanned("kept", EntryKind::File, part_bytes + c, 1),
        ];
        let ids = |from: u64, n: u64| (from..from + n).map(id).collect::<Vec<_>>();
        let mut big = parent("big", part_bytes + c, 1, ids(0, PART_CHUNKS as u64));
        let mut big2 = big.clone();
        (big2.part, big2.chunks, big2.size) = (1, ids(PART_CHUNKS as u64, 1), 0);
        let kept = parent("kept", part_bytes + c, 1, ids(100, PART_CHUNKS as u64));
        let mut kept2 = kept.clone();
        (kept2.part, kept2.chunks, kept2.size) = (1, vec![id(5)], 0);
        big.size = part_bytes + c;
        let got = run(&entries, c as u32, vec![big, big2, kept, kept2]);
        let units: Vec<(u64, Vec<ChunkId>)> = got
            .iter()
            .filter_map(|o| match o {
                Out::Unit(u) => Some((u.offset / c, u.parent.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(units.len(), PART_CHUNKS + 2);
        assert_eq!(units[0], (0, vec![id(0)]));
        assert_eq!(units[PART_CHUNKS - 1].1, vec![id(PART_CHUNKS as u64 - 1)]);
        assert_eq!(
            units[PART_CHUNKS],
            (PART_CHUNKS as u64, vec![id(PART_CHUNKS as u64)])
        );
        // The big file grew by a chunk: its last unit has no parent id.
        assert_eq!(units[PART_CHUNKS + 1], (PART_CHUNKS as u64 + 1, vec![]));
        let reused: Vec<(usize, u32, usize)> = got
            .iter()
            .filter_map(|o| match o {
                Out::Slot(Slot::Reused { file, part, chunks }) => {
                    Some((*file, *part, chunks.len()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(reused, [(2, 0, PART_CHUNKS), (2, 1, 1)]);
    }
}
