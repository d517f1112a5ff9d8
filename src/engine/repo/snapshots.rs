//! Snapshot objects and their file lists.

use super::Repository;
use super::index::Index;
use crate::engine::EngineError;
use crate::engine::crypto::ChunkId;
use crate::engine::format::{ObjectKind, SnapshotManifest, TreeEntry};

impl Repository {
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

    /// The file list of a snapshot.
    pub async fn load_tree(
        &self,
        index: &Index,
        snap: &SnapshotManifest,
    ) -> Result<Vec<TreeEntry>, EngineError> {
        let mut compressed = Vec::new();
        for id_hex in &snap.tree {
            let id: ChunkId = hex::decode(id_hex)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| EngineError::Corrupt {
                    object: format!("snapshots/{}", snap.id),
                    reason: "bad tree id".into(),
                })?;
            compressed.extend_from_slice(&self.read_blob(index, &id).await?);
        }
        let corrupt = |reason: String| EngineError::Corrupt {
            object: format!("tree of snapshot {}", snap.id),
            reason,
        };
        // Decoded as it is parsed: the whole list as JSON (about 43 bytes a chunk, twice that
        // while its buffer grew) is never held beside the parsed list.
        let decoder = zstd::stream::read::Decoder::new(&compressed[..])
            .map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_reader(std::io::BufReader::with_capacity(64 * 1024, decoder))
            .map_err(|e| corrupt(e.to_string()))
    }
}
