//! What a restore reads (pure): the file list checked as hostile input, and for every pack
//! the blobs it holds and where each goes.

use std::collections::HashSet;
use std::ops::Range;

use crate::engine::EngineError;
use crate::engine::format::{EntryKind, TreeEntry};
use crate::engine::repo::{BlobLoc, Index};

/// Check a snapshot's file list before anything is written: every path relative, made of
/// plain names (no `..`, `.`, empty or absolute parts), listed once, under a directory listed
/// before it. A repository is untrusted input: a path that could leave the target, or pass
/// through a symlink the restore creates, is refused.
pub fn check_tree(tree: &[TreeEntry], snapshot: &str) -> Result<(), EngineError> {
    let bad = |path: &str, reason: &str| EngineError::Corrupt {
        object: format!("snapshots/{snapshot}"),
        reason: format!("file list entry {path:?}: {reason}; nothing was written"),
    };
    let mut dirs: HashSet<&str> = HashSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, e) in tree.iter().enumerate() {
        if i == 0 {
            if !e.path.is_empty() || e.kind != EntryKind::Dir {
                return Err(bad(&e.path, "the first entry must be the root directory"));
            }
            dirs.insert("");
            seen.insert("");
            continue;
        }
        if e.path.is_empty()
            || e.path.contains('\0')
            || e.path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad(&e.path, "not a plain relative path"));
        }
        if !seen.insert(&e.path) {
            return Err(bad(&e.path, "listed twice"));
        }
        let parent = e.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        if !dirs.contains(parent) {
            return Err(bad(
                &e.path,
                "its parent is not a directory listed before it",
            ));
        }
        if e.kind == EntryKind::Dir {
            dirs.insert(&e.path);
        }
    }
    Ok(())
}

/// One place a blob goes: where the blob is, and the file (index into the tree) and offset
/// its plaintext is written to.
#[derive(Clone, Copy, Debug)]
pub(super) struct Placement<'i> {
    pub loc: &'i BlobLoc,
    pub file: usize,
    pub offset: u64,
}

/// Every placement of a restore, sorted by pack and by offset in the pack (a blob that goes
/// to several places has its placements side by side), and each pack's range of them.
/// 24 bytes per chunk of the snapshot.
pub(super) struct Plan<'i> {
    pub placements: Vec<Placement<'i>>,
    pub packs: Vec<Range<usize>>,
}

/// Where every chunk of the files goes, grouped by pack. A chunk no index has, or chunks that
/// do not add up to the file's size, make the snapshot corrupt.
pub(super) fn plan_reads<'i>(
    tree: &[TreeEntry],
    index: &'i Index,
    snapshot: &str,
) -> Result<Plan<'i>, EngineError> {
    let chunks = tree.iter().map(|e| e.chunks.len()).sum();
    let mut placements = Vec::with_capacity(chunks);
    for (file, e) in tree.iter().enumerate() {
        if e.kind != EntryKind::File {
            continue;
        }
        let mut offset = 0u64;
        for id in &e.chunks {
            let loc = index.blobs.get(id).ok_or_else(|| EngineError::Corrupt {
                object: format!("snapshots/{snapshot}"),
                reason: format!(
                    "{} needs blob {}, which no index has",
                    e.path,
                    hex::encode(id)
                ),
            })?;
            placements.push(Placement { loc, file, offset });
            offset += u64::from(loc.entry.raw_len);
        }
        if offset != e.size {
            return Err(EngineError::Corrupt {
                object: format!("snapshots/{snapshot}"),
                reason: format!(
                    "{}: chunks add up to {offset} bytes, the file has {}",
                    e.path, e.size
                ),
            });
        }
    }
    placements.sort_unstable_by_key(|p| (p.loc.pack, p.loc.entry.offset, p.file, p.offset));
    let mut packs: Vec<Range<usize>> = Vec::new();
    for (i, p) in placements.iter().enumerate() {
        match packs.last_mut() {
            Some(r) if placements[r.start].loc.pack == p.loc.pack => r.end = i + 1,
            _ => packs.push(i..i + 1),
        }
    }
    Ok(Plan { placements, packs })
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

    /// The memory design, pinned: a restore's plan is one 24-byte placement per chunk, and a
    /// blob placed twice (the same chunk at two offsets) is planned side by side, so it is
    /// read and opened once.
    #[test]
    fn the_plan_is_24_bytes_a_chunk_and_groups_a_blob() {
        use crate::engine::format::{BlobEntry, BlobKind};
        use crate::engine::repo::{IndexBuilder, PackInfo};
        assert_eq!(std::mem::size_of::<Placement>(), 24);
        let blob = |id: u8, offset: u32| BlobEntry {
            id: [id; 32],
            offset,
            stored_len: 10,
            raw_len: 4,
            kind: BlobKind::Data,
            flags: 0,
        };
        let pack = |n: u8| PackInfo {
            id: format!("{n:064}"),
            data_key_id: [0; 16],
            salt: [0; 32],
        };
        let mut index = IndexBuilder::default();
        index.add(pack(0), vec![blob(1, 0), blob(2, 10)]);
        index.add(pack(1), vec![blob(3, 0)]);
        let index = index.finish();
        let mut file = entry("f", EntryKind::File);
        file.chunks = vec![[2; 32], [3; 32], [1; 32], [2; 32]];
        file.size = 16;
        let tree = vec![entry("", EntryKind::Dir), file];
        let plan = plan_reads(&tree, &index, "s").unwrap();
        let got: Vec<(u32, u32, u64)> = plan
            .placements
            .iter()
            .map(|p| (p.loc.pack, p.loc.entry.offset, p.offset))
            .collect();
        assert_eq!(got, [(0, 0, 8), (0, 10, 0), (0, 10, 12), (1, 0, 4)]);
        assert_eq!(plan.packs, [0..3, 3..4]);
    }
}
