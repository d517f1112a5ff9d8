//! Forget snapshots by a retention policy, then remove data no kept snapshot needs: packs with
//! no used blob are deleted, mostly-unused packs are repacked. Runs under an exclusive lock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use super::format::{SnapshotManifest, pack_object_name};
use super::lock::{RepoLock, lock_wait};
use super::pack::PackWriter;
use super::reach::{Used, used_blobs};
use super::repo::{BlobLoc, GARBAGE_DIR, GarbageMark, PlacedIndex, Repository};
use crate::engine::error::EngineError;
use crate::kms::KeyManager;

pub use super::retention::{PruneScope, RetentionPolicy, keep, keep_in_scope};

/// What prune did (or, with dry_run, would do).
#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    /// Snapshots in the scope that stay.
    pub kept: Vec<String>,
    pub forgotten: Vec<String>,
    /// Packs marked for deletion by this run (deleted by a later run after the grace).
    pub packs_marked: usize,
    /// Marked packs deleted by this run, their grace having passed.
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    /// Marked packs a kept snapshot turned out to need: unmarked, never deleted.
    pub packs_rescued: usize,
    /// Bytes deleted by this run.
    pub bytes_freed: u64,
    /// Bytes marked and waiting for their grace to pass.
    pub bytes_pending: u64,
    /// With object lock: snapshots the policy would forget that stay because their object is
    /// locked until later (forgotten by a pass after their retention ends).
    pub locked_kept: Vec<String>,
    /// With object lock: packs due for deletion that stay, locked until later.
    pub packs_locked: usize,
    /// With object lock: objects kept snapshots need whose retention this pass extended.
    pub locks_extended: usize,
    /// Checkpoint objects of backups that never finished, older than the grace, deleted.
    pub checkpoints_deleted: usize,
}

/// How prune deletes.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Say what would be done, change nothing.
    pub dry_run: bool,
    /// A pack is deleted only once it has been marked this long (two-phase deletion: a reader
    /// without a lock, or a writer that lost its lock, never loses a pack under it sooner).
    pub grace: Duration,
}

/// The default grace between marking a pack and deleting it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            grace: DEFAULT_GRACE,
        }
    }
}

/// Forget by `policy` within `scope`; mark packs nothing kept needs (repacking packs less than
/// half used), and delete packs marked at least `grace` ago.
pub async fn prune(
    repo: &mut Repository,
    km: &dyn KeyManager,
    policy: &RetentionPolicy,
    scope: &PruneScope,
    opts: &PruneOptions,
) -> Result<PruneReport, EngineError> {
    repo.backend.check_no_unknown_lock().await?;
    let lock = RepoLock::acquire(&repo.backend, true, lock_wait(Duration::from_secs(30))).await?;
    let r = run_prune(repo, km, policy, scope, opts, &lock).await;
    lock.release().await?;
    r
}

