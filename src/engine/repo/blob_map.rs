//! Where every blob is, as one sorted array: 52 bytes a blob, where the hash map it replaces
//! took about 170 (its keys held the ids a second time, and it kept up to half its slots
//! free). A table of where each leading-bits prefix of the ids starts brings a lookup down to
//! a binary search of about eight entries: ids are keyed BLAKE3 outputs, so evenly spread.
//! Hand-written because no crate we use offers a static sorted map with this layout.

use super::index::BlobLoc;
use crate::engine::crypto::ChunkId;

/// Blobs per prefix bucket, on average.
const PER_BUCKET: usize = 8;

/// Every blob's location, sorted by id, each id once.
#[derive(Default, Debug)]
pub struct BlobMap {
    locs: Vec<BlobLoc>,
    buckets: Buckets,
}

impl BlobMap {
    /// From blobs in order of preference: where an id is given twice, the first is kept.
    pub fn from_preferred(mut locs: Vec<BlobLoc>) -> Self {
        // Stable, so the first of equal ids stays first.
        locs.sort_by_key(|l| l.entry.id);
        locs.dedup_by(|later, first| later.entry.id == first.entry.id);
        locs.shrink_to_fit();
        let buckets = Buckets::new(locs.iter().map(|l| &l.entry.id[..]), locs.len());
        BlobMap { locs, buckets }
    }

    pub fn get(&self, id: &ChunkId) -> Option<&BlobLoc> {
        let bucket = self.locs.get(self.buckets.range(id)?)?;
        bucket
            .binary_search_by(|l| l.entry.id.cmp(id))
            .ok()
            .map(|i| &bucket[i])
    }

    pub fn contains_key(&self, id: &ChunkId) -> bool {
        self.get(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.locs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locs.is_empty()
    }

    /// Every blob, by id.
    pub fn values(&self) -> std::slice::Iter<'_, BlobLoc> {
        self.locs.iter()
    }

    /// Every blob with its id, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&ChunkId, &BlobLoc)> {
        self.locs.iter().map(|l| (&l.entry.id, l))
    }

    /// Bytes this map holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.locs.capacity() * std::mem::size_of::<BlobLoc>() + self.buckets.heap_bytes()
    }

    /// Add a blob (tests: rebuilds the map), replacing one with the same id.
    #[cfg(test)]
    pub fn insert(&mut self, loc: BlobLoc) {
        let mut locs = std::mem::take(&mut self.locs);
        locs.insert(0, loc);
        *self = BlobMap::from_preferred(locs);
    }
}

impl<'a> IntoIterator for &'a BlobMap {
    type Item = (&'a ChunkId, &'a BlobLoc);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, BlobLoc>, fn(&BlobLoc) -> (&ChunkId, &BlobLoc)>;

    fn into_iter(self) -> Self::IntoIter {
        self.locs.iter().map(|l| (&l.entry.id, l))
    }
}

/// Where each leading-bits prefix of sorted ids starts among them, with about
/// [`PER_BUCKET`] ids a prefix: ids are keyed BLAKE3 outputs, so evenly spread, and a lookup is
/// a binary search of about eight entries.
#[derive(Debug, Default)]
pub(super) struct Buckets {
    /// `starts[p]..starts[p + 1]`: the ids that begin with prefix `p` (`bits` bits).
    starts: Vec<u32>,
    bits: u32,
}

impl Buckets {
    /// For `n` sorted ids, given by (at least) their first four bytes.
    pub(super) fn new<'a>(heads: impl Iterator<Item = &'a [u8]>, n: usize) -> Self {
        let mut bits = 0;
        while bits < 24 && (PER_BUCKET << bits) < n {
            bits += 1;
        }
        let mut starts = vec![0u32; (1 << bits) + 1];
        for head in heads {
            starts[prefix(head, bits) + 1] += 1;
        }
        for p in 1..starts.len() {
            starts[p] += starts[p - 1];
        }
        Buckets { starts, bits }
    }

    /// The places of the ids that share `id`'s prefix.
    pub(super) fn range(&self, id: &[u8]) -> Option<std::ops::Range<usize>> {
        let p = prefix(id, self.bits);
        Some(*self.starts.get(p)? as usize..*self.starts.get(p + 1)? as usize)
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<u32>()
    }
}

/// The first `bits` bits (at most 32) of an id, from its first four bytes.
fn prefix(id: &[u8], bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    let head = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
    (head >> (32 - bits)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::format::{BlobEntry, BlobKind};

    fn loc(id: ChunkId, pack: u32) -> BlobLoc {
        BlobLoc {
            pack,
            entry: BlobEntry {
                id,
                offset: 0,
                stored_len: 1,
                raw_len: 1,
                kind: BlobKind::Data,
                flags: 0,
            },
        }
    }

    /// Every id found, absent ids not, the first of two equal ids kept, at every size from
    /// empty to many buckets, with ids spread as BLAKE3 spreads them and ids that share their
    /// first bytes.
    #[test]
    fn finds_every_blob_and_prefers_the_first() {
        for n in [0usize, 1, 2, 7, 8, 9, 100, 5000] {
            let ids: Vec<ChunkId> = (0..n as u64)
                .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
                .collect();
            let mut locs: Vec<BlobLoc> = ids.iter().map(|id| loc(*id, 1)).collect();
            // Duplicates later in the list (a blob in two packs): the first must win.
            locs.extend(ids.iter().take(3).map(|id| loc(*id, 2)));
            // Ids equal in their first 8 bytes.
            let mut near = [0xabu8; 32];
            locs.push(loc(near, 1));
            near[31] = 0;
            locs.push(loc(near, 1));
            let m = BlobMap::from_preferred(locs);
            assert_eq!(m.len(), n + 2);
            for id in &ids {
                assert_eq!(m.get(id).map(|l| l.pack), Some(1), "n={n}");
            }
            assert!(m.contains_key(&near));
            near[31] = 1;
            assert!(!m.contains_key(&near));
            assert!(!m.contains_key(blake3::hash(b"absent").as_bytes()));
            assert!(m.iter().zip(m.iter().skip(1)).all(|(a, b)| a.0 < b.0));
        }
    }

    /// The memory design, pinned: a blob costs its location (52 bytes) and at most a quarter
    /// of a prefix-table slot, whatever the number of blobs; a regression to a hash map (about
    /// 170 bytes a blob) fails here, not only in the benchmark.
    #[test]
    fn a_blob_costs_at_most_54_bytes() {
        assert!(std::mem::size_of::<BlobLoc>() <= 52);
        for n in [10_000usize, 100_000, 1_000_000] {
            // Grown one index object at a time, as a load does, with a blob in two packs.
            let mut locs = Vec::new();
            for i in 0..n as u64 {
                locs.push(loc(*blake3::hash(&i.to_le_bytes()).as_bytes(), 0));
            }
            locs.push(locs[0]);
            let m = BlobMap::from_preferred(locs);
            assert!(
                m.heap_bytes() <= 54 * n,
                "{n} blobs: {} bytes",
                m.heap_bytes()
            );
        }
    }
}
