//! Verify: every object the repository needs is there, whole and authentic. Without
//! `read_data` the metadata is checked (config, keys, indexes, snapshots, file lists, pack
//! presence and exact sizes); with it every pack is read, hashed against its name, and every
//! blob opened and checked against its id.

use std::collections::{HashMap, HashSet};

use super::format::SnapshotManifest;
use super::format::{BlobEntry, PACK_HEADER_LEN, TRAILER_COUNTER, pack_object_name};
use super::pack::{TRAILER_AAD, parse_pack_header, trailer_range};
use super::repo::{Index, PlacedIndex, PlacedIndexBuilder, Repository};
use crate::engine::error::EngineError;

/// What verify found; `problems` is empty when the repository is sound.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub packs: usize,
    pub blobs: usize,
    pub bytes_read: u64,
    /// Packs read whole (with `read_data`: all of them, or those of the subset).
    pub packs_read: usize,
    /// The subset of packs read, as `k/n` (absent: all, or none without `read_data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// File-list pieces no snapshot names that an interrupted backup or prune left (their
    /// unfinished record says so): not damage; the next prune removes them.
    pub leftover_file_lists: usize,
    /// Packs no index object names: a backup or repack killed after storing a pack and
    /// before its index. Nothing reads them (a snapshot needing one of their blobs is reported
    /// as such), so they are not damage; the next prune marks them and later deletes them.
    #[serde(default)]
    pub leftover_packs: usize,
    pub problems: Vec<String>,
}

/// One of `n` groups of packs, numbered 1 to `n`: a pack belongs to group
/// `(first 8 hex digits of its id as a number) mod n + 1`. Pack ids are hashes, so the groups
/// are about equal, and reading group 1, 2, ..., n in turn reads every pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataSubset {
    pub k: u32,
    pub n: u32,
}

impl DataSubset {
    /// Every pack.
    pub const ALL: DataSubset = DataSubset { k: 1, n: 1 };

    /// Parse `k/n` with 1 <= k <= n <= 10000.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not K/N with 1 <= K <= N <= 10000 (for example 3/10)");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (u32, u32) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if k == 0 || k > n || n > 10_000 {
            return Err(bad());
        }
        Ok(DataSubset { k, n })
    }

    /// Whether the pack named `id` (hex) is in this group.
    pub fn contains(&self, id: &str) -> bool {
        let head = id.get(..8).and_then(|h| u32::from_str_radix(h, 16).ok());
        // A name that is not hex is read by group 1, so it is never skipped for good.
        head.unwrap_or(0) % self.n + 1 == self.k
    }
}

impl std::fmt::Display for DataSubset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// The exact size of a pack holding `entries`.
fn expected_pack_size(entries: &[&BlobEntry]) -> u64 {
    super::pack::pack_size(entries.iter().copied())
}

/// Check the repository (or one snapshot of it), under a shared lock so no prune removes
/// what is being checked (a repository read-only to us is read without one). With
/// `read_data`, the packs of that subset are also read whole.
pub async fn verify(
    repo: &Repository,
    snapshot: Option<&str>,
    read_data: Option<DataSubset>,
) -> Result<VerifyReport, EngineError> {
    let (lock, _) = super::lock::RepoLock::acquire_reader(
        &repo.backend,
        super::lock::lock_wait(std::time::Duration::from_secs(600)),
    )
    .await?;
    let result = run_verify(repo, snapshot, read_data).await;
    if let Some(lock) = lock {
        lock.release().await?;
    }
    result
}

