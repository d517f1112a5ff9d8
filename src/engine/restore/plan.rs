//! What a restore reads: the file list checked as hostile input (pure), and every place a
//! blob goes, found by joining the file list's chunks with the index and ordered by pack,
//! both through external sorts (`engine/spill.rs`), so no per-chunk structure is held.

use crate::engine::crypto::ChunkId;
use crate::engine::error::EngineError;
use crate::engine::format::{BlobEntry, BlobKind, EntryKind, TreeEntry};
use crate::engine::repo::BlobLoc;
pub use crate::engine::repo::check_tree;
use crate::engine::spill::{Sorter, SpillError};

/// A chunk the file list wants: its id, file (position in the tree) and chunk number, big-endian
/// so that records sort by id.
pub(super) const WANT: usize = 32 + 4 + 4;
/// A blob of the index: id, pack (its position in order of preference, so the preferred copy
/// of a blob sorts first), then where it is in the pack.
pub(super) const BLOB: usize = 32 + 4 + 4 + 4 + 4 + 1 + 1;
/// A place a blob goes: pack, offset in the pack, file and chunk number first (sorted, a
/// restore reads every pack once, front to back), then the blob's id and lengths.
pub(super) const PLACE: usize = 4 + 4 + 4 + 4 + 32 + 4 + 4 + 1 + 1;

pub(super) fn want_record(id: &ChunkId, file: u32, chunk: u32) -> [u8; WANT] {
    let mut r = [0u8; WANT];
    r[..32].copy_from_slice(id);
    r[32..36].copy_from_slice(&file.to_be_bytes());
    r[36..].copy_from_slice(&chunk.to_be_bytes());
    r
}

pub(super) fn blob_record(loc: &BlobLoc) -> [u8; BLOB] {
    let mut r = [0u8; BLOB];
    r[..32].copy_from_slice(&loc.entry.id);
    r[32..36].copy_from_slice(&loc.pack.to_be_bytes());
    put_lengths(&mut r[36..], &loc.entry);
    r
}

/// Offset, stored and raw length, kind and flags of a blob (14 bytes).
fn put_lengths(out: &mut [u8], e: &BlobEntry) {
    out[..4].copy_from_slice(&e.offset.to_be_bytes());
    out[4..8].copy_from_slice(&e.stored_len.to_be_bytes());
    out[8..12].copy_from_slice(&e.raw_len.to_be_bytes());
    out[12] = e.kind as u8;
    out[13] = e.flags;
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A blob entry from its id, offset and the rest of a record: stored and raw length, kind,
/// flags.
fn entry_at(id: &[u8], offset: u32, rest: &[u8]) -> BlobEntry {
    let mut entry_id = [0u8; 32];
    entry_id.copy_from_slice(id);
    BlobEntry {
        id: entry_id,
        offset,
        stored_len: u32_at(rest, 0),
        raw_len: u32_at(rest, 4),
        // Records are ours, made from index entries already checked.
        kind: if rest[8] == BlobKind::Tree as u8 {
            BlobKind::Tree
        } else {
            BlobKind::Data
        },
        flags: rest[9],
    }
}

/// One place a blob goes: where the blob is, and the file (position in the tree) and offset
/// its plaintext is written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Placement {
    pub pack: u32,
    pub entry: BlobEntry,
    pub file: usize,
    pub offset: u64,
}

impl Placement {
    /// Decode a [`PLACE`] record; `chunk_size` turns its chunk number into an offset.
    pub(super) fn decode(r: &[u8; PLACE], chunk_size: u32) -> Self {
        let offset = u64::from(u32_at(r, 12)) * u64::from(chunk_size);
        Placement {
            pack: u32_at(r, 0),
            entry: entry_at(&r[16..48], u32_at(r, 4), &r[48..]),
            file: u32_at(r, 8) as usize,
            offset,
        }
    }
}

/// Each file's chunk count must be what fixed chunking of its size gives (every chunk full
/// but the last), so a chunk's number is its offset. Pure.
pub(super) fn check_shapes(
    tree: &[TreeEntry],
    chunks: &[u32],
    chunk_size: u32,
    snapshot: &str,
) -> Result<(), EngineError> {
    for (e, n) in tree.iter().zip(chunks) {
        if e.kind == EntryKind::File && u64::from(*n) != e.size.div_ceil(u64::from(chunk_size)) {
            return Err(EngineError::Corrupt {
                object: format!("snapshots/{snapshot}"),
                reason: format!(
                    "{}: {n} chunks do not make a {}-byte file in {chunk_size}-byte chunks",
                    e.path, e.size
                ),
            });
        }
    }
    Ok(())
}

