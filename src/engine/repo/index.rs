//! The index: where every blob is, from the index objects (one per pack), preferring packs
//! that exist and are not marked for deletion; and the deletion marks themselves.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};

use super::Repository;
use super::blob_map::BlobMap;
use crate::engine::backend::BackendError;
use crate::engine::crypto::DataKey;
use crate::engine::error::EngineError;
use crate::engine::format::{BlobEntry, ObjectKind};
use crate::engine::pack::{StagedPack, parse_pack_header};

/// Where a blob is.
#[derive(Clone, Copy, Debug)]
pub struct BlobLoc {
    pub pack: u32,
    pub entry: BlobEntry,
}

/// A pack as the index knows it.
#[derive(Clone, Debug)]
pub struct PackInfo {
    pub id: String,
    pub data_key_id: [u8; 16],
    pub salt: [u8; 32],
}

/// Where prune marks packs for deletion (two-phase deletion: docs/REPOSITORY.md).
pub const GARBAGE_DIR: &str = "garbage";

/// `garbage/<pack id>`: the pack is unused and goes once the mark is older than the grace.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GarbageMark {
    /// When prune marked it (RFC 3339, prune's clock).
    pub marked: String,
    /// The pack's size.
    pub bytes: u64,
}

/// A pack or object id as the repository names them: 64 lowercase hex digits.
pub fn is_object_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every blob of the repository, from the index objects.
#[derive(Default, Debug)]
pub struct Index {
    pub packs: Vec<PackInfo>,
    pub blobs: BlobMap,
}

/// An index being read: packs in order of preference, then [`IndexBuilder::finish`].
#[derive(Default)]
pub struct IndexBuilder {
    packs: Vec<PackInfo>,
    locs: Vec<BlobLoc>,
}

impl IndexBuilder {
    /// Add a pack and its blobs; where a blob is also in a pack added earlier, that one is
    /// kept.
    pub fn add(&mut self, pack: PackInfo, entries: Vec<BlobEntry>) {
        let n = self.packs.len() as u32;
        self.packs.push(pack);
        self.locs
            .extend(entries.into_iter().map(|entry| BlobLoc { pack: n, entry }));
    }

    pub fn finish(self) -> Index {
        Index {
            packs: self.packs,
            blobs: BlobMap::from_preferred(self.locs),
        }
    }
}

impl Repository {
    /// Store the index object of a committed pack.
    pub async fn put_index(&self, key: &DataKey, pack: &StagedPack) -> Result<(), EngineError> {
        let mut plain = Vec::with_capacity(pack.header.len() + pack.entries.len() * 46);
        plain.extend_from_slice(&pack.header);
        for e in &pack.entries {
            e.encode(&mut plain);
        }
        self.put_sealed(key, ObjectKind::Index, &format!("index/{}", pack.id), plain)
            .await
    }

    /// The blobs index object `index/ID` lists, read on their own (a pack read whole, or
    /// repacked).
    pub async fn index_entries(&self, id: &str) -> Result<Vec<BlobEntry>, EngineError> {
        let name = format!("index/{id}");
        let plain = self.get_sealed(ObjectKind::Index, &name).await?;
        BlobEntry::decode_all(
            plain
                .get(crate::engine::format::PACK_HEADER_LEN..)
                .unwrap_or_default(),
        )
        .ok_or_else(|| EngineError::Corrupt {
            object: name,
            reason: "bad contents".into(),
        })
    }

    /// The ids of the packs that exist now (one listing of `data/`).
    async fn present_packs(&self) -> Result<HashSet<String>, EngineError> {
        Ok(self
            .backend
            .list("data")
            .await?
            .into_iter()
            .filter_map(|(name, _)| name.rsplit('/').next().map(str::to_string))
            .collect())
    }

    /// Packs an index object names that are gone, and not because prune removed them (no
    /// deletion mark): a damaged repository (a partial copy, a hand-made mistake). One
    /// listing each of `index/`, `data/` and `garbage/`; a few dozen bytes a pack.
    pub async fn missing_packs(&self) -> Result<Vec<String>, EngineError> {
        let marked = self.garbage_marks().await?;
        let present = self.present_packs().await?;
        let mut missing: Vec<String> = self
            .backend
            .list("index")
            .await?
            .into_iter()
            .filter_map(|(name, _)| name.rsplit('/').next().map(str::to_string))
            .filter(|id| !present.contains(id) && !marked.contains_key(id))
            .collect();
        missing.sort();
        Ok(missing)
    }

