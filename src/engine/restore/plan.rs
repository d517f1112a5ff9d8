//! What a restore reads (pure): the file list checked as hostile input, and for every pack
//! the blobs it holds and where each goes.

use std::collections::{HashMap, HashSet};

use crate::engine::EngineError;
use crate::engine::crypto::ChunkId;
use crate::engine::format::{EntryKind, TreeEntry};
use crate::engine::repo::{BlobLoc, Index};

/// Where one chunk goes: file index and offset.
pub(super) type Targets = Vec<(usize, u64)>;

/// One pack's share of a restore: its blobs in offset order, each with where it goes.
pub(super) type PackReads = (u32, Vec<(BlobLoc, Targets)>);

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

/// Where every chunk of the files goes, grouped by pack (packs and blobs in order). A chunk no
/// index has, or chunks that do not add up to the file's size, make the snapshot corrupt.
pub(super) fn plan_reads(
    tree: &[TreeEntry],
    index: &Index,
    snapshot: &str,
) -> Result<Vec<PackReads>, EngineError> {
    // Where every chunk goes, grouped by pack.
    let mut wanted: HashMap<ChunkId, Targets> = HashMap::new();
    for (i, e) in tree.iter().enumerate() {
        if e.kind != EntryKind::File {
            continue;
        }
        let mut off = 0u64;
        for id in &e.chunks {
            let loc = index.blobs.get(id).ok_or_else(|| EngineError::Corrupt {
                object: format!("snapshots/{snapshot}"),
                reason: format!(
                    "{} needs blob {}, which no index has",
                    e.path,
                    hex::encode(id)
                ),
            })?;
            wanted.entry(*id).or_default().push((i, off));
            off += u64::from(loc.entry.raw_len);
        }
        if off != e.size {
            return Err(EngineError::Corrupt {
                object: format!("snapshots/{snapshot}"),
                reason: format!(
                    "{}: chunks add up to {off} bytes, the file has {}",
                    e.path, e.size
                ),
            });
        }
    }
    let mut by_pack: HashMap<u32, Vec<(BlobLoc, Targets)>> = HashMap::new();
    for (id, targets) in wanted {
        let loc = index.blobs[&id];
        by_pack.entry(loc.pack).or_default().push((loc, targets));
    }
    let mut jobs: Vec<PackReads> = by_pack.into_iter().collect();
    jobs.sort_by_key(|j| j.0);
    for (_, blobs) in &mut jobs {
        blobs.sort_by_key(|b| b.0.entry.offset);
    }
    Ok(jobs)
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
}