async fn run_prune(
    repo: &mut Repository,
    km: &dyn KeyManager,
    policy: &RetentionPolicy,
    scope: &PruneScope,
    opts: &PruneOptions,
    lock: &RepoLock,
) -> Result<PruneReport, EngineError> {
    let snaps = repo.snapshots().await?;
    let mut kept = keep_in_scope(&snaps, policy, scope, jiff::Timestamp::now());
    let mut report = PruneReport {
        locked_kept: locked_snapshots(repo, &snaps, &kept).await?,
        ..Default::default()
    };
    kept.extend(report.locked_kept.iter().cloned());
    for s in &snaps {
        if kept.contains(&s.id) {
            // Snapshots outside the scope are kept untouched and not reported.
            if scope.covers(s) {
                report.kept.push(s.id.clone())
            }
        } else {
            report.forgotten.push(s.id.clone())
        }
    }
    let marks = repo.garbage_marks().await?;
    // Blobs resolve to unmarked packs first, so a blob with a live copy never keeps a marked
    // pack alive.
    let index = repo.load_placed_index().await?;
    let used = used_blobs(repo, &index, snaps.iter().filter(|s| kept.contains(&s.id))).await?;
    let mut plan = plan_packs(&index, &used, &marks);
    if repo.backend.object_lock().is_some() {
        // Repacking deletes the packs it copies out of, which their locks forbid while they
        // last: with object lock a pack stays whole until nothing needs it.
        plan.repack.clear();
    }
    report.packs_marked = plan.mark.len();
    report.packs_repacked = plan.repack.len();
    report.packs_rescued = plan.rescue.len();
    let now = jiff::Timestamp::now();
    let due: Vec<&String> = marks
        .iter()
        .filter(|(id, m)| !plan.rescue.contains(*id) && mark_is_due(m, now, opts.grace))
        .map(|(id, _)| id)
        .collect();
    // What this pass marks: packs nothing kept needs, packs repacked, and packs no index
    // names (a backup or repack killed between a pack and its index object). Index objects
    // are one per pack id, so a pack's number names it.
    let mut to_mark: Vec<(String, u64)> = plan
        .mark
        .iter()
        .chain(&plan.repack)
        .map(|p| {
            let id = index.lists.packs[*p as usize].id.clone();
            (id, plan.stored.get(p).copied().unwrap_or(0))
        })
        .collect();
    // Where a kept snapshot needs a blob no index has, an index object was lost, and a pack
    // without one may hold what it needs: none is marked (verify names them).
    let unindexed = if used.all_indexed() {
        unindexed_packs(repo, &index.lists, &marks).await?
    } else {
        Vec::new()
    };
    report.packs_marked += unindexed.len();
    to_mark.extend(unindexed);
    if opts.dry_run {
        report.packs_deleted = due.len();
        report.bytes_freed = due.iter().map(|id| marks[*id].bytes).sum();
        report.bytes_pending = to_mark.iter().map(|(_, bytes)| bytes).sum();
        report.checkpoints_deleted = repo.prune_checkpoints(now, opts.grace, true).await?;
        return Ok(report);
    }
    lock.check()?;
    report.locks_extended = extend_locks(repo, &index, &used, &snaps, &kept).await?;
    // Each forgotten snapshot's file list is recorded as unfinished before its object goes:
    // a prune killed in between leaves lists that verify knows for leftovers.
    for s in snaps.iter().filter(|s| report.forgotten.contains(&s.id)) {
        repo.put_unfinished(&s.id, &s.tree, "prune").await?;
        repo.backend.delete(&format!("snapshots/{}", s.id)).await?;
    }
    for id in &plan.rescue {
        repo.backend.delete(&format!("{GARBAGE_DIR}/{id}")).await?;
    }
    // Repack: copy used blobs into new packs; their indexes are written before old packs are
    // marked.
    if !plan.repack.is_empty() {
        repack(repo, km, &index, &plan, &used).await?;
    }
    let stamp = now.to_string();
    for (id, bytes) in &to_mark {
        let mark = GarbageMark {
            marked: stamp.clone(),
            bytes: *bytes,
        };
        repo.backend
            .put(&format!("{GARBAGE_DIR}/{id}"), serde_json::to_vec(&mark)?)
            .await?;
        report.bytes_pending += bytes;
    }
    // Phase two: packs whose mark is older than the grace go (with a grace of zero, also the
    // ones just marked). The pack first, its index and mark after: a pass that stops half-way
    // leaves a mark that the next pass finishes.
    let mut due: Vec<(String, u64)> = due
        .into_iter()
        .map(|id| (id.clone(), marks[id].bytes))
        .collect();
    if opts.grace.is_zero() {
        due.extend(to_mark);
        report.bytes_pending = 0;
    }
    let deleted = delete_due(repo, due, lock, &mut report).await?;
    drop_finished_records(repo, &index.lists, &deleted, &snaps, &kept).await?;
    // No backup runs while this pass holds the exclusive lock: a checkpoint is a killed run's,
    // kept for a retry until the grace has passed.
    report.checkpoints_deleted = repo.prune_checkpoints(now, opts.grace, false).await?;
    Ok(report)
}

