//! Reachability: which blobs a set of snapshots needs (their file lists' pieces and every
//! chunk the lists name), as one bit per blob of the index. Prune keeps what kept snapshots
//! reach; copy moves what the copied snapshots reach.

use std::collections::HashSet;

use super::crypto::ChunkId;
use super::format::SnapshotManifest;
use super::repo::{BlobPlaces, PlacedIndex, Repository};
use crate::engine::error::EngineError;

/// Every blob the snapshots `snaps` need: its chunks and its file list's pieces.
pub(crate) async fn used_blobs(
    repo: &Repository,
    index: &PlacedIndex,
    snaps: impl Iterator<Item = &SnapshotManifest>,
) -> Result<Used, EngineError> {
    let mut used = Used::new(index.places.len());
    let handle = tokio::runtime::Handle::current();
    for s in snaps {
        // The file list streamed, entry by entry: never whole in memory.
        tokio::task::block_in_place(|| {
            repo.for_each_tree_entry(&index.lists, s, &handle, |e| {
                e.chunks.iter().for_each(|id| used.add(&index.places, id));
                Ok(())
            })
        })?;
        for t in &s.tree {
            if let Some(id) = hex::decode(t)
                .ok()
                .and_then(|v| <ChunkId>::try_from(v).ok())
            {
                used.add(&index.places, &id);
            }
        }
    }
    Ok(used)
}

/// The blobs kept snapshots need: a bit for each blob of the index, by its place in the
/// [`BlobPlaces`] (an id there is once, at the pack preferred for it), and the ids no index
/// has (none in a sound repository). A set of the ids took about 45 bytes a blob, which at
/// 64 million chunks (1 TiB of 16 KiB chunks) is 3 GB; these bits are 8 MB.
pub(crate) struct Used {
    pub(crate) bits: Vec<u64>,
    missing: HashSet<ChunkId>,
}

impl Used {
    /// For `n` blobs.
    pub(crate) fn new(n: usize) -> Self {
        Used {
            bits: vec![0; n.div_ceil(64)],
            missing: HashSet::new(),
        }
    }

    /// Blob `id` is needed.
    pub(crate) fn add(&mut self, places: &BlobPlaces, id: &ChunkId) {
        match places.position(id) {
            Some(i) => self.bits[i / 64] |= 1 << (i % 64),
            None => {
                self.missing.insert(*id);
            }
        }
    }

    /// Is the blob at place `i` of the map needed?
    pub(crate) fn at(&self, i: usize) -> bool {
        self.bits
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Does every needed blob have an index?
    pub(crate) fn all_indexed(&self) -> bool {
        self.missing.is_empty()
    }
}

impl Used {
    /// The packs (by their number in the index) that hold a needed blob, each once.
    pub(crate) fn packs(&self, places: &BlobPlaces) -> std::collections::BTreeSet<u32> {
        let mut packs = std::collections::BTreeSet::new();
        for (w, word) in self.bits.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                packs.insert(places.pack(i));
                bits &= bits - 1;
            }
        }
        packs
    }

    /// How many needed blobs no index has.
    pub(crate) fn unindexed(&self) -> usize {
        self.missing.len()
    }
}
