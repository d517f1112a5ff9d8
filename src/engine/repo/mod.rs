//! An open repository: its config and its unwrapped data keys. What it reads and writes is in
//! one module per kind of object: [`keys`] (key records), [`sealed`] (sealed objects and
//! blobs), [`index`] (index objects and deletion marks), [`snapshots`] (snapshots and file
//! lists).

mod blob_map;
mod blob_places;
mod checkpoints;
mod fuzz;
mod index;
mod keys;
pub mod owners;
mod repair;
mod sealed;
mod select;
mod snapshots;
pub use self::checkpoints::{CHECKPOINT_DIR, CheckpointHead, CheckpointSegment, checkpoint_name};
pub use self::keys::rewrap_wait;
pub use self::repair::{RepairReport, repair_index};
pub use self::select::{Selector, Which, choose};
pub(crate) use self::snapshots::tree_ids;
pub use self::snapshots::{UNFINISHED_DIR, check_tree};

pub use self::blob_map::BlobMap;
pub use self::blob_places::{BlobPlaces, PlacedIndex, PlacedIndexBuilder};
pub use self::index::{
    BlobLoc, GARBAGE_DIR, GarbageMark, Index, IndexBuilder, PackInfo, is_object_id,
};
pub use self::sealed::PackBlobs;

#[doc(hidden)]
pub use fuzz::fuzz_repository_documents;

use std::collections::HashMap;
use std::sync::Arc;

use super::backend::{Backend, BackendError, SMALL_OBJECT_MAX};
use super::crypto::{DataKey, random_id};
use super::format::{ChunkerParams, Config, FORMAT_VERSION, KeyRecord};
use crate::engine::error::EngineError;
use crate::kms::KeyManager;

/// Default chunk size: see docs/REPOSITORY.md for the measurements behind it.
pub const DEFAULT_CHUNK_SIZE: u32 = 16 * 1024;
/// Default pack size.
pub const DEFAULT_PACK_SIZE: u64 = 32 * 1024 * 1024;

/// An open repository with its data keys unwrapped.
pub struct Repository {
    pub backend: Backend,
    pub config: Config,
    keys: HashMap<[u8; 16], Arc<DataKey>>,
    records: Vec<KeyRecord>,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

pub(super) fn parse_key_id(hex_id: &str) -> Option<[u8; 16]> {
    let v = hex::decode(hex_id).ok()?;
    v.try_into().ok()
}

/// The chunk sizes this build cuts and reads: fixed chunks of a power of two from 4 KiB to
/// 1 MiB (they divide the 4 MiB segments a backup reads).
pub const CHUNK_SIZES: std::ops::RangeInclusive<u32> = 4096..=1024 * 1024;

/// A repository's chunker, from its config (untrusted until checked): anything this build
/// cannot cut is refused by name, never a panic later.
pub(super) fn check_chunker(c: &ChunkerParams) -> Result<(), EngineError> {
    if c.kind != "fixed" || !c.size.is_power_of_two() || !CHUNK_SIZES.contains(&c.size) {
        return Err(EngineError::Corrupt {
            object: "config".into(),
            reason: format!(
                "chunker {:?} of {} bytes: this build reads fixed chunks of a power of two from {} to {} bytes",
                c.kind,
                c.size,
                CHUNK_SIZES.start(),
                CHUNK_SIZES.end()
            ),
        });
    }
    Ok(())
}

impl Repository {
    /// Open an existing repository, unwrapping its data keys with `km`.
    pub async fn open(backend: Backend, km: &dyn KeyManager) -> Result<Self, EngineError> {
        Self::open_any(backend, &[km]).await
    }