/// Phase two of deletion: each due pack, then its index object and mark (a pass that stops
/// half-way leaves a mark the next one finishes); a locked pack stays, with its mark. The ids
/// deleted.
async fn delete_due(
    repo: &Repository,
    due: Vec<(String, u64)>,
    lock: &RepoLock,
    report: &mut PruneReport,
) -> Result<HashSet<String>, EngineError> {
    let mut deleted = HashSet::new();
    for (id, bytes) in due {
        lock.check()?;
        if is_locked(repo, &pack_object_name(&id)).await? {
            // Its mark stays: a pass after the retention ends deletes it.
            report.packs_locked += 1;
            continue;
        }
        repo.backend.delete(&pack_object_name(&id)).await?;
        repo.backend.delete(&format!("index/{id}")).await?;
        repo.backend.delete(&format!("{GARBAGE_DIR}/{id}")).await?;
        report.packs_deleted += 1;
        report.bytes_freed += bytes;
        deleted.insert(id);
    }
    Ok(deleted)
}

/// Whether `name` is locked now (object lock, its retention not over).
async fn is_locked(repo: &Repository, name: &str) -> Result<bool, EngineError> {
    let now = jiff::Timestamp::now();
    Ok(repo
        .backend
        .retained_until(name)
        .await?
        .is_some_and(|until| until > now))
}

/// With object lock, the snapshots outside `kept` whose object is still locked: they stay
/// (prune never tries to delete a locked object).
async fn locked_snapshots(
    repo: &Repository,
    snaps: &[SnapshotManifest],
    kept: &BTreeSet<String>,
) -> Result<Vec<String>, EngineError> {
    let mut out = Vec::new();
    if repo.backend.object_lock().is_none() {
        return Ok(out);
    }
    for s in snaps.iter().filter(|s| !kept.contains(&s.id)) {
        if is_locked(repo, &format!("snapshots/{}", s.id)).await? {
            out.push(s.id.clone());
        }
    }
    Ok(out)
}

/// With object lock, keep locked everything the kept snapshots need (the config, the key
/// records, the snapshots, their packs and index objects): each whose retention is in its
/// second half (or that has none) is extended by a whole period. How many were.
async fn extend_locks(
    repo: &Repository,
    index: &PlacedIndex,
    used: &Used,
    snaps: &[SnapshotManifest],
    kept: &BTreeSet<String>,
) -> Result<usize, EngineError> {
    if repo.backend.object_lock().is_none() {
        return Ok(0);
    }
    let mut names = vec!["config".to_string()];
    names.extend(
        repo.key_records()
            .iter()
            .map(|r| format!("keys/{}", r.data_key_id)),
    );
    names.extend(
        snaps
            .iter()
            .filter(|s| kept.contains(&s.id))
            .map(|s| format!("snapshots/{}", s.id)),
    );
    for p in used.packs(&index.places) {
        let id = &index.lists.packs[p as usize].id;
        names.push(pack_object_name(id));
        names.push(format!("index/{id}"));
    }
    let now = jiff::Timestamp::now();
    let mut extended = 0;
    for name in names {
        if repo.backend.keep_locked(&name, now).await? {
            extended += 1;
        }
    }
    Ok(extended)
}

/// Packs in `data/` that no index object names and no mark covers, with their sizes: what a
/// backup or repack killed after storing a pack and before its index object leaves. Nothing
/// can read them (readers find blobs through the index), so they are garbage; under prune's
/// exclusive lock no writer is between the two writes, and the mark's grace covers one whose
/// lock went stale while it still ran (its index, once written, makes the pack rescuable).
async fn unindexed_packs(
    repo: &Repository,
    index: &super::repo::Index,
    marks: &HashMap<String, GarbageMark>,
) -> Result<Vec<(String, u64)>, EngineError> {
    let indexed: HashSet<&str> = index.packs.iter().map(|p| p.id.as_str()).collect();
    Ok(repo
        .backend
        .list("data")
        .await?
        .into_iter()
        .filter_map(|(name, size)| name.rsplit('/').next().map(|id| (id.to_string(), size)))
        .filter(|(id, _)| {
            super::repo::is_object_id(id)
                && !indexed.contains(id.as_str())
                && !marks.contains_key(id)
        })
        .collect())
}

