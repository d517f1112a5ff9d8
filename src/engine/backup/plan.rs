//! What a backup reads (pure): the parent's files that can be reused as they are, and the
//! units of work (segments of files) for everything else.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;

use super::SEGMENT;
use super::scan::ScanEntry;
use crate::engine::crypto::ChunkId;
use crate::engine::format::{EntryKind, TreeEntry};
use crate::engine::repo::Index;

/// A unit of work: a segment of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Unit {
    /// The file's position in the scan.
    pub file: usize,
    pub offset: u64,
    pub len: u64,
}

/// What the workers do and what they skip.
#[derive(Debug)]
pub(super) struct Work {
    pub units: Vec<Unit>,
    /// Files reused from the parent, by position in the scan: their chunks and size.
    pub reused: HashMap<usize, (Vec<ChunkId>, u64)>,
    /// Units left per file (by position), so the last worker on a file counts it done.
    pub remaining: Vec<AtomicU32>,
}

/// The parent's files whose chunks are all in `index`, by path.
pub(super) fn reusable(tree: Vec<TreeEntry>, index: &Index) -> HashMap<String, TreeEntry> {
    tree.into_iter()
        .filter(|e| {
            e.kind == EntryKind::File && e.chunks.iter().all(|c| index.blobs.contains_key(c))
        })
        .map(|e| (e.path.clone(), e))
        .collect()
}

/// Reuse a file whose size, mtime, inode and mode match its parent entry; cut every other file
/// into [`SEGMENT`]-sized units (an empty file is one empty unit).
pub(super) fn plan_work(entries: &[ScanEntry], reuse: &HashMap<String, TreeEntry>) -> Work {
    let mut work = Work {
        units: Vec::new(),
        reused: HashMap::new(),
        remaining: Vec::with_capacity(entries.len()),
    };
    for (i, e) in entries.iter().enumerate() {
        let mut n = 0;
        if e.kind == EntryKind::File {
            match reuse.get(&e.rel) {
                Some(p)
                    if p.size == e.size
                        && p.mtime_ns == e.mtime_ns
                        && p.inode == e.inode
                        && p.mode == e.mode =>
                {
                    work.reused.insert(i, (p.chunks.clone(), e.size));
                }
                _ => {
                    let mut off = 0;
                    while off < e.size || (off == 0 && e.size == 0) {
                        let len = SEGMENT.min(e.size - off);
                        work.units.push(Unit {
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
        work.remaining.push(AtomicU32::new(n));
    }
    work
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn file(rel: &str, size: u64, mtime_ns: i128) -> ScanEntry {
        ScanEntry {
            rel: rel.into(),
            abs: format!("/src/{rel}").into(),
            kind: EntryKind::File,
            mode: 0o600,
            mtime_ns,
            size,
            inode: 7,
            target: None,
        }
    }

    fn parent(path: &str, size: u64, mtime_ns: i128) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o600,
            mtime_ns,
            size,
            target: None,
            inode: 7,
            chunks: vec![[1; 32]],
        }
    }

    #[test]
    fn unchanged_files_are_reused_and_the_rest_cut_into_segments() {
        let entries = vec![
            file("same", 10, 1),
            file("touched", 10, 1),
            file("big", 2 * SEGMENT + 1, 1),
            file("empty", 0, 1),
        ];
        let reuse: HashMap<String, TreeEntry> = [parent("same", 10, 1), parent("touched", 10, 2)]
            .into_iter()
            .map(|e| (e.path.clone(), e))
            .collect();
        let w = plan_work(&entries, &reuse);
        assert_eq!(w.reused.keys().copied().collect::<Vec<_>>(), [0]);
        assert_eq!(w.reused[&0], (vec![[1; 32]], 10));
        let cut: Vec<(usize, u64, u64)> =
            w.units.iter().map(|u| (u.file, u.offset, u.len)).collect();
        assert_eq!(
            cut,
            [
                (1, 0, 10),
                (2, 0, SEGMENT),
                (2, SEGMENT, SEGMENT),
                (2, 2 * SEGMENT, 1),
                (3, 0, 0)
            ]
        );
        let left: Vec<u32> = w
            .remaining
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect();
        assert_eq!(left, [0, 1, 3, 1]);
    }

    #[test]
    fn only_files_whose_chunks_are_all_present_are_reusable() {
        let mut index = Index::default();
        let mut gone = parent("gone", 1, 1);
        gone.chunks = vec![[2; 32]];
        let kept = parent("kept", 1, 1);
        let entry = crate::engine::format::BlobEntry {
            id: [1; 32],
            offset: 0,
            stored_len: 1,
            raw_len: 1,
            kind: crate::engine::format::BlobKind::Data,
            flags: 0,
        };
        index
            .blobs
            .insert(crate::engine::repo::BlobLoc { pack: 0, entry });
        let r = reusable(vec![gone, kept], &index);
        assert_eq!(r.keys().collect::<Vec<_>>(), ["kept"]);
    }
}