async fn run_verify(
    repo: &Repository,
    snapshot: Option<&str>,
    read_data: Option<DataSubset>,
) -> Result<VerifyReport, EngineError> {
    let mut report = VerifyReport::default();
    let (index, sizes) = load_indexes(repo, &mut report).await?;
    let unindexed = check_packs(repo, &sizes, &mut report).await?;
    report.packs = sizes.len();
    report.blobs = index.places.len();
    let snaps = load_snapshots(repo, snapshot, &mut report).await?;
    report.snapshots = snaps.len();
    if snapshot.is_none() {
        let excused: HashSet<String> = repo
            .unfinished()
            .await?
            .into_iter()
            .flat_map(|(_, trees)| trees)
            .collect();
        orphan_file_lists(&index.lists, &snaps, &excused, &mut report);
    }
    let problems_before = report.problems.len();
    let needed_packs = check_file_lists(repo, &index, &snaps, &mut report);
    judge_unindexed(
        unindexed,
        report.problems.len() > problems_before,
        &mut report,
    );
    if let Some(subset) = read_data {
        let mut which: Vec<u32> = if snapshot.is_some() {
            needed_packs.into_iter().collect()
        } else {
            (0..index.lists.packs.len() as u32).collect()
        };
        which.retain(|p| subset.contains(&index.lists.packs[*p as usize].id));
        which.sort();
        if subset != DataSubset::ALL {
            report.subset = Some(subset.to_string());
        }
        for p in which {
            read_pack(repo, &index.lists, p, &mut report).await;
            report.packs_read += 1;
        }
    }
    Ok(report)
}

fn problem(report: &mut VerifyReport, e: EngineError) {
    report.problems.push(e.to_string());
}

/// The index (each blob's place, in 24 bytes: [`PlacedIndex`]), and each indexed pack's size
/// as its index object gives it. Index objects are read one at a time, so one bad object does
/// not hide the others, and none is kept once added: a pack's blobs are listed again when it
/// is read whole ([`Repository::index_entries`]).
async fn load_indexes(
    repo: &Repository,
    report: &mut VerifyReport,
) -> Result<(PlacedIndex, HashMap<String, u64>), EngineError> {
    let mut index = PlacedIndexBuilder::default();
    // Where a blob is in several packs, one that exists is the one checked (as restore
    // reads): the index objects of present packs come first.
    let present: HashSet<String> = repo
        .backend
        .list("data")
        .await?
        .into_iter()
        .filter_map(|(n, _)| n.rsplit('/').next().map(str::to_string))
        .collect();
    let mut names: Vec<String> = repo
        .backend
        .list("index")
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    names.sort_by_key(|name| !present.contains(name.trim_start_matches("index/")));
    let mut sizes: HashMap<String, u64> = HashMap::new();
    for name in names {
        let plain = match repo
            .get_sealed(super::format::ObjectKind::Index, &name)
            .await
        {
            Ok(plain) => plain,
            Err(e) => {
                problem(report, e);
                continue;
            }
        };
        let id = name.trim_start_matches("index/").to_string();
        match (
            parse_pack_header(&plain),
            BlobEntry::decode_all(plain.get(PACK_HEADER_LEN..).unwrap_or_default()),
        ) {
            (Some((data_key_id, salt)), Some(entries)) => {
                sizes.insert(
                    id.clone(),
                    expected_pack_size(&entries.iter().collect::<Vec<_>>()),
                );
                index.add(
                    super::repo::PackInfo {
                        id,
                        data_key_id,
                        salt,
                    },
                    entries,
                )?;
            }
            _ => report
                .problems
                .push(format!("repository object {name} is damaged: bad contents")),
        }
    }
    Ok((index.finish()?, sizes))
}

/// Every indexed pack is present with its exact size; the packs without an index object.
async fn check_packs(
    repo: &Repository,
    sizes: &HashMap<String, u64>,
    report: &mut VerifyReport,
) -> Result<Vec<String>, EngineError> {
    let packs: HashMap<String, u64> = repo
        .backend
        .list("data")
        .await?
        .into_iter()
        .map(|(n, size)| (n.rsplit('/').next().unwrap_or_default().to_string(), size))
        .collect();
    for (id, want) in sizes {
        let name = pack_object_name(id);
        match packs.get(id) {
            None => report.problems.push(format!(
                "repository object {name} is missing (named by index/{id})"
            )),
            Some(size) if size != want => {
                report.problems.push(format!("repository object {name} is damaged: {size} bytes, expected {want} (truncated or padded)"));
            }
            Some(_) => {}
        }
    }
    let mut unindexed: Vec<String> = packs
        .into_keys()
        .filter(|id| !sizes.contains_key(id))
        .collect();
    unindexed.sort();
    Ok(unindexed)
}