/// Unfinished records (see [`super::repo::UNFINISHED_DIR`]) whose file lists are gone, or named by a kept
/// snapshot, excuse nothing any more: deleted. Run under prune's exclusive lock, so no backup
/// is between writing its record and its snapshot.
async fn drop_finished_records(
    repo: &Repository,
    index: &super::repo::Index,
    deleted: &HashSet<String>,
    snaps: &[SnapshotManifest],
    kept: &BTreeSet<String>,
) -> Result<(), EngineError> {
    let present: HashSet<String> = index
        .blobs
        .iter()
        .filter(|(_, loc)| {
            loc.entry.kind == super::format::BlobKind::Tree
                && !deleted.contains(&index.packs[loc.pack as usize].id)
        })
        .map(|(id, _)| hex::encode(id))
        .collect();
    let named: HashSet<&String> = snaps
        .iter()
        .filter(|s| kept.contains(&s.id))
        .flat_map(|s| &s.tree)
        .collect();
    for (name, trees) in repo.unfinished().await? {
        if trees
            .iter()
            .all(|t| !present.contains(t) || named.contains(t))
        {
            repo.backend.delete(&name).await?;
        }
    }
    Ok(())
}

/// Is a mark made at `m.marked` at least `grace` old? An unreadable time is never due.
fn mark_is_due(m: &GarbageMark, now: jiff::Timestamp, grace: Duration) -> bool {
    m.marked
        .parse::<jiff::Timestamp>()
        .map(|t| now.duration_since(t).as_secs_f64() >= grace.as_secs_f64())
        .unwrap_or(false)
}

/// What prune does with each pack. Pure.
#[derive(Debug, Default, PartialEq, Eq)]
struct PackPlan {
    /// Unmarked packs no kept snapshot needs: to mark.
    mark: Vec<u32>,
    /// Unmarked packs more unused than used: used blobs copied out, then marked.
    repack: Vec<u32>,
    /// Marked packs a kept snapshot needs: to unmark.
    rescue: BTreeSet<String>,
    /// Stored bytes per pack (from the index).
    stored: HashMap<u32, u64>,
}

fn plan_packs(index: &PlacedIndex, used: &Used, marks: &HashMap<String, GarbageMark>) -> PackPlan {
    let mut plan = PackPlan::default();
    // Per pack: bytes of blobs a kept snapshot reads from it, and of the others.
    let mut per_pack: Vec<(u64, u64)> = vec![(0, 0); index.lists.packs.len()];
    for i in 0..index.places.len() {
        let len = u64::from(index.places.stored_len(i));
        if let Some(e) = per_pack.get_mut(index.places.pack(i) as usize) {
            if used.at(i) { e.0 += len } else { e.1 += len }
        }
    }
    for (p, (u, n)) in per_pack.into_iter().enumerate() {
        let p = p as u32;
        plan.stored.insert(p, u + n);
        let id = &index.lists.packs[p as usize].id;
        if marks.contains_key(id) {
            if u > 0 {
                plan.rescue.insert(id.clone());
            }
        } else if u == 0 {
            plan.mark.push(p);
        } else if n > u {
            plan.repack.push(p);
        }
    }
    plan
}

