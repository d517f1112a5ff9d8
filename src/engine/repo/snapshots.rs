//! Snapshot objects and their file lists.

use std::collections::HashSet;

use super::Repository;
use super::index::Index;
use crate::engine::crypto::ChunkId;
use crate::engine::error::EngineError;
use crate::engine::format::{EntryKind, ObjectKind, PART_CHUNKS, SnapshotManifest, TreeEntry};

/// `unfinished/<snapshot id>`: the file-list pieces of a snapshot being written (by a backup,
/// before its file list is committed) or forgotten (by prune, before its snapshot object is
/// deleted). While no snapshot names them they are what an interrupted backup or prune left,
/// not the trace of a deleted snapshot: verify does not count them as damage, and prune
/// removes them and then the record. Plain JSON, like prune's garbage marks.
pub const UNFINISHED_DIR: &str = "unfinished";

#[derive(serde::Serialize, serde::Deserialize)]
struct Unfinished {
    /// "backup" or "prune".
    by: String,
    /// The file list's pieces (hex blob ids).
    trees: Vec<String>,
}

impl Repository {
    /// Record that the file list `trees` of snapshot `id` may be left without its snapshot.
    pub async fn put_unfinished(
        &self,
        id: &str,
        trees: &[String],
        by: &str,
    ) -> Result<(), EngineError> {
        let record = Unfinished {
            by: by.into(),
            trees: trees.to_vec(),
        };
        self.backend
            .put(
                &format!("{UNFINISHED_DIR}/{id}"),
                serde_json::to_vec(&record)?,
            )
            .await?;
        Ok(())
    }

    /// The record is no longer needed (a missing one is no error).
    pub async fn delete_unfinished(&self, id: &str) -> Result<(), EngineError> {
        Ok(self
            .backend
            .delete(&format!("{UNFINISHED_DIR}/{id}"))
            .await?)
    }

