//! Copying snapshots into a second repository (`snapcrypt copy`): a copy made off-site, under
//! another master key, that restores with that key alone.
//!
//! Nothing is re-encrypted. Packs, index objects and snapshot objects travel byte for byte,
//! still sealed under the source's data keys; the target gets its own key records, the same
//! data keys wrapped under the target's master key. A target created by a copy shares the
//! source's chunk-id key (so its chunk ids, and deduplication, are the source's), not its
//! repository id. What the target already holds is never sent again: each run lists the target
//! and copies only the packs, index objects and snapshots it lacks, so a copy killed anywhere is
//! finished by running it again. Packs first, each checked against its name (BLAKE3) as it
//! passes, then its index object, then the snapshots that need them: a snapshot is never in the
//! target before everything it needs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::backend::Backend;
use super::format::{SnapshotManifest, pack_object_name};
use super::lock::{RepoLock, lock_wait};
use super::progress::Progress;
use super::reach::used_blobs;
use super::repo::{Repository, Selector, choose};
use super::retention::{PruneScope, RetentionPolicy, keep_in_scope};
use crate::engine::error::EngineError;
use crate::kms::KeyManager;

/// Packs in flight at once: each is held whole while its hash is checked (a pack is at most
/// the repository's pack size, 32 MiB by default), so memory stays near this many packs
/// whatever the repository's size.
const PACKS_IN_FLIGHT: usize = 3;

/// Which snapshots of the source to copy.
#[derive(Clone, Debug)]
pub enum CopySelection {
    /// Every snapshot carrying all of these tags (all of them when empty), but those the
    /// target's own `retention` (applied to these tags' snapshots of both repositories
    /// together) would forget: a copy never brings back what the target's retention removed.
    /// An empty policy keeps all.
    All {
        tags: BTreeMap<String, String>,
        retention: RetentionPolicy,
    },
    /// One snapshot: latest, an id, or before a time, among those with its tags.
    One(Selector),
}

/// What a copy did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CopyReport {
    /// The target's repository id.
    pub target_id: String,
    /// Whether this run created the target repository.
    pub created: bool,
    /// The snapshots copied by this run, oldest first.
    pub copied: Vec<String>,
    /// The selected snapshots the target already held.
    pub already_there: usize,
    /// The selected snapshots not copied because the target's retention would forget them.
    pub outside_retention: usize,
    /// Packs sent by this run, and their bytes.
    pub packs_copied: usize,
    pub bytes_copied: u64,
    /// Packs the copied snapshots need that the target already held.
    pub packs_already_there: usize,
    /// Index objects sent.
    pub index_copied: usize,
    /// Key records written to the target (the source's data keys under the target's master key).
    pub keys_written: usize,
}

/// Copy the snapshots `which` names from `source` into the repository at `target` (created,
/// sharing the source's chunk-id key, if there is none), whose key records `target_km` wraps.
/// Holds a reader's lock on the source (no prune removes what is being copied) and a shared
/// lock on the target (as a backup does: no prune runs there meanwhile). `progress` counts the
/// packs to send and their bytes ("files" are packs here).
pub async fn copy(
    source: &Repository,
    target: Backend,
    target_km: &dyn KeyManager,
    which: &CopySelection,
    progress: &Progress,
) -> Result<CopyReport, EngineError> {
    let wait = lock_wait(Duration::from_secs(600));
    let (source_lock, _) = RepoLock::acquire_reader(&source.backend, wait).await?;
    let result = async {
        let (target, created, keys) = open_or_create(source, target, target_km).await?;
        let lock = RepoLock::acquire(&target.backend, false, wait).await?;
        let r = run_copy(source, &target, target_km, which, &lock, progress).await;
        lock.release().await?;
        let mut report = r?;
        report.created = created;
        report.keys_written += keys;
        report.target_id = target.config.id.clone();
        Ok(report)
    }
    .await;
    if let Some(l) = source_lock {
        l.release().await?;
    }
    result
}

/// A copy refused or failed, naming both repositories.
fn refused(source: &Repository, target: &Backend, reason: String) -> EngineError {
    EngineError::Copy {
        from: source.backend.display().to_string(),
        to: target.display().to_string(),
        reason,
    }
}

