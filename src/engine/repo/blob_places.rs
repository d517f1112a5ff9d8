//! Where each blob is, as prune and verify need it: 24 bytes a blob (the first 16 bytes of its
//! id, the pack preferred for it, its stored length), where the whole index ([`BlobMap`],
//! offsets and lengths included) takes 52. At 64 million blobs (1 TiB of 16 KiB chunks) that
//! is 1.5 GB instead of 3.3 GB. It is built through an external sort, so building it never
//! holds more than the finished table and a small sort buffer.
//!
//! Ids are matched on their first 128 bits. Ids are keyed BLAKE3 outputs, so two distinct ids
//! agree there with probability about n²/2^129: 6·10^-24 at 64 million blobs, and nobody
//! without the repository's keys can choose an id.
//!
//! Hand-written for the reason [`BlobMap`] is: no crate offers a static sorted map with this
//! layout.
//!
//! [`BlobMap`]: super::BlobMap

use super::blob_map::Buckets;
use super::{BlobLoc, BlobMap, Index, PackInfo, Repository};
use crate::engine::crypto::ChunkId;
use crate::engine::error::EngineError;
use crate::engine::format::{BlobEntry, BlobKind};
use crate::engine::spill::{Sorter, SpillError};

/// Bytes of an id kept.
const ID: usize = 16;
/// A record: id prefix, pack (big-endian, so that the preferred pack, the lowest number,
/// sorts first among copies of a blob), stored length.
const RECORD: usize = ID + 4 + 4;
/// What the sort may hold in memory while the table is built.
const SORT_BUDGET: usize = 4 << 20;

/// Every blob's preferred pack and stored length, by id, each id once.
#[derive(Debug, Default)]
pub struct BlobPlaces {
    recs: Vec<[u8; RECORD]>,
    buckets: Buckets,
}

/// A [`BlobPlaces`] being built: blobs added pack by pack, packs numbered in order of
/// preference (where a blob is in several packs, the lowest number is kept).
pub struct BlobPlacesBuilder {
    sorter: Sorter<RECORD>,
}

impl BlobPlacesBuilder {
    /// Spilling into the system's scratch directory (`TMPDIR`).
    pub fn new() -> Self {
        BlobPlacesBuilder {
            sorter: Sorter::in_temp_dir(SORT_BUDGET),
        }
    }

    pub fn add(&mut self, pack: u32, e: &BlobEntry) -> Result<(), SpillError> {
        let mut r = [0u8; RECORD];
        r[..ID].copy_from_slice(&e.id[..ID]);
        r[ID..ID + 4].copy_from_slice(&pack.to_be_bytes());
        r[ID + 4..].copy_from_slice(&e.stored_len.to_be_bytes());
        self.sorter.push(r)
    }

    pub fn finish(self) -> Result<BlobPlaces, SpillError> {
        // At most this many: copies of a blob in several packs are dropped below.
        let mut recs: Vec<[u8; RECORD]> = Vec::with_capacity(self.sorter.len() as usize);
        for r in self.sorter.finish()? {
            let r = r?;
            if recs.last().is_some_and(|l| l[..ID] == r[..ID]) {
                continue;
            }
            recs.push(r);
        }
        let buckets = Buckets::new(recs.iter().map(|r| &r[..]), recs.len());
        Ok(BlobPlaces { recs, buckets })
    }
}

impl Default for BlobPlacesBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BlobPlaces {
    /// Where `id` is among the blobs, if the index has it: a number below [`Self::len`] that
    /// a caller can keep a bit for.
    pub fn position(&self, id: &ChunkId) -> Option<usize> {
        let range = self.buckets.range(id)?;
        let start = range.start;
        self.recs
            .get(range)?
            .binary_search_by(|r| r[..ID].cmp(&id[..ID]))
            .ok()
            .map(|i| start + i)
    }

    /// The pack preferred for the blob at `i`.
    pub fn pack(&self, i: usize) -> u32 {
        let r = &self.recs[i];
        u32::from_be_bytes([r[ID], r[ID + 1], r[ID + 2], r[ID + 3]])
    }

    /// The stored length of the blob at `i`, in its preferred pack.
    pub fn stored_len(&self, i: usize) -> u32 {
        let r = &self.recs[i];
        u32::from_be_bytes([r[ID + 4], r[ID + 5], r[ID + 6], r[ID + 7]])
    }

    pub fn len(&self) -> usize {
        self.recs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Bytes this table holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.recs.capacity() * RECORD + self.buckets.heap_bytes()
    }
}