/// Packs without an index object are leftovers of a writer killed between the pack and its
/// index, unless a snapshot misses something (`snapshots_miss`): then the likelier story is an
/// index object lost, and each such pack is named as a problem.
fn judge_unindexed(unindexed: Vec<String>, snapshots_miss: bool, report: &mut VerifyReport) {
    if !snapshots_miss {
        report.leftover_packs = unindexed.len();
        return;
    }
    for id in unindexed {
        report.problems.push(format!(
            "repository object {} has no index object index/{id}, and snapshots need data no index has: that index object is likely lost",
            pack_object_name(&id)
        ));
    }
}

/// The snapshot objects: the one asked for, or all (a damaged one is a problem, not an error).
async fn load_snapshots(
    repo: &Repository,
    snapshot: Option<&str>,
    report: &mut VerifyReport,
) -> Result<Vec<SnapshotManifest>, EngineError> {
    Ok(match snapshot {
        Some(which) => vec![repo.find_snapshot(which).await?],
        None => {
            let mut out = Vec::new();
            for (name, _) in repo.backend.list("snapshots").await? {
                match repo
                    .get_sealed(super::format::ObjectKind::Snapshot, &name)
                    .await
                {
                    Ok(p) => match serde_json::from_slice(&p) {
                        Ok(s) => out.push(s),
                        Err(e) => report
                            .problems
                            .push(format!("repository object {name} is damaged: {e}")),
                    },
                    Err(e) => problem(report, e),
                }
            }
            out
        }
    })
}

/// File lists are written only just before their snapshot object; one that no snapshot
/// names means a snapshot object was deleted, unless an unfinished record (`excused`) says a
/// backup or prune was interrupted between the two.
fn orphan_file_lists(
    index: &Index,
    snaps: &[SnapshotManifest],
    excused: &HashSet<String>,
    report: &mut VerifyReport,
) {
    let named: HashSet<String> = snaps.iter().flat_map(|s| s.tree.iter().cloned()).collect();
    for loc in index.blobs.values() {
        let id = hex::encode(loc.entry.id);
        if loc.entry.kind != super::format::BlobKind::Tree || named.contains(&id) {
            continue;
        }
        if excused.contains(&id) {
            report.leftover_file_lists += 1;
        } else {
            report.problems.push(format!(
                "repository object {} holds the file list {id} of no snapshot: a snapshot object was deleted",
                pack_object_name(&index.packs[loc.pack as usize].id),
            ));
        }
    }
}

/// Every file list opens and every chunk it names is indexed; the packs the snapshots need.
/// Each list is streamed, entry by entry, never whole in memory.
fn check_file_lists(
    repo: &Repository,
    index: &PlacedIndex,
    snaps: &[SnapshotManifest],
    report: &mut VerifyReport,
) -> HashSet<u32> {
    let mut needed_packs: HashSet<u32> = HashSet::new();
    let handle = tokio::runtime::Handle::current();
    for snap in snaps {
        let problems = &mut report.problems;
        let read = tokio::task::block_in_place(|| {
            repo.for_each_tree_entry(&index.lists, snap, &handle, |e| {
                for c in &e.chunks {
                    match index.places.position(c) {
                        Some(i) => {
                            needed_packs.insert(index.places.pack(i));
                        }
                        None => problems.push(format!(
                            "snapshot {}: {} needs blob {}, which no index has",
                            snap.id,
                            e.path,
                            hex::encode(c)
                        )),
                    }
                }
                Ok(())
            })
        });
        if let Err(e) = read {
            problems.push(format!("snapshot {}: {e}", snap.id));
        }
    }
    needed_packs
}