/// Join the wanted chunks (sorted by id) with the index's blobs (sorted by id, preferred
/// copy first) into placements, each checked to have the length its place needs. A chunk no
/// index has makes the snapshot corrupt. Streams: holds one record of each side.
pub(super) fn join(
    wanted: impl Iterator<Item = Result<[u8; WANT], SpillError>>,
    mut blobs: impl Iterator<Item = Result<[u8; BLOB], SpillError>>,
    (tree, chunks): (&[TreeEntry], &[u32]),
    chunk_size: u32,
    snapshot: &str,
    out: &mut Sorter<PLACE>,
) -> Result<(), EngineError> {
    let corrupt = |reason: String| EngineError::Corrupt {
        object: format!("snapshots/{snapshot}"),
        reason,
    };
    let mut blob: Option<[u8; BLOB]> = None;
    for w in wanted {
        let w = w?;
        let id = &w[..32];
        while blob.as_ref().is_none_or(|b| &b[..32] < id) {
            match blobs.next() {
                Some(b) => blob = Some(b?),
                None => break,
            }
        }
        let (file, chunk) = (u32_at(&w, 32), u32_at(&w, 36));
        let e = &tree[file as usize];
        let b = match &blob {
            Some(b) if &b[..32] == id => b,
            _ => {
                return Err(corrupt(format!(
                    "{} needs blob {}, which no index has",
                    e.path,
                    hex::encode(id)
                )));
            }
        };
        let raw = u32_at(b, 44);
        let want = if chunk + 1 < chunks[file as usize] {
            u64::from(chunk_size)
        } else {
            e.size - u64::from(chunk) * u64::from(chunk_size)
        };
        if u64::from(raw) != want {
            return Err(corrupt(format!(
                "{}: chunk {chunk} holds {raw} bytes, where {want} belong",
                e.path
            )));
        }
        let mut p = [0u8; PLACE];
        p[..4].copy_from_slice(&b[32..36]);
        p[4..8].copy_from_slice(&b[36..40]);
        p[8..16].copy_from_slice(&w[32..40]);
        p[16..48].copy_from_slice(id);
        p[48..].copy_from_slice(&b[40..]);
        out.push(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime_ns: 0,
            size: 0,
            target: (kind == EntryKind::Symlink).then(|| "/etc/passwd".into()),
            inode: 0,
            chunks: vec![],
            part: 0,
        }
    }

    /// Item 3 of the data-safety issue: a file list from the repository is untrusted; paths
    /// that could leave the target or pass through a link are refused before anything is
    /// written.
    #[test]
    fn item03_hostile_file_lists_are_refused() {
        use EntryKind::{Dir, File, Symlink};
        let ok = [vec![("", Dir), ("a", Dir), ("a/b", File), ("l", Symlink)]];
        for t in ok {
            let tree: Vec<_> = t.iter().map(|(p, k)| entry(p, *k)).collect();
            check_tree(&tree, "s").unwrap();
        }
        let bad: [(&[(&str, EntryKind)], &str); 9] = [
            (&[("", Dir), ("../x", File)], "plain relative"),
            (&[("", Dir), ("/etc/passwd", File)], "plain relative"),
            (
                &[("", Dir), ("a", Dir), ("a/../../x", File)],
                "plain relative",
            ),
            (&[("", Dir), ("./x", File)], "plain relative"),
            (&[("", Dir), ("a//b", File)], "plain relative"),
            (
                &[("", Dir), ("l", Symlink), ("l/passwd", File)],
                "parent is not a directory",
            ),
            (&[("", Dir), ("x/y", File)], "parent is not a directory"),
            (&[("", Dir), ("x", File), ("x", File)], "listed twice"),
            (&[("x", File)], "root directory"),
        ];
        for (t, why) in bad {
            let tree: Vec<_> = t.iter().map(|(p, k)| entry(p, *k)).collect();
            let e = check_tree(&tree, "s").unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("nothing was written"),
                "{t:?}: {e}"
            );
        }
    }

    fn blob(id: u8, pack: u32, offset: u32, raw_len: u32) -> BlobLoc {
        BlobLoc {
            pack,
            entry: BlobEntry {
                id: [id; 32],
                offset,
                stored_len: raw_len + 16,
                raw_len,
                kind: BlobKind::Data,
                flags: 1,
            },
        }
    }

    /// Join a tree's chunks with `blobs` through sorters of a tiny budget (so both sides and
    /// the placements go through scratch files), and decode the placements in order.
    fn placements(
        tree: &[TreeEntry],
        blobs: &[BlobLoc],
        chunk_size: u32,
    ) -> Result<Vec<Placement>, EngineError> {
        let dir = tempfile::tempdir().unwrap();
        let mut wanted = Sorter::<WANT>::new(dir.path().into(), 0);
        let mut index = Sorter::<BLOB>::new(dir.path().into(), 0);
        let mut out = Sorter::<PLACE>::new(dir.path().into(), 0);
        let mut chunks = Vec::new();
        for (f, e) in tree.iter().enumerate() {
            chunks.push(e.chunks.len() as u32);
            for (n, id) in e.chunks.iter().enumerate() {
                wanted.push(want_record(id, f as u32, n as u32)).unwrap();
            }
        }
        for b in blobs {
            index.push(blob_record(b)).unwrap();
        }
        check_shapes(tree, &chunks, chunk_size, "s")?;
        join(
            wanted.finish().unwrap(),
            index.finish().unwrap(),
            (tree, &chunks),
            chunk_size,
            "s",
            &mut out,
        )?;
        Ok(out
            .finish()
            .unwrap()
            .map(|r| Placement::decode(&r.unwrap(), chunk_size))
            .collect())
    }

    /// The memory design, pinned: a restore holds no per-chunk structure. The file list's
    /// chunks and the index are joined by external sorts; the placements come out in pack
    /// and offset order, a blob placed twice side by side (read and opened once), the
    /// preferred copy of a blob in two packs (the earlier pack) chosen, and offsets made from
    /// chunk numbers.
    #[test]
    fn placements_are_joined_by_external_sorts_in_pack_order() {
        let mut f = entry("f", EntryKind::File);
        f.chunks = vec![[2; 32], [3; 32], [1; 32], [2; 32]];
        f.size = 3 * 4 + 2;
        let mut g = entry("g", EntryKind::File);
        g.chunks = vec![[1; 32]];
        g.size = 4;
        let tree = vec![entry("", EntryKind::Dir), f, g];
        let blobs = [
            blob(3, 1, 0, 4),
            blob(1, 0, 0, 4),
            blob(2, 0, 20, 4),
            // A second copy of blob 1, in a pack less preferred.
            blob(1, 2, 0, 4),
        ];
        // Blob 2 also ends the file, where only 2 bytes belong: refused, naming the chunk.
        let e = placements(&tree, &blobs, 4).unwrap_err().to_string();
        assert!(
            e.contains("f: chunk 3 holds 4 bytes, where 2 belong"),
            "{e}"
        );
        let mut tree = tree;
        tree[1].size = 16;
        let got: Vec<(u32, u32, usize, u64)> = placements(&tree, &blobs, 4)
            .unwrap()
            .iter()
            .map(|p| (p.pack, p.entry.offset, p.file, p.offset))
            .collect();
        assert_eq!(
            got,
            [
                (0, 0, 1, 8),
                (0, 0, 2, 0),
                (0, 20, 1, 0),
                (0, 20, 1, 12),
                (1, 0, 1, 4)
            ]
        );
        let p = placements(&tree, &blobs, 4).unwrap()[0];
        assert_eq!(p.entry, blobs[1].entry);
    }

    #[test]
    fn a_chunk_no_index_has_or_a_file_of_the_wrong_shape_is_corrupt() {
        let mut f = entry("db/f", EntryKind::File);
        f.chunks = vec![[1; 32], [9; 32]];
        f.size = 8;
        let tree = vec![entry("", EntryKind::Dir), f];
        let blobs = [blob(1, 0, 0, 4)];
        let e = placements(&tree, &blobs, 4).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "db/f needs blob {}, which no index has",
                hex::encode([9; 32])
            )),
            "{e}"
        );
        let mut tree = tree;
        tree[1].size = 9;
        let e = placements(&tree, &blobs, 4).unwrap_err().to_string();
        assert!(
            e.contains("db/f: 2 chunks do not make a 9-byte file in 4-byte chunks"),
            "{e}"
        );
    }
}