    /// Every unfinished record: its object name and the pieces it names. A record that cannot
    /// be read names nothing (it then excuses nothing).
    pub async fn unfinished(&self) -> Result<Vec<(String, Vec<String>)>, EngineError> {
        let mut out = Vec::new();
        for (name, _) in self.backend.list(UNFINISHED_DIR).await? {
            let trees = match self.backend.get(&name).await {
                Ok(bytes) => parse_unfinished(&bytes).unwrap_or_default(),
                Err(crate::engine::backend::BackendError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            out.push((name, trees));
        }
        Ok(out)
    }

    /// Every snapshot manifest, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotManifest>, EngineError> {
        let names = self.backend.list("snapshots").await?;
        let mut out = futures::future::try_join_all(names.iter().map(|(name, _)| async move {
            let plain = self.get_sealed(ObjectKind::Snapshot, name).await?;
            serde_json::from_slice::<SnapshotManifest>(&plain).map_err(|e| EngineError::Corrupt {
                object: name.clone(),
                reason: e.to_string(),
            })
        }))
        .await?;
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Find a snapshot by id, unique id prefix, or `latest`.
    pub async fn find_snapshot(&self, which: &str) -> Result<SnapshotManifest, EngineError> {
        let all = self.snapshots().await?;
        let found: Vec<_> = if which == "latest" {
            all.last().cloned().into_iter().collect()
        } else {
            all.into_iter()
                .filter(|s| s.id.starts_with(which))
                .collect()
        };
        match found.len() {
            1 => Ok(found.into_iter().next().unwrap_or_else(|| unreachable!())),
            0 => Err(EngineError::NoSuchSnapshot {
                which: which.into(),
            }),
            n => Err(EngineError::AmbiguousSnapshot {
                which: which.into(),
                count: n,
            }),
        }
    }

    /// Hand every entry of a snapshot's file list to `f`, in order, as it is read, a file
    /// listed in parts part by part (checked to follow each other): neither the
    /// list nor its compressed pieces are held whole (the pieces are fetched one at a time as
    /// the decoder needs them). Blocks the calling thread on the store: call it from a
    /// blocking context (`block_in_place`) of a multi-threaded runtime.
    pub fn for_each_tree_entry(
        &self,
        index: &Index,
        snap: &SnapshotManifest,
        handle: &tokio::runtime::Handle,
        f: impl FnMut(TreeEntry) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let pieces = Pieces {
            repo: self,
            index,
            handle,
            ids: tree_ids(snap)?.into_iter(),
            piece: Vec::new(),
            pos: 0,
            failed: None,
        };
        let mut pieces = pieces;
        let r = each_entry(&mut pieces, &snap.id, f);
        match pieces.failed.take() {
            Some(e) => Err(e),
            None => r,
        }
    }
}

/// A whole compressed file list as entries, a file listed in parts as one entry (the parts
/// are checked to follow each other as they are read).
pub(super) fn decode_tree(
    compressed: &[u8],
    snapshot: &str,
) -> Result<Vec<TreeEntry>, EngineError> {
    let mut tree: Vec<TreeEntry> = Vec::new();
    each_entry(compressed, snapshot, |e| {
        match tree.last_mut() {
            Some(head) if e.part > 0 => head.chunks.extend(e.chunks),
            _ => tree.push(e),
        }
        Ok(())
    })?;
    Ok(tree)
}

/// Whether `bytes` are an unfinished record (`unfinished/<id>`), as prune and verify read it.
pub(super) fn parse_unfinished(bytes: &[u8]) -> Option<Vec<String>> {
    serde_json::from_slice::<Unfinished>(bytes)
        .ok()
        .map(|u| u.trees)
}

/// The ids of the blobs a snapshot's compressed file list is stored in, in order.
pub(crate) fn tree_ids(snap: &SnapshotManifest) -> Result<Vec<ChunkId>, EngineError> {
    snap.tree
        .iter()
        .map(|id_hex| {
            hex::decode(id_hex)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| EngineError::Corrupt {
                    object: format!("snapshots/{}", snap.id),
                    reason: "bad tree id".into(),
                })
        })
        .collect()
}

/// Decode a compressed file list (zstd of a JSON array of entries) and hand each entry to `f`
/// as it is parsed: the list as JSON is never held, and as entries only as long as `f` keeps
/// them.
fn each_entry(
    compressed: impl std::io::Read,
    snapshot: &str,
    mut f: impl FnMut(TreeEntry) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};
    struct Each<'f>(
        &'f mut dyn FnMut(TreeEntry) -> Result<(), EngineError>,
        &'f mut Option<EngineError>,
    );
    impl<'de> Visitor<'de> for Each<'_> {
        type Value = ();
        fn expecting(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
            out.write_str("a list of file entries")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(e) = seq.next_element::<TreeEntry>()? {
                if let Err(e) = (self.0)(e) {
                    *self.1 = Some(e);
                    return Err(A::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let corrupt = |reason: String| EngineError::Corrupt {
        object: format!("tree of snapshot {snapshot}"),
        reason,
    };
    let decoder =
        zstd::stream::read::Decoder::new(compressed).map_err(|e| corrupt(e.to_string()))?;
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(
        64 * 1024,
        decoder,
    ));
    let mut stopped = None;
    let mut last: Option<(String, u32, usize)> = None;
    let mut checked = |e: TreeEntry| {
        if e.part > 0 {
            let follows = last.as_ref().is_some_and(|(path, part, chunks)| {
                *path == e.path && *part + 1 == e.part && *chunks == PART_CHUNKS
            });
            if !follows || e.kind != EntryKind::File || e.size != 0 {
                return Err(corrupt(format!(
                    "file list entry {:?}: part {} does not follow a part {} of the same file with {PART_CHUNKS} chunks",
                    e.path,
                    e.part,
                    e.part - 1
                )));
            }
        }
        last = Some((e.path.clone(), e.part, e.chunks.len()));
        f(e)
    };
    let parsed = de
        .deserialize_seq(Each(&mut checked, &mut stopped))
        .and_then(|()| de.end());
    match (stopped, parsed) {
        (Some(e), _) => Err(e),
        (None, r) => r.map_err(|e| corrupt(e.to_string())),
    }
}

/// A snapshot's compressed file list as one reader: its pieces fetched one at a time.
struct Pieces<'a> {
    repo: &'a Repository,
    index: &'a Index,
    handle: &'a tokio::runtime::Handle,
    ids: std::vec::IntoIter<ChunkId>,
    piece: Vec<u8>,
    pos: usize,
    /// Why a fetch failed (the reader can only say "other" to the decoder).
    failed: Option<EngineError>,
}

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.piece.len() {
            let Some(id) = self.ids.next() else {
                return Ok(0);
            };
            match self.handle.block_on(self.repo.read_blob(self.index, &id)) {
                Ok(piece) => (self.piece, self.pos) = (piece, 0),
                Err(e) => {
                    self.failed = Some(e);
                    return Err(std::io::Error::other("a piece of the file list failed"));
                }
            }
        }
        let n = out.len().min(self.piece.len() - self.pos);
        out[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
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