/// Read pack `p` whole: its hash matches its name, its trailer matches its index object, and
/// every blob opens and matches its id.
async fn read_pack(repo: &Repository, index: &Index, p: u32, report: &mut VerifyReport) {
    let info = &index.packs[p as usize];
    let name = pack_object_name(&info.id);
    let bytes = match repo.backend.get(&name).await {
        Ok(b) => b,
        Err(e) => {
            report
                .problems
                .push(format!("repository object {name}: {e}"));
            return;
        }
    };
    report.bytes_read += bytes.len() as u64;
    if blake3::hash(&bytes).to_hex().as_str() != info.id {
        report.problems.push(format!(
            "repository object {name} is damaged: content does not match its name (hash)"
        ));
        return;
    }
    let entries = match repo.index_entries(&info.id).await {
        Ok(entries) => entries,
        Err(e) => {
            problem(report, e);
            return;
        }
    };
    if let Err(reason) = check_trailer(repo, info, &bytes, &entries) {
        report
            .problems
            .push(format!("repository object {name} is damaged: {reason}"));
    }
    // The pack's key and subkey once, and two buffers for all its blobs (each blob is opened
    // from its own copy, so entries that overlap are judged each on its own bytes).
    let opener = repo.pack_blobs(index, p);
    let (mut buf, mut scratch) = (Vec::new(), Vec::new());
    for e in &entries {
        let range = e.offset as usize..(e.offset as usize + e.stored_len as usize);
        let Some(sealed) = bytes.get(range) else {
            report.problems.push(format!(
                "repository object {name} is damaged: blob past the end"
            ));
            continue;
        };
        let opened = match &opener {
            Ok(o) => {
                buf.clear();
                buf.extend_from_slice(sealed);
                o.open_in_place(e, &mut buf, &mut scratch).map(|_| ())
            }
            // Each blob reports why its pack cannot be opened, as before.
            Err(_) => repo.pack_blobs(index, p).map(|_| ()),
        };
        if let Err(err) = opened {
            problem(report, err);
        }
    }
}

/// The pack's own trailer opens and lists the same blobs as its index object.
fn check_trailer(
    repo: &Repository,
    info: &super::repo::PackInfo,
    bytes: &[u8],
    entries: &[BlobEntry],
) -> Result<(), String> {
    let n = bytes.len();
    let tail = n
        .checked_sub(4)
        .and_then(|at| bytes.get(at..))
        .ok_or("too short")?;
    let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let r = trailer_range(n as u64, len)?;
    let key = repo.key(&info.data_key_id).map_err(|e| e.to_string())?;
    let mut trailer = bytes[r.start as usize..r.end as usize].to_vec();
    let plain_len = key
        .object_cipher(&info.salt)
        .map_err(|e| e.to_string())?
        .open(TRAILER_COUNTER, TRAILER_AAD, &mut trailer)
        .map_err(|_| "trailer authentication failed".to_string())?;
    let listed = BlobEntry::decode_all(&trailer[..plain_len]).ok_or("bad trailer entries")?;
    if listed != entries {
        return Err("trailer and index object disagree".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #30: verify's pure parts. A subset parses only as K/N within bounds, names itself back,
    /// and its groups split any set of pack ids into N parts that together hold every one.
    #[test]
    fn data_subsets_parse_and_cover_every_pack_once() {
        assert_eq!(DataSubset::parse("3/10"), Ok(DataSubset { k: 3, n: 10 }));
        for bad in ["0/10", "11/10", "1/10001", "3", "a/b", "/", ""] {
            let e = DataSubset::parse(bad).unwrap_err();
            assert!(e.contains("is not K/N"), "{bad}: {e}");
        }
        assert_eq!(DataSubset { k: 2, n: 7 }.to_string(), "2/7");
        let ids: Vec<String> = (0u32..500)
            .map(|i| blake3::hash(&i.to_le_bytes()).to_hex().to_string())
            .chain(["not-hex".to_string()])
            .collect();
        let n = 7;
        for id in &ids {
            let groups = (1..=n)
                .filter(|k| DataSubset { k: *k, n }.contains(id))
                .count();
            assert_eq!(groups, 1, "{id}");
        }
        assert!(ids.iter().all(|id| DataSubset::ALL.contains(id)));
        // A name that is not hex is read by group 1, never skipped for good.
        assert!(DataSubset { k: 1, n }.contains("not-hex"));
    }

    /// Packs without an index object are leftovers unless snapshots miss data, when each is
    /// named as the likely lost index.
    #[test]
    fn unindexed_packs_are_leftovers_unless_snapshots_miss_data() {
        let mut quiet = VerifyReport::default();
        judge_unindexed(vec!["aa".into(), "bb".into()], false, &mut quiet);
        assert_eq!((quiet.leftover_packs, quiet.problems.len()), (2, 0));
        let mut missing = VerifyReport::default();
        judge_unindexed(vec!["aa".into()], true, &mut missing);
        assert_eq!(missing.leftover_packs, 0);
        assert!(
            missing.problems[0].contains("has no index object index/aa"),
            "{:?}",
            missing.problems
        );
    }
}