/// Open the target, or create it as a copy of the source's config (its own id) with the
/// source's data keys wrapped under `km`: the key records first, then the config, as a new
/// repository is made; returns it, whether this call created it, and the key records written.
/// An existing target must be one an earlier copy from this source (or
/// from a copy of it) made: one with the source's chunk-id key.
async fn open_or_create(
    source: &Repository,
    target: Backend,
    km: &dyn KeyManager,
) -> Result<(Repository, bool, usize), EngineError> {
    if !target.exists("config").await? {
        let keys = put_key_records(source, &target, km, &HashSet::new()).await?;
        let mut config = source.config.clone();
        config.id = hex::encode(&super::crypto::random_id()?[..16]);
        config.created = jiff::Timestamp::now().to_string();
        config.mac = config.compute_mac(source.chunk_hasher()?.id_key());
        // Create-only: two copies creating the same target at once leave one config, and the
        // loser opens the winner's (the same data keys, so the same records either way).
        let created = target
            .put_new("config", serde_json::to_vec_pretty(&config)?)
            .await?;
        let repo = Repository::open(target, km).await?;
        return Ok((repo, created, keys));
    }
    let display = target.clone();
    let repo = match Repository::open(target, km).await {
        Ok(repo) => repo,
        Err(EngineError::KeyRecord { object, source: e }) => {
            return Err(refused(
                source,
                &display,
                format!(
                    "the target's key record {object} does not open with the target's key ({e}): give the key the target repository was created with (--to-key-file or the --to-kmip flags)"
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    if repo.config.id == source.config.id {
        return Err(refused(
            source,
            &display,
            format!(
                "the target is the source repository itself (repository id {}): copy to another store, bucket or prefix",
                repo.config.id
            ),
        ));
    }
    if repo.chunk_hasher()?.id_key() != source.chunk_hasher()?.id_key() {
        return Err(refused(
            source,
            &display,
            format!(
                "the target repository (id {}) was not made by copying from this one (its chunk-id key differs, so the source's packs mean nothing there): copy into an empty location, or into a repository an earlier copy from this source made",
                repo.config.id
            ),
        ));
    }
    Ok((repo, false, 0))
}

/// Key records in `target` for the source's data keys whose ids are not in `have`: the same
/// data keys wrapped under `km`. Returns how many were written.
async fn put_key_records(
    source: &Repository,
    target: &Backend,
    km: &dyn KeyManager,
    have: &HashSet<&str>,
) -> Result<usize, EngineError> {
    let mut written = 0;
    for record in source.key_records() {
        if have.contains(record.data_key_id.as_str()) {
            continue;
        }
        let id =
            super::repo::parse_key_id(&record.data_key_id).ok_or_else(|| EngineError::Corrupt {
                object: format!("keys/{}", record.data_key_id),
                reason: "bad data key id".into(),
            })?;
        let key = source.key(&id)?;
        let wrapped = Repository::rewrapped_record(km, &key, record).await?;
        target
            .put(
                &format!("keys/{}", record.data_key_id),
                serde_json::to_vec_pretty(&wrapped)?,
            )
            .await?;
        written += 1;
    }
    Ok(written)
}

/// The objects of `dir` in `backend`: the last part of each name (an id) and its size.
async fn ids_in(backend: &Backend, dir: &str) -> Result<HashMap<String, u64>, EngineError> {
    Ok(backend
        .list(dir)
        .await?
        .into_iter()
        .filter_map(|(name, size)| Some((name.rsplit('/').next()?.to_string(), size)))
        .collect())
}

/// The selected snapshots of `all` (oldest first).
fn selected(
    all: Vec<SnapshotManifest>,
    which: &CopySelection,
) -> Result<Vec<SnapshotManifest>, EngineError> {
    match which {
        CopySelection::All { tags, .. } => {
            let mut chosen: Vec<SnapshotManifest> = all
                .into_iter()
                .filter(|m| tags.iter().all(|(k, v)| m.tags.get(k) == Some(v)))
                .collect();
            // Oldest first (as the repository lists them, they are in id order): a copy
            // killed part-way holds the older ones, as a report says.
            chosen.sort_by_cached_key(|m| (m.time.parse::<jiff::Timestamp>().ok(), m.id.clone()));
            Ok(chosen)
        }
        CopySelection::One(s) => Ok(vec![choose(all, s)?]),
    }
}

async fn run_copy(
    source: &Repository,
    target: &Repository,
    km: &dyn KeyManager,
    which: &CopySelection,
    lock: &RepoLock,
    progress: &Progress,
) -> Result<CopyReport, EngineError> {
    let mut report = CopyReport::default();
    // Data keys the source made since the target was created (a rotation): wrapped for the
    // target before anything sealed under them arrives.
    let have: HashSet<&str> = target
        .key_records()
        .iter()
        .map(|r| r.data_key_id.as_str())
        .collect();
    report.keys_written += put_key_records(source, &target.backend, km, &have).await?;

    let mut chosen = selected(source.snapshots().await?, which)?;
    if let CopySelection::All { tags, retention } = which
        && !retention.is_empty()
    {
        let mut both = target.snapshots().await?;
        both.retain(|t| !chosen.iter().any(|c| c.id == t.id));
        both.extend(chosen.iter().cloned());
        let scope = PruneScope {
            tags: tags.clone(),
            protect: Default::default(),
        };
        let kept = keep_in_scope(&both, retention, &scope, jiff::Timestamp::now());
        let before = chosen.len();
        chosen.retain(|m| kept.contains(&m.id));
        report.outside_retention = before - chosen.len();
    }
    let there = ids_in(&target.backend, "snapshots").await?;
    let (todo, present): (Vec<_>, Vec<_>) =
        chosen.into_iter().partition(|m| !there.contains_key(&m.id));
    report.already_there = present.len();
    if todo.is_empty() {
        return Ok(report);
    }
    let index = source.load_placed_index().await?;
    let used = used_blobs(source, &index, todo.iter()).await?;
    if used.unindexed() > 0 {
        return Err(refused(
            source,
            &target.backend,
            format!(
                "{} blob(s) the snapshots to copy need are in no index object of the source: nothing was copied; run `snapcrypt verify` on the source, then `snapcrypt repair index`",
                used.unindexed()
            ),
        ));
    }
    let packs: Vec<&str> = used
        .packs(&index.places)
        .into_iter()
        .map(|p| index.lists.packs[p as usize].id.as_str())
        .collect();
    let packs_there = ids_in(&target.backend, "data").await?;
    let index_there = ids_in(&target.backend, "index").await?;
    report.packs_already_there = packs
        .iter()
        .filter(|p| packs_there.contains_key(**p))
        .count();
    let sizes = ids_in(&source.backend, "data").await?;
    let sending = packs.iter().filter(|p| !packs_there.contains_key(**p));
    let bytes: u64 = sending.clone().filter_map(|p| sizes.get(*p)).sum();
    progress.set_totals(sending.count() as u64, bytes);
    let sent: Vec<(u64, bool)> = futures::stream::iter(packs.iter().map(|id| {
        let (send_pack, send_index) = (
            !packs_there.contains_key(*id),
            !index_there.contains_key(*id),
        );
        async move {
            let mut bytes = 0;
            if send_pack {
                lock.check()?;
                bytes = copy_pack(source, target, id).await?;
                progress.add_bytes(bytes);
                progress.add_file();
            }
            if send_index {
                let name = format!("index/{id}");
                let sealed = source.backend.get(&name).await?;
                target.backend.put(&name, Vec::from(sealed)).await?;
            }
            Ok::<_, EngineError>((bytes, send_index))
        }
    }))
    .buffer_unordered(PACKS_IN_FLIGHT)
    .try_collect()
    .await?;
    for (bytes, indexed) in sent {
        if bytes > 0 {
            report.packs_copied += 1;
            report.bytes_copied += bytes;
        }
        report.index_copied += usize::from(indexed);
    }
    // The snapshots last, oldest first: each arrives after everything it needs.
    for m in todo {
        lock.check()?;
        let name = format!("snapshots/{}", m.id);
        let sealed = source.backend.get(&name).await?;
        target.backend.put(&name, Vec::from(sealed)).await?;
        report.copied.push(m.id);
    }
    Ok(report)
}

/// Copy pack `id`, checking its bytes against its name (the BLAKE3 of its contents) before
/// they are written: a damaged pack is never copied. Returns its size.
async fn copy_pack(source: &Repository, target: &Repository, id: &str) -> Result<u64, EngineError> {
    let name = pack_object_name(id);
    let bytes = source.backend.get(&name).await?;
    let hash = tokio::task::block_in_place(|| blake3::hash(&bytes));
    if hash.to_hex().as_str() != id {
        return Err(EngineError::Corrupt {
            object: name,
            reason: format!(
                "in the source its contents do not match its name (BLAKE3 {}): nothing of it was copied; run `snapcrypt verify --read-data` on the source",
                hash.to_hex()
            ),
        });
    }
    let len = bytes.len() as u64;
    target.backend.put(&name, Vec::from(bytes)).await?;
    Ok(len)
}