/// The index as prune and verify need it: every pack; the blobs of file lists whole (to read
/// the lists; a few per snapshot); and every blob's place.
#[derive(Debug, Default)]
pub struct PlacedIndex {
    /// Every pack, and the file lists' blobs.
    pub lists: Index,
    pub places: BlobPlaces,
}

/// A [`PlacedIndex`] being read: packs in order of preference.
#[derive(Default)]
pub struct PlacedIndexBuilder {
    packs: Vec<PackInfo>,
    lists: Vec<BlobLoc>,
    places: BlobPlacesBuilder,
}

impl PlacedIndexBuilder {
    pub fn add(&mut self, pack: PackInfo, entries: Vec<BlobEntry>) -> Result<(), SpillError> {
        let n = self.packs.len() as u32;
        self.packs.push(pack);
        for entry in entries {
            self.places.add(n, &entry)?;
            if entry.kind == BlobKind::Tree {
                self.lists.push(BlobLoc { pack: n, entry });
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Result<PlacedIndex, SpillError> {
        Ok(PlacedIndex {
            lists: Index {
                packs: self.packs,
                blobs: BlobMap::from_preferred(self.lists),
            },
            places: self.places.finish()?,
        })
    }
}

impl Repository {
    /// The index as a [`PlacedIndex`], blobs preferring the packs
    /// [`Repository::for_each_index_pack`] gives first.
    pub async fn load_placed_index(&self) -> Result<PlacedIndex, EngineError> {
        let mut index = PlacedIndexBuilder::default();
        self.for_each_index_pack(|pack, entries| Ok(index.add(pack, entries)?))
            .await?;
        Ok(index.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::format::BlobKind;

    fn entry(id: ChunkId, stored_len: u32) -> BlobEntry {
        BlobEntry {
            id,
            offset: 0,
            stored_len,
            raw_len: stored_len,
            kind: BlobKind::Data,
            flags: 0,
        }
    }

    fn id(i: u64) -> ChunkId {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    /// Every blob found at its preferred pack with its length, absent ids not, at every size
    /// from empty to many buckets, whatever order the packs' blobs come in; positions are
    /// distinct and below the length.
    #[test]
    fn finds_every_blob_at_its_preferred_pack() {
        for n in [0u64, 1, 2, 7, 8, 9, 100, 5000] {
            let mut b = BlobPlacesBuilder::new();
            // Pack 3 is read first but pack 1 is preferred: lower numbers win, not order.
            for i in 0..n.min(3) {
                b.add(3, &entry(id(i), 999)).expect("add");
            }
            for i in 0..n {
                b.add(1, &entry(id(i), i as u32)).expect("add");
            }
            let places = b.finish().expect("finish");
            assert_eq!(places.len(), n as usize);
            let mut seen = std::collections::HashSet::new();
            for i in 0..n {
                let at = places.position(&id(i)).expect("found");
                assert!(at < places.len() && seen.insert(at));
                assert_eq!((places.pack(at), places.stored_len(at)), (1, i as u32));
            }
            assert_eq!(places.position(&id(n + 1)), None);
        }
    }

    /// Ids are told apart by their first 16 bytes and no more: ids differing only in byte 15
    /// are two blobs; a lookup of an id equal to a blob's in its first 16 bytes finds it.
    #[test]
    fn ids_match_on_their_first_16_bytes() {
        let mut a = [0xabu8; 32];
        let mut b = BlobPlacesBuilder::new();
        b.add(0, &entry(a, 1)).expect("add");
        a[15] = 0;
        b.add(0, &entry(a, 2)).expect("add");
        let places = b.finish().expect("finish");
        assert_eq!(places.len(), 2);
        assert_eq!(places.position(&a).map(|i| places.stored_len(i)), Some(2));
        a[31] = 7;
        assert_eq!(places.position(&a).map(|i| places.stored_len(i)), Some(2));
    }

    /// The memory design, pinned: 24 bytes a blob and half a prefix-table slot, against the
    /// 52 of the whole index; and the build spills past its budget instead of growing.
    #[test]
    fn a_blob_costs_at_most_25_bytes() {
        for n in [10_000u64, 1_000_000] {
            let mut b = BlobPlacesBuilder::new();
            for i in 0..n {
                b.add(0, &entry(id(i), 1)).expect("add");
            }
            if n == 1_000_000 {
                assert!(b.sorter.spilled_runs() > 0, "24 MB of records spill");
            }
            let places = b.finish().expect("finish");
            assert!(
                places.heap_bytes() <= 25 * n as usize,
                "{n} blobs: {} bytes",
                places.heap_bytes()
            );
        }
    }
}