/// Copy the used blobs of the packs to repack into new packs, with their indexes.
async fn repack(
    repo: &mut Repository,
    km: &dyn KeyManager,
    index: &PlacedIndex,
    plan: &PackPlan,
    used: &Used,
) -> Result<(), EngineError> {
    let (key, _) = repo.active_data_key(km).await?;
    let staging = repo.backend.staging_dir()?.to_path_buf();
    let mut w = PackWriter::new(&staging, &key)?;
    let mut moved = HashSet::new();
    for p in &plan.repack {
        // The pack's blobs from its index object (the places keep no offsets): those a kept
        // snapshot reads from this pack.
        let places = &index.places;
        let mut locs: Vec<BlobLoc> = repo
            .index_entries(&index.lists.packs[*p as usize].id)
            .await?
            .into_iter()
            .filter(|e| {
                places
                    .position(&e.id)
                    .is_some_and(|i| places.pack(i) == *p && used.at(i))
            })
            .map(|entry| BlobLoc { pack: *p, entry })
            .collect();
        locs.sort_by_key(|l| l.entry.offset);
        for loc in locs {
            if !moved.insert(loc.entry.id) {
                continue;
            }
            let plain = repo.read_blob_at(&index.lists, &loc).await?;
            let (data, compressed) = if loc.entry.compressed() {
                (
                    zstd::bulk::compress(&plain, 1)
                        .map_err(|e| EngineError::Worker(e.to_string()))?,
                    true,
                )
            } else {
                (plain, false)
            };
            w.add(
                loc.entry.id,
                loc.entry.kind,
                loc.entry.raw_len,
                compressed,
                data,
            )?;
            if w.size() >= repo.config.pack_size {
                let staged =
                    std::mem::replace(&mut w, PackWriter::new(&staging, &key)?).finish()?;
                repo.backend
                    .commit_staged(&staged.path, &pack_object_name(&staged.id))
                    .await?;
                repo.put_index(&key, &staged).await?;
            }
        }
    }
    if w.is_empty() {
        w.discard();
    } else {
        let staged = w.finish()?;
        repo.backend
            .commit_staged(&staged.path, &pack_object_name(&staged.id))
            .await?;
        repo.put_index(&key, &staged).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which blobs kept snapshots need is a bit per indexed blob, at the place its id has in
    /// the index (a blob in two packs counts once, at the pack preferred for it), plus the
    /// ids no index has; and the plan reads those bits: a pack with nothing needed is marked,
    /// one mostly unneeded is repacked, one mostly needed is left.
    #[test]
    fn needed_blobs_are_a_bit_each_and_plan_the_packs() {
        use crate::engine::format::{BlobEntry, BlobKind};
        use crate::engine::repo::{PackInfo, PlacedIndexBuilder};
        let id = |i: u64| *blake3::hash(&i.to_le_bytes()).as_bytes();
        let entry = |i: u64| BlobEntry {
            id: id(i),
            offset: 0,
            stored_len: 100,
            raw_len: 100,
            kind: BlobKind::Data,
            flags: 0,
        };
        let pack = |n: u8| PackInfo {
            id: format!("{n:064x}"),
            data_key_id: [0; 16],
            salt: [0; 32],
        };
        // Pack 0: blobs 0-9; pack 1: 10-19; pack 2: 20-29; blob 0 also in pack 2 (pack 0,
        // added first, is preferred).
        let mut b = PlacedIndexBuilder::default();
        for p in 0..3u64 {
            let mut entries: Vec<BlobEntry> = (p * 10..p * 10 + 10).map(entry).collect();
            if p == 2 {
                entries.push(entry(0));
            }
            b.add(pack(p as u8), entries).expect("add");
        }
        let index = b.finish().expect("index");
        assert_eq!(index.places.len(), 30);
        let mut used = Used::new(index.places.len());
        // All of pack 0, none of pack 1, three of pack 2.
        for i in (0..10).chain(20..23) {
            used.add(&index.places, &id(i));
        }
        assert!(used.all_indexed());
        let needed: Vec<u64> = (0..30)
            .filter(|i| used.at(index.places.position(&id(*i)).unwrap()))
            .collect();
        assert_eq!(needed, (0..10).chain(20..23).collect::<Vec<_>>());
        assert_eq!(used.bits.len(), 1, "30 blobs are one word of bits");
        let plan = plan_packs(&index, &used, &HashMap::new());
        assert_eq!((plan.mark, plan.repack), (vec![1], vec![2]));
        assert_eq!(plan.stored.get(&0), Some(&1000));
        // An id no index has is named, not a bit.
        used.add(&index.places, &id(99));
        assert!(!used.all_indexed());
        // A million blobs: 125,000 bytes of bits.
        assert_eq!(Used::new(1_000_000).bits.len() * 8, 125_000);
    }
}