    /// Open an existing repository, unwrapping each data key with whichever of `kms` can
    /// (a key migration that stopped half-way is resumed with both the old and the new).
    pub async fn open_any(backend: Backend, kms: &[&dyn KeyManager]) -> Result<Self, EngineError> {
        let config = match backend.get_limited("config", SMALL_OBJECT_MAX).await {
            Ok(bytes) => {
                serde_json::from_slice::<Config>(&bytes).map_err(|e| EngineError::Corrupt {
                    object: "config".into(),
                    reason: e.to_string(),
                })?
            }
            Err(BackendError::NotFound { .. }) => {
                return Err(EngineError::NoRepository {
                    repo: backend.display().to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if config.format != "snapcrypt-repository" || config.version != FORMAT_VERSION {
            return Err(EngineError::Corrupt {
                object: "config".into(),
                reason: format!(
                    "format {} version {}, this build reads version {FORMAT_VERSION}",
                    config.format, config.version
                ),
            });
        }
        check_chunker(&config.chunker)?;
        let mut repo = Repository {
            backend,
            config,
            keys: HashMap::new(),
            records: Vec::new(),
        };
        repo.load_keys(kms).await?;
        // The config names the data key it was created with; its chunk-id key is the
        // repository's. A record with another chunk-id key (a second creator's, on a store
        // without conditional writes, where both configs were written and the last one stayed)
        // is kept: data may have been written under it, and it opens that data. New data keys
        // take the config's chunk-id key (`active_data_key`).
        let first = parse_key_id(&repo.config.key).ok_or_else(|| EngineError::Corrupt {
            object: "config".into(),
            reason: "no valid data key id".into(),
        })?;
        let id_key = *repo.key(&first)?.id_key();
        if repo.config.mac != repo.config.compute_mac(&id_key) {
            return Err(EngineError::Corrupt {
                object: "config".into(),
                reason: "authentication failed: altered".into(),
            });
        }
        Ok(repo)
    }

    /// A data key whose chunk-id key is the repository's (the key the config names): what
    /// computes a chunk's id from its contents.
    pub fn chunk_hasher(
        &self,
    ) -> Result<std::sync::Arc<crate::engine::crypto::DataKey>, EngineError> {
        let first = parse_key_id(&self.config.key).ok_or_else(|| EngineError::Corrupt {
            object: "config".into(),
            reason: "no valid data key id".into(),
        })?;
        self.key(&first)
    }

    /// Open the repository, creating it (config and a first data key) if it does not exist.
    /// Returns whether it was created.
    pub async fn open_or_init(
        backend: Backend,
        km: &dyn KeyManager,
        chunk_size: u32,
    ) -> Result<(Self, bool), EngineError> {
        if backend.exists("config").await? {
            return Ok((Self::open(backend, km).await?, false));
        }
        // The key record goes first: a config is never visible without a key to read it.
        let key = DataKey::generate(None)?;
        let record = Self::wrap_record(km, &key, None).await?;
        let name = format!("keys/{}", record.data_key_id);
        backend
            .put(&name, serde_json::to_vec_pretty(&record)?)
            .await?;
        let mut config = Config {
            format: "snapcrypt-repository".into(),
            version: FORMAT_VERSION,
            id: hex::encode(&random_id()?[..16]),
            created: now_rfc3339(),
            chunker: ChunkerParams {
                kind: "fixed".into(),
                size: chunk_size,
            },
            pack_size: DEFAULT_PACK_SIZE,
            key: hex::encode(key.id),
            mac: String::new(),
        };
        config.mac = config.compute_mac(key.id_key());
        if !backend
            .put_new("config", serde_json::to_vec_pretty(&config)?)
            .await?
        {
            // A config exists: another writer created the repository at the same moment, or
            // this create was applied and its answer lost, so that the store's retry found our
            // own config. Only in the first case is our key record unused; deleting it in the
            // second would leave a config naming a key that is gone.
            let existing = backend.get_limited("config", SMALL_OBJECT_MAX).await?;
            let theirs: Config =
                serde_json::from_slice(&existing).map_err(|e| EngineError::Corrupt {
                    object: "config".into(),
                    reason: e.to_string(),
                })?;
            if theirs.key == config.key {
                return Ok((Self::open(backend, km).await?, true));
            }
            backend.delete(&name).await?;
            return Ok((Self::open(backend, km).await?, false));
        }
        Ok((Self::open(backend, km).await?, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;

    use crate::kms::KmsError;

    use crate::engine::backend::{Location, StoreOptions};
    use crate::kms::local::LocalKeyManager;

    /// A key manager that stops answering after `n` wraps (a KMS outage mid-migration).
    struct FailsAfter {
        inner: LocalKeyManager,
        left: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl KeyManager for FailsAfter {
        fn kind(&self) -> &'static str {
            self.inner.kind()
        }
        async fn active_key_id(&self) -> Result<String, KmsError> {
            self.inner.active_key_id().await
        }
        async fn wrap(&self, plaintext: &[u8]) -> Result<crate::kms::WrappedKey, KmsError> {
            use std::sync::atomic::Ordering;
            if self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err(KmsError::Other("key server unreachable".into()));
            }
            self.inner.wrap(plaintext).await
        }
        async fn unwrap(
            &self,
            w: &crate::kms::WrappedKey,
        ) -> Result<crate::kms::SecretBytes, KmsError> {
            self.inner.unwrap(w).await
        }
    }

    async fn open_local(
        dir: &std::path::Path,
        km: &dyn KeyManager,
    ) -> Result<Repository, EngineError> {
        let backend = Backend::open(
            &Location::Local(dir.join("repo")),
            &StoreOptions::default(),
            true,
        )?;
        Ok(Repository::open_or_init(backend, km, DEFAULT_CHUNK_SIZE)
            .await?
            .0)
    }

    /// A migration that races a writer: a data key record wrapped by the old key appears
    /// while the rewrap runs (an older client, a backup that made its key just before the
    /// lock). The rewrap lists the records again before it finishes, so the repository opens
    /// with the new key alone; and it holds the exclusive lock while it works (a live shared
    /// lock makes it wait, then fail naming the holder, with nothing rewrapped).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewrap_lists_the_records_again_and_misses_none_made_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let old = LocalKeyManager::create(&dir.path().join("old.json")).unwrap();
        let new = LocalKeyManager::create(&dir.path().join("new.json")).unwrap();
        let mut repo = open_local(dir.path(), &old).await.unwrap();
        // The racing writer's record, wrapped by the old key, written during the first pass.
        let racer = DataKey::generate(Some(
            repo.key(&repo.keys.keys().next().copied().unwrap())
                .unwrap()
                .id_key(),
        ))
        .unwrap();
        let record = Repository::wrap_record(&old, &racer, None).await.unwrap();
        let path = dir.path().join(format!("repo/keys/{}", record.data_key_id));
        let bytes = serde_json::to_vec_pretty(&record).unwrap();
        let mut planted = false;
        let n = repo
            .rewrap_locked(&[&old, &new], &new, Duration::from_secs(5), |_, _| {
                if !planted {
                    std::fs::write(&path, &bytes).unwrap();
                    planted = true;
                }
            })
            .await
            .unwrap();
        assert_eq!(n, 2, "the first record and the one made beside the rewrap");
        let again = open_local(dir.path(), &new).await.unwrap();
        assert_eq!(again.key_records().len(), 2);
        assert!(again.key(&racer.id).is_ok());
        // Under a live shared lock (a running backup) it waits, then fails: nothing changes.
        let other = LocalKeyManager::create(&dir.path().join("other.json")).unwrap();
        let lock =
            crate::engine::lock::RepoLock::acquire(&again.backend, false, Duration::from_secs(5))
                .await
                .unwrap();
        let err = repo
            .rewrap_locked(&[&new, &other], &other, Duration::from_secs(1), |_, _| {})
            .await;
        lock.release().await.unwrap();
        match err {
            Err(EngineError::Locked { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(open_local(dir.path(), &new).await.is_ok());
    }

    /// Two writers create the repository at once: the loser's key record is still listed
    /// when the winner opens it (the loser deletes it a moment later). Whatever order the
    /// records list in, a backup takes the config's key, never the loser's (in a fresh-clone
    /// CI on 4c5991e a backup took it and its snapshot named a data key that was gone).
    #[tokio::test]
    async fn the_losers_key_record_is_never_the_data_key() {
        let dir = tempfile::tempdir().unwrap();
        let km = LocalKeyManager::create(&dir.path().join("k.json")).unwrap();
        let repo = open_local(dir.path(), &km).await.unwrap();
        let winner = repo.config.key.clone();
        let first = *repo.keys.values().next().unwrap().id_key();
        let first = &first;
        // A loser's record that lists before the winner's, and one that lists after.
        for lists_first in [true, false] {
            let loser = loop {
                let k = DataKey::generate(Some(first)).unwrap();
                if (hex::encode(k.id) < winner) == lists_first {
                    break k;
                }
            };
            let record = Repository::wrap_record(&km, &loser, None).await.unwrap();
            std::fs::write(
                dir.path().join(format!("repo/keys/{}", record.data_key_id)),
                serde_json::to_vec_pretty(&record).unwrap(),
            )
            .unwrap();
            let mut reopened = open_local(dir.path(), &km).await.unwrap();
            let (key, _) = reopened.active_data_key(&km).await.unwrap();
            assert_eq!(hex::encode(key.id), winner);
            std::fs::remove_file(dir.path().join(format!("repo/keys/{}", record.data_key_id)))
                .unwrap();
        }
    }

    /// Two writers create one repository at once (two snapshot pods of a job, its first run),
    /// their store requests interleaved in a seeded order at every request: on a store with
    /// conditional puts and on one without. Whatever the order, both open the repository and
    /// take a data key whose record is there at the end (never the loser's, which it deletes),
    /// and "damaged" is never said. With conditional puts both take the config's key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_creators_in_any_interleaving_end_with_one_usable_key() {
        use crate::engine::backend::paused::{NoConditionalPut, Paused, Turn};
        use object_store::ObjectStore;
        use tokio::sync::mpsc;

        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("k.json");
        LocalKeyManager::create(&key_file).unwrap();
        for conditional in [true, false] {
            for seed in 1..=200u64 {
                let shared: Arc<dyn ObjectStore> = if conditional {
                    Arc::new(object_store::memory::InMemory::new())
                } else {
                    Arc::new(NoConditionalPut::default())
                };
                let (turns, mut asked) = mpsc::unbounded_channel::<Turn>();
                let writer = |w: usize| {
                    let backend = Backend::over_store(Arc::new(Paused {
                        inner: shared.clone(),
                        writer: w,
                        turns: turns.clone(),
                    }));
                    let (done, key_file) = (turns.clone(), key_file.clone());
                    tokio::spawn(async move {
                        let km = LocalKeyManager::load(&key_file).unwrap();
                        let run = async {
                            let (mut repo, _) =
                                Repository::open_or_init(backend, &km, DEFAULT_CHUNK_SIZE).await?;
                            let (key, _) = repo.active_data_key(&km).await?;
                            Ok::<_, EngineError>((repo.config.key.clone(), hex::encode(key.id)))
                        };
                        let r = run.await;
                        let (go, _) = tokio::sync::oneshot::channel();
                        let _ = done.send(Turn {
                            writer: w,
                            what: "done".into(),
                            go,
                        });
                        r
                    })
                };
                let (a, b) = (writer(0), writer(1));
                drop(turns);
                // The scheduler: once every writer still running waits, let one go, chosen
                // by the seed.
                let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let (mut waiting, mut live, mut order) = (Vec::<Turn>::new(), 2, Vec::new());
                while live > 0 {
                    if waiting.len() >= live {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let t = waiting.remove((rng % waiting.len() as u64) as usize);
                        order.push(format!("{} {}", t.writer, t.what));
                        let _ = t.go.send(());
                        continue;
                    }
                    match asked.recv().await {
                        Some(t) if t.what == "done" => live -= 1,
                        Some(t) => waiting.push(t),
                        None => break,
                    }
                }
                let results = [a.await.unwrap(), b.await.unwrap()];
                let store = Backend::over_store(shared.clone());
                let km = LocalKeyManager::load(&key_file).unwrap();
                let mut end = Repository::open(store, &km).await.unwrap_or_else(|e| {
                    panic!("seed {seed} conditional {conditional}: {e}\n{order:?}")
                });
                for r in &results {
                    let (config_key, data_key) = r.as_ref().unwrap_or_else(|e| {
                        panic!("seed {seed} conditional {conditional}: {e}\n{order:?}")
                    });
                    let id = parse_key_id(data_key).unwrap();
                    assert!(
                        end.key(&id).is_ok(),
                        "seed {seed} conditional {conditional}: data key {data_key} is gone\n{order:?}"
                    );
                    if conditional {
                        assert_eq!(config_key, &end.config.key, "seed {seed}\n{order:?}");
                        assert_eq!(data_key, config_key, "seed {seed}\n{order:?}");
                    }
                }
                assert!(end.active_data_key(&km).await.is_ok());
            }
        }
    }

    /// Item 9 of the data-safety issue: after a master key change, new data gets a new data
    /// key; the rewrapped one stays readable.
    #[tokio::test]
    async fn item09_a_new_master_key_gets_a_new_data_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalKeyManager::create(&dir.path().join("a.json")).unwrap();
        let b = LocalKeyManager::create(&dir.path().join("b.json")).unwrap();
        let mut repo = open_local(dir.path(), &a).await.unwrap();
        let (first, _) = repo.active_data_key(&a).await.unwrap();
        assert_eq!(repo.rewrap_all(&b, |_, _| {}).await.unwrap(), 1);
        let (second, master) = repo.active_data_key(&b).await.unwrap();
        assert_ne!(
            first.id, second.id,
            "new data still under the rewrapped data key"
        );
        assert_eq!(master, b.active_key_id().await.unwrap());
        // Same chunk ids (dedup across the change), both keys readable with b alone.
        assert_eq!(first.chunk_id(b"x"), second.chunk_id(b"x"));
        let again = open_local(dir.path(), &b).await.unwrap();
        assert!(again.key(&first.id).is_ok() && again.key(&second.id).is_ok());
    }

    /// Item 10 of the data-safety issue: a migration that stops half-way leaves a repository
    /// that opens with the old key and with the new, and running it again finishes it.
    #[tokio::test]
    async fn item10_a_half_finished_migration_opens_with_either_key_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let old = LocalKeyManager::create(&dir.path().join("old.json")).unwrap();
        let mid = LocalKeyManager::create(&dir.path().join("mid.json")).unwrap();
        let mut repo = open_local(dir.path(), &old).await.unwrap();
        // Two data keys: the first, and the one made for the next master key.
        repo.rewrap_all(&mid, |_, _| {}).await.unwrap();
        repo.active_data_key(&mid).await.unwrap();
        assert_eq!(repo.key_records().len(), 2);
        let new = FailsAfter {
            inner: LocalKeyManager::create(&dir.path().join("new.json")).unwrap(),
            left: 1.into(),
        };
        let err = repo.rewrap_all(&new, |_, _| {}).await.unwrap_err();
        assert!(err.to_string().contains("unreachable"), "{err}");
        // Half-way: one record under the new key. Both key managers open every record.
        let under = |r: &Repository, km: &str| {
            r.key_records()
                .iter()
                .filter(|k| k.wrapped.master_key_id == km)
                .count()
        };
        let new_id = new.active_key_id().await.unwrap();
        let with_mid = open_local(dir.path(), &mid).await.unwrap();
        assert_eq!(under(&with_mid, &new_id), 1);
        let with_new_only = Repository::open(
            Backend::open(
                &Location::Local(dir.path().join("repo")),
                &StoreOptions::default(),
                false,
            )
            .unwrap(),
            &new,
        )
        .await;
        assert!(
            with_new_only.is_err(),
            "the unmigrated record cannot open with the new key yet"
        );
        // Resume with both, as `key migrate` does: finished, and then the new key alone opens it.
        let backend = Backend::open(
            &Location::Local(dir.path().join("repo")),
            &StoreOptions::default(),
            false,
        )
        .unwrap();
        let mut resumed = Repository::open_any(backend, &[&mid, &new]).await.unwrap();
        new.left.store(10, std::sync::atomic::Ordering::SeqCst);
        resumed.rewrap_all(&new, |_, _| {}).await.unwrap();
        assert!(resumed.key_records().iter().all(|r| r.previous.is_none()));
        let backend = Backend::open(
            &Location::Local(dir.path().join("repo")),
            &StoreOptions::default(),
            false,
        )
        .unwrap();
        let done = Repository::open(backend, &new).await.unwrap();
        assert_eq!(under(&done, &new_id), 2);
    }

    /// Creators racing on a new repository all end up with the one that won, including the
    /// winner, which may list the loser's key record just before the loser deletes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_creators_all_open_the_same_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let km = LocalKeyManager::create(&dir.path().join("key.json")).expect("key");
        for round in 0..30 {
            let loc = Location::Local(dir.path().join(format!("repo-{round}")));
            let opens = (0..4).map(|_| async {
                let backend = Backend::open(&loc, &StoreOptions::default(), true)?;
                Repository::open_or_init(backend, &km, DEFAULT_CHUNK_SIZE).await
            });
            let results = futures::future::join_all(opens).await;
            let mut ids = BTreeSet::new();
            let mut created = 0;
            for r in results {
                let (repo, new) = r.unwrap_or_else(|e| panic!("round {round}: {e}"));
                ids.insert(repo.config.id.clone());
                created += usize::from(new);
            }
            assert_eq!((ids.len(), created), (1, 1), "round {round}");
        }
    }

    /// A config naming a chunk size this build cannot cut (0 would panic a backup) is refused
    /// with the reason, before any key is unwrapped.
    #[tokio::test]
    async fn a_config_with_an_impossible_chunker_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let km = LocalKeyManager::create(&dir.path().join("k.json")).unwrap();
        let repo = open_local(dir.path(), &km).await.unwrap();
        for (kind, size) in [
            ("fixed", 0),
            ("fixed", 12288),
            ("fixed", 1 << 21),
            ("cdc", 16384),
        ] {
            let mut config = repo.config.clone();
            config.chunker = ChunkerParams {
                kind: kind.into(),
                size,
            };
            repo.backend
                .put("config", serde_json::to_vec(&config).unwrap())
                .await
                .unwrap();
            let err = open_local(dir.path(), &km).await.err().expect("refused");
            assert!(
                err.to_string()
                    .contains(&format!("chunker {kind:?} of {size} bytes")),
                "{err}"
            );
        }
    }
}