    /// Packs prune has marked for deletion, with their marks.
    pub async fn garbage_marks(&self) -> Result<HashMap<String, GarbageMark>, EngineError> {
        let names = self.backend.list(GARBAGE_DIR).await?;
        let mut out = HashMap::new();
        for (name, _) in names {
            let id = name.trim_start_matches("garbage/").to_string();
            let bytes = match self.backend.get(&name).await {
                Ok(b) => b,
                Err(BackendError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            // A damaged mark still marks: the pack is treated as going (never as needed).
            let mark = serde_json::from_slice(&bytes).unwrap_or(GarbageMark {
                marked: String::new(),
                bytes: 0,
            });
            out.insert(id, mark);
        }
        Ok(out)
    }

    /// Hand every pack of the index to `f` with its blobs, without holding the index (readers
    /// keep only what they need of it), in order of preference: where a blob is in several
    /// packs, a pack that exists and is not marked for deletion comes first, so readers move
    /// off packs prune has marked.
    pub async fn for_each_index_pack(
        &self,
        f: impl FnMut(PackInfo, Vec<BlobEntry>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let marked = self.garbage_marks().await?;
        let present = self.present_packs().await?;
        self.each_index_pack(
            |id| present.contains(id) && !marked.contains_key(id),
            |_| true,
            f,
        )
        .await
    }

    /// The index objects of packs `keep` accepts, those `first` accepts first, each decoded
    /// and handed to `f` as it arrives.
    async fn each_index_pack(
        &self,
        first: impl Fn(&str) -> bool,
        keep: impl Fn(&str) -> bool,
        mut f: impl FnMut(PackInfo, Vec<BlobEntry>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut names: Vec<(String, String)> = Vec::new();
        for (name, _) in self.backend.list("index").await? {
            let id = name.trim_start_matches("index/").to_string();
            if !is_object_id(&id) {
                return Err(EngineError::Corrupt {
                    object: name,
                    reason: "not a pack id (64 hex digits)".into(),
                });
            }
            if keep(&id) {
                names.push((name, id));
            }
        }
        names.sort_by_key(|(_, id)| !first(id));
        // Read a few at a time and decode each as it comes: all at once held every index
        // object, sealed and opened, in memory together.
        let mut fetched = futures::stream::iter(names.into_iter().map(|(name, id)| async move {
            let opened = self
                .get_sealed(ObjectKind::Index, &name)
                .await
                .and_then(|plain| decode_index(&name, &id, &plain));
            let opened = match opened {
                Ok(found) => Ok(found),
                // A damaged index object (a flipped byte, a torn write): its pack says the same,
                // in its header and sealed trailer. Read that instead, and say so.
                Err(EngineError::Corrupt { object, reason }) => {
                    match self.entries_from_pack(&id).await {
                        Ok(found) => {
                            tracing::warn!(object = %object, reason = %reason, "index object damaged: its pack's own blob list is read instead (`snapcrypt repair index` writes it again)");
                            Ok(found)
                        }
                        Err(_) => Err(EngineError::Corrupt { object, reason }),
                    }
                }
                Err(e) => Err(e),
            };
            Ok::<_, EngineError>(opened)
        }))
        .buffered(INDEX_READS);
        while let Some(opened) = fetched.try_next().await? {
            let (info, entries) = opened?;
            f(info, entries)?;
        }
        Ok(())
    }
}

/// An index object's plaintext: the pack header and the blob list.
fn decode_index(
    name: &str,
    id: &str,
    plain: &[u8],
) -> Result<(PackInfo, Vec<BlobEntry>), EngineError> {
    let corrupt = |reason: &str| EngineError::Corrupt {
        object: name.to_string(),
        reason: reason.into(),
    };
    let (data_key_id, salt) =
        parse_pack_header(plain).ok_or_else(|| corrupt("bad pack header in index"))?;
    let entries = BlobEntry::decode_all(&plain[crate::engine::format::PACK_HEADER_LEN..])
        .ok_or_else(|| corrupt("bad entries"))?;
    let info = PackInfo {
        id: id.to_string(),
        data_key_id,
        salt,
    };
    Ok((info, entries))
}

/// Index objects read at once.
const INDEX_READS: usize = 16;
