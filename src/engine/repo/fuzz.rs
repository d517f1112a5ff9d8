//! One entry point for fuzzing every parser of a repository's plain documents and of what a
//! user types to reach one: the fuzz target `repository_documents` (fuzz/) and a seeded
//! mutation test in every `cargo test` feed it arbitrary bytes, as a hostile store, a damaged
//! disk or a mistyped argument could give them. None may panic, hang or allocate without
//! bound; the few invariants a caller relies on are asserted.

use super::index::GarbageMark;
use super::snapshots::{check_tree, decode_tree, parse_unfinished, tree_ids};
use super::{Repository, check_chunker, parse_key_id};
use crate::engine::backend::Location;
use crate::engine::format::{Config, KeyRecord, SnapshotManifest};
use crate::kms::local::LocalKeyManager;

/// Feed `data` to: the REPO argument parser, the local key file parser, the config (and its
/// chunker check), a key record (its id, and its unwrapping by a local key), a snapshot
/// manifest (its file list's ids), an unfinished record, a garbage mark, and the file list
/// decoder (as stored, zstd, and as its JSON compressed here) with the restore's check of it.
#[doc(hidden)]
pub fn fuzz_repository_documents(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(Location::Remote { bucket, prefix, .. }) = Location::parse(&text) {
        assert!(
            !bucket.is_empty() && !bucket.contains('/'),
            "bucket {bucket:?}"
        );
        assert!(
            !prefix.starts_with('/') && !prefix.ends_with('/'),
            "prefix {prefix:?}"
        );
    }
    let _ = LocalKeyManager::parse(&text);
    if let Ok(config) = serde_json::from_slice::<Config>(data) {
        let _ = check_chunker(&config.chunker);
    }
    if let Ok(record) = serde_json::from_slice::<KeyRecord>(data) {
        let _ = parse_key_id(&record.data_key_id);
        let km = LocalKeyManager::from_key([7; 32]);
        let _ = futures::executor::block_on(Repository::unwrap_record(&record, &[&km]));
    }
    if let Ok(snap) = serde_json::from_slice::<SnapshotManifest>(data) {
        let _ = tree_ids(&snap);
    }
    let _ = parse_unfinished(data);
    let _ = serde_json::from_slice::<GarbageMark>(data);
    let compressed = zstd::encode_all(data, 1).unwrap_or_default();
    for stored in [data, &compressed[..]] {
        if let Ok(tree) = decode_tree(stored, "fuzz") {
            let _ = check_tree(&tree, "fuzz");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::format::tests::noise;

    /// The checked-in seeds of the fuzz target (fuzz/seeds/repository_documents/): a config
    /// and a key record of a real repository, a snapshot manifest, a file list (its JSON: the
    /// target also compresses what it is given), records, a key file (of a throwaway key,
    /// whose id does not match) and REPO arguments.
    fn seeds() -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds/repository_documents");
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("fuzz/seeds/repository_documents")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("seed"))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn seeded_mutations_of_repository_documents_never_panic() {
        let seeds = seeds();
        assert!(seeds.len() >= 8, "{} seeds", seeds.len());
        let mut next = noise(0xd0c5_5eed);
        for i in 0..30_000u32 {
            let base = &seeds[i as usize % seeds.len()];
            let mut data = base.clone();
            match next() % 5 {
                0 => data.truncate((next() % (base.len() as u64 + 1)) as usize),
                1 if !data.is_empty() => {
                    for _ in 0..1 + next() % 4 {
                        let at = (next() % data.len() as u64) as usize;
                        data[at] = next() as u8;
                    }
                }
                2 => data.extend((0..next() % 64).map(|_| next() as u8)),
                3 => {
                    // A JSON-shaped splice: a token of another seed put in.
                    let other = &seeds[(next() % seeds.len() as u64) as usize];
                    let at = (next() % (data.len() as u64 + 1)) as usize;
                    let from = (next() % (other.len() as u64 + 1)) as usize;
                    let to = (from + (next() % 32) as usize).min(other.len());
                    data.splice(at..at, other[from..to].iter().copied());
                }
                _ => data = (0..next() % 200).map(|_| next() as u8).collect(),
            }
            fuzz_repository_documents(&data);
        }
    }

    /// The seeds themselves reach past the parsers: each is accepted by the parser it is for.
    #[test]
    fn the_seeds_are_valid_documents() {
        let seeds = seeds();
        let parsed = |f: &dyn Fn(&[u8]) -> bool| seeds.iter().filter(|s| f(s)).count();
        assert!(parsed(&|s| serde_json::from_slice::<Config>(s).is_ok()) >= 1);
        assert!(parsed(&|s| serde_json::from_slice::<KeyRecord>(s).is_ok()) >= 1);
        assert!(parsed(&|s| serde_json::from_slice::<SnapshotManifest>(s).is_ok()) >= 1);
        assert!(parsed(&|s| parse_unfinished(s).is_some()) >= 1);
        let tree_ok = |s: &[u8]| {
            let stored = zstd::encode_all(s, 1).expect("zstd");
            decode_tree(&stored, "seed").is_ok_and(|t| check_tree(&t, "seed").is_ok())
        };
        assert!(parsed(&tree_ok) >= 1);
        assert!(parsed(&|s| Location::parse(&String::from_utf8_lossy(s)).is_ok()) >= 2);
    }
}
