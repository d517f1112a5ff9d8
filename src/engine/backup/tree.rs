//! The snapshot's file list (pure): every scanned entry with its chunks, from the workers'
//! results and the reused files, and the data keys the snapshot depends on.

use std::collections::{HashMap, HashSet};

use super::plan::Unit;
use super::scan::ScanEntry;
use super::workers::UnitResults;
use crate::engine::EngineError;
use crate::engine::crypto::ChunkId;
use crate::engine::format::{EntryKind, TreeEntry};
use crate::engine::repo::Index;

/// The file list and its totals.
#[derive(Debug)]
pub(super) struct Assembled {
    pub tree: Vec<TreeEntry>,
    pub files: u64,
    pub dirs: u64,
    pub logical: u64,
}

/// A unit's share of its file: offset, chunk ids, bytes read, bytes planned.
type Part = (u64, Vec<ChunkId>, u64, u64);

/// Each scanned entry in scan order; a file's chunks are its reused list, or its units' chunks
/// in offset order (its size is what was read, so a file that shrank while read is recorded
/// as read). A file read short in one unit and longer in a later one (it shrank and grew
/// while it was read) is refused: its chunks would not be where fixed chunking puts them,
/// and a restore checks that they are.
pub(super) fn assemble(
    entries: &[ScanEntry],
    units: &[Unit],
    mut results: UnitResults,
    mut reused: HashMap<usize, Vec<ChunkId>>,
) -> Result<Assembled, EngineError> {
    let mut by_file: HashMap<usize, Vec<Part>> = HashMap::new();
    for (u, (ids, read)) in results.drain() {
        let unit = &units[u];
        by_file
            .entry(unit.file)
            .or_default()
            .push((unit.offset, ids, read, unit.len));
    }
    let mut out = Assembled {
        tree: Vec::with_capacity(entries.len()),
        files: 0,
        dirs: 0,
        logical: 0,
    };
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
        match e.kind {
            EntryKind::File => {
                out.files += 1;
                if let Some(ids) = reused.remove(&i) {
                    entry.chunks = ids;
                    entry.size = e.size;
                } else if let Some(mut parts) = by_file.remove(&i) {
                    parts.sort_by_key(|p| p.0);
                    let mut short = false;
                    for (_, ids, read, len) in parts {
                        if short && read > 0 {
                            return Err(EngineError::Source {
                                path: e.abs.display().to_string(),
                                reason: "it shrank and grew again while it was read: back up a copy that is not being written (a volume snapshot or fsyncLock)".into(),
                            });
                        }
                        short |= read < len;
                        entry.chunks.extend(ids);
                        entry.size += read;
                    }
                }
                out.logical += entry.size;
            }
            EntryKind::Dir => out.dirs += 1,
            _ => {}
        }
        out.tree.push(entry);
    }
    Ok(out)
}

/// The data keys (hex ids) a snapshot depends on: those of the packs holding the chunks it
/// reuses from `known`, and `new_key`, which new data was written under. Sorted, unique.
pub(super) fn data_keys(tree: &[TreeEntry], known: &Index, new_key: &[u8; 16]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut seen_packs = HashSet::new();
    for c in tree.iter().flat_map(|e| &e.chunks) {
        if let Some(loc) = known.blobs.get(c)
            && seen_packs.insert(loc.pack)
        {
            keys.push(hex::encode(known.packs[loc.pack as usize].data_key_id));
        }
    }
    keys.push(hex::encode(new_key));
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rel: &str, kind: EntryKind, size: u64) -> ScanEntry {
        ScanEntry {
            rel: rel.into(),
            abs: format!("/src/{rel}").into(),
            kind,
            mode: 0o600,
            mtime_ns: 5,
            size,
            inode: 9,
            target: None,
        }
    }

    #[test]
    fn chunks_follow_offsets_and_reused_files_keep_their_lists() {
        let entries = vec![
            entry("db", EntryKind::Dir, 0),
            entry("db/a", EntryKind::File, 30),
            entry("db/b", EntryKind::File, 7),
        ];
        let units = vec![
            Unit {
                file: 1,
                offset: 0,
                len: 20,
            },
            Unit {
                file: 1,
                offset: 20,
                len: 10,
            },
        ];
        // Results arrive in any order; the second unit read less (the file shrank).
        let results: UnitResults = [(1, (vec![[2; 32]], 4)), (0, (vec![[1; 32]], 20))]
            .into_iter()
            .collect();
        let reused = [(2, vec![[3; 32]])].into_iter().collect();
        let a = assemble(&entries, &units, results, reused).unwrap();
        assert_eq!((a.files, a.dirs, a.logical), (2, 1, 24 + 7));
        assert_eq!(a.tree[1].chunks, vec![[1; 32], [2; 32]]);
        assert_eq!(a.tree[1].size, 24);
        assert_eq!(a.tree[2].chunks, vec![[3; 32]]);
        assert_eq!(a.tree[0].path, "db");
    }

    /// A file that shrank while read is recorded as read; one that shrank and grew again
    /// (a short unit before a longer one) is refused, never recorded with chunks out of place.
    #[test]
    fn a_file_that_shrank_and_grew_while_read_is_refused() {
        let entries = vec![
            entry("", EntryKind::Dir, 0),
            entry("f", EntryKind::File, 40),
        ];
        let units = vec![
            Unit {
                file: 1,
                offset: 0,
                len: 20,
            },
            Unit {
                file: 1,
                offset: 20,
                len: 20,
            },
        ];
        let run = |first: u64, second: u64| {
            let results: UnitResults = [(0, (vec![[1; 32]], first)), (1, (vec![], second))]
                .into_iter()
                .collect();
            assemble(&entries, &units, results, HashMap::new())
        };
        assert_eq!(run(20, 5).unwrap().tree[1].size, 25);
        assert_eq!(run(12, 0).unwrap().tree[1].size, 12);
        let e = run(12, 5).unwrap_err().to_string();
        assert!(e.contains("/src/f") && e.contains("shrank and grew"), "{e}");
    }

    #[test]
    fn data_keys_are_those_of_reused_packs_and_the_new_key() {
        use crate::engine::format::{BlobEntry, BlobKind};
        use crate::engine::repo::{BlobLoc, PackInfo};
        let mut known = Index::default();
        for (n, key) in [[0xaa; 16], [0xbb; 16]].into_iter().enumerate() {
            known.packs.push(PackInfo {
                id: format!("p{n}"),
                data_key_id: key,
                salt: [0; 32],
            });
        }
        let entry = BlobEntry {
            id: [1; 32],
            offset: 0,
            stored_len: 1,
            raw_len: 1,
            kind: BlobKind::Data,
            flags: 0,
        };
        known.blobs.insert(BlobLoc { pack: 1, entry });
        let mut file = TreeEntry {
            path: "f".into(),
            kind: EntryKind::File,
            mode: 0,
            mtime_ns: 0,
            size: 1,
            target: None,
            inode: 0,
            chunks: vec![[1; 32], [9; 32]],
        };
        assert_eq!(
            data_keys(std::slice::from_ref(&file), &known, &[0xcc; 16]),
            [hex::encode([0xbb; 16]), hex::encode([0xcc; 16])]
        );
        file.chunks.clear();
        assert_eq!(
            data_keys(&[file], &known, &[0xbb; 16]),
            [hex::encode([0xbb; 16])]
        );
    }
}
