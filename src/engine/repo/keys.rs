//! Data keys: wrapped under master keys in `keys/` records, unwrapped when the repository
//! opens, a new one per master key, and rewrapped (never rewritten) on rotation or migration.

use std::sync::Arc;

use super::Repository;
use super::{now_rfc3339, parse_key_id};
use crate::engine::backend::{BackendError, SMALL_OBJECT_MAX};
use crate::engine::crypto::DataKey;
use crate::engine::error::EngineError;
use crate::engine::format::{KeyRecord, OBJECT_HEADER_LEN};
use crate::kms::{KeyManager, KmsError};

impl Repository {
    pub(super) async fn wrap_record(
        km: &dyn KeyManager,
        key: &DataKey,
        created: Option<String>,
    ) -> Result<KeyRecord, EngineError> {
        let wrapped = km.wrap(&key.material()).await?;
        Ok(KeyRecord {
            data_key_id: hex::encode(key.id),
            created: created.unwrap_or_else(now_rfc3339),
            wrapped_at: now_rfc3339(),
            wrapped,
            history: Vec::new(),
            previous: None,
        })
    }

    /// `record`'s data key `key` wrapped under `km`'s active master key for another repository
    /// (a copy): the same data key and creation time, no history of this repository's wraps.
    pub(crate) async fn rewrapped_record(
        km: &dyn KeyManager,
        key: &DataKey,
        record: &KeyRecord,
    ) -> Result<KeyRecord, EngineError> {
        Self::wrap_record(km, key, Some(record.created.clone())).await
    }

    /// Unwrap a record's data key with the first of `kms` that can: its current wrap, then the
    /// wrap it had before an unfinished rewrap.
    pub(super) async fn unwrap_record(
        record: &KeyRecord,
        kms: &[&dyn KeyManager],
    ) -> Result<crate::kms::SecretBytes, KmsError> {
        let mut first_err = None;
        for wrapped in std::iter::once(&record.wrapped).chain(record.previous.as_ref()) {
            for km in kms.iter().filter(|km| km.kind() == wrapped.kms) {
                match km.unwrap(wrapped).await {
                    Ok(m) => return Ok(m),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| KmsError::UnknownKey {
            key_id: record.wrapped.master_key_id.clone(),
            kms: kms.iter().map(|k| k.kind()).collect::<Vec<_>>().join(", "),
            wrapped_by: record.wrapped.kms.clone(),
        }))
    }

    pub(super) async fn load_keys(&mut self, kms: &[&dyn KeyManager]) -> Result<(), EngineError> {
        self.keys.clear();
        self.records.clear();
        for (name, _) in self.backend.list("keys").await? {
            let bytes = match self.backend.get_limited(&name, SMALL_OBJECT_MAX).await {
                Ok(b) => b,
                // Listed, then gone: the record of a writer that lost the race to create the
                // repository (open_or_init deletes its own). No object was ever sealed under it;
                // a key that is needed and missing is reported where it is needed.
                Err(BackendError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let record: KeyRecord =
                serde_json::from_slice(&bytes).map_err(|e| EngineError::Corrupt {
                    object: name.clone(),
                    reason: e.to_string(),
                })?;
            let id = parse_key_id(&record.data_key_id).ok_or_else(|| EngineError::Corrupt {
                object: name.clone(),
                reason: "bad data key id".into(),
            })?;
            let material = Self::unwrap_record(&record, kms).await.map_err(|source| {
                EngineError::KeyRecord {
                    object: name.clone(),
                    source,
                }
            })?;
            let key = DataKey::from_material(id, &material)?;
            self.keys.insert(id, Arc::new(key));
            self.records.push(record);
        }
        if self.keys.is_empty() {
            // Name the missing record from the (plaintext) header of an object that needs it.
            for dir in ["snapshots", "index"] {
                if let Some((name, _)) = self.backend.list(dir).await?.into_iter().next() {
                    // Only its header: a short or unreadable object names nothing.
                    let Ok(bytes) = self
                        .backend
                        .get_range(&name, 0, OBJECT_HEADER_LEN as u64)
                        .await
                    else {
                        continue;
                    };
                    if bytes.len() >= OBJECT_HEADER_LEN {
                        return Err(EngineError::Corrupt {
                            object: format!("keys/{}", hex::encode(&bytes[6..22])),
                            reason: format!("missing, and {name} needs it"),
                        });
                    }
                }
            }
            return Err(EngineError::Corrupt {
                object: "keys/".into(),
                reason: "no data key records".into(),
            });
        }
        Ok(())
    }

    /// List and open the data key records again (under a lock taken since the repository was
    /// opened, a rotation or migration may have rewrapped them).
    pub async fn reload_keys(&mut self, kms: &[&dyn KeyManager]) -> Result<(), EngineError> {
        self.load_keys(kms).await
    }

    /// The data key records (wrapped), for `key status`.
    pub fn key_records(&self) -> &[KeyRecord] {
        &self.records
    }

    /// The data key new data is encrypted with: one created under the key manager's active
    /// master key. A data key that was rewrapped (a rotation, a migration) is never used for
    /// new data: each master key gets its own data key, so data written after a rotation is
    /// not under a key that was ever wrapped by a retired master key. If there is none, a new
    /// data key sharing the chunk-id key is created. Fails, writing nothing, if the master
    /// key cannot be used (for KMIP: it is not Active).
    pub async fn active_data_key(
        &mut self,
        km: &dyn KeyManager,
    ) -> Result<(Arc<DataKey>, String), EngineError> {
        let master = km.active_key_id().await?;
        let usable = |r: &&KeyRecord| {
            r.wrapped.master_key_id == master
                && r.wrapped.kms == km.kind()
                && r.history.is_empty()
                && r.previous.is_none()
        };
        // The config's own key first: two writers that created the repository at once each
        // wrote a record, and the loser deletes its own once it sees the winner's config; a
        // backup that took the loser's record (listed before it went) would write data under a
        // key that is gone.
        let config_key = self.config.key.clone();
        let preferred = self
            .records
            .iter()
            .filter(usable)
            .find(|r| r.data_key_id == config_key)
            .or_else(|| self.records.iter().find(usable));
        if let Some(r) = preferred {
            let id = parse_key_id(&r.data_key_id).unwrap_or_default();
            if let Some(k) = self.keys.get(&id) {
                return Ok((k.clone(), master));
            }
        }
        // The repository's chunk-id key (the config's data key's), so chunk ids stay
        // comparable across data keys.
        let hasher = self.chunk_hasher()?;
        let key = DataKey::generate(Some(hasher.id_key()))?;
        let record = Self::wrap_record(km, &key, None).await?;
        self.backend
            .put(
                &format!("keys/{}", record.data_key_id),
                serde_json::to_vec_pretty(&record)?,
            )
            .await?;
        let key = Arc::new(key);
        self.keys.insert(key.id, key.clone());
        self.records.push(record);
        Ok((key, master))
    }

    /// Rewrap every data key record under `to`'s active master key. Metadata only: no data
    /// object is rewritten. Returns how many records were rewrapped.
    ///
    /// Resumable, and the repository opens with the old or the new master key at every step:
    /// first each record gets its new wrap while keeping its old one (`previous`), then, once
    /// every record has its new wrap, the old wraps are removed. A run that stops in between
    /// (a KMS outage, a killed pod) is finished by running it again.
    pub async fn rewrap_all(
        &mut self,
        to: &dyn KeyManager,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<usize, EngineError> {
        let active = to.active_key_id().await?;
        let total = self.records.len();
        let mut rewrapped = 0;
        for i in 0..total {
            let record = self.records[i].clone();
            let done = record.wrapped.kms == to.kind() && record.wrapped.master_key_id == active;
            if !done {
                let id = parse_key_id(&record.data_key_id).unwrap_or_default();
                let key = self.key(&id)?;
                let material = key.material();
                let mut new = Self::wrap_record(to, &key, Some(record.created.clone())).await?;
                // Check the new wrap before it goes into the record.
                let check = to.unwrap(&new.wrapped).await?;
                if check[..] != material[..] {
                    return Err(EngineError::Corrupt {
                        object: format!("keys/{}", record.data_key_id),
                        reason: "rewrap check failed".into(),
                    });
                }
                new.history = record.history.clone();
                new.history.push(crate::engine::format::PastWrap {
                    kms: record.wrapped.kms.clone(),
                    master_key_id: record.wrapped.master_key_id.clone(),
                    until: now_rfc3339(),
                });
                // The old wrap stays until every record has its new one.
                new.previous = Some(record.previous.clone().unwrap_or(record.wrapped.clone()));
                self.put_key_record(&new).await?;
                self.records[i] = new;
                rewrapped += 1;
            }
            progress(i + 1, total);
        }
        // Every record opens with the new master key: drop the old wraps.
        for i in 0..total {
            if self.records[i].previous.is_some() {
                let mut done = self.records[i].clone();
                done.previous = None;
                self.put_key_record(&done).await?;
                self.records[i] = done;
            }
        }
        Ok(rewrapped)
    }

    /// [`Self::rewrap_all`] as `key rotate`, `key migrate` and a backup's `--rewrap` run it:
    /// under the repository's exclusive lock (no backup creates a data key meanwhile: a backup
    /// takes its data key under its shared lock), with the key records listed again once the
    /// lock is held and again before it is released, until every record is wrapped by `to`'s
    /// active master key. So a record made by a writer that raced the rewrap (an older
    /// client, a backup that made its key just before the lock) is never left openable only
    /// with the old key. `open_with` opens the records (the old and the new key managers).
    /// `wait`: how long to wait for the lock (running backups).
    pub async fn rewrap_locked(
        &mut self,
        open_with: &[&dyn KeyManager],
        to: &dyn KeyManager,
        wait: std::time::Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<usize, EngineError> {
        let lock = crate::engine::lock::RepoLock::acquire(&self.backend, true, wait).await?;
        let result = async {
            let active = to.active_key_id().await?;
            let mut rewrapped = 0;
            // A writer that ignores locks could keep adding records: a few passes, then say so.
            for _ in 0..REWRAP_PASSES {
                self.load_keys(open_with).await?;
                let stale = self.records.iter().any(|r| {
                    r.previous.is_some() || r.wrapped.kms != to.kind() || r.wrapped.master_key_id != active
                });
                if !stale {
                    lock.check()?;
                    return Ok(rewrapped);
                }
                rewrapped += self.rewrap_all(to, &mut progress).await?;
            }
            Err(EngineError::Corrupt {
                object: "keys/".into(),
                reason: format!(
                    "data key records kept appearing under another master key while they were rewrapped ({REWRAP_PASSES} passes): a client that takes no lock writes to this repository; stop it and run the rewrap again"
                ),
            })
        }
        .await;
        lock.release().await?;
        result
    }

    async fn put_key_record(&self, record: &KeyRecord) -> Result<(), EngineError> {
        self.backend
            .put(
                &format!("keys/{}", record.data_key_id),
                serde_json::to_vec_pretty(record)?,
            )
            .await?;
        Ok(())
    }

    /// Rewrap the data keys wrapped under an older master key of `km` (a rotated-out KMIP
    /// key) under its active one, and finish a rewrap that stopped half-way: what a rotation
    /// with `rewrapExisting` asks of each repository. Returns how many were rewrapped.
    pub async fn rewrap_stale(&mut self, km: &dyn KeyManager) -> Result<usize, EngineError> {
        let active = km.active_key_id().await?;
        if self.records.iter().all(|r| {
            r.previous.is_none()
                && (r.wrapped.kms != km.kind() || r.wrapped.master_key_id == active)
        }) {
            return Ok(0);
        }
        self.rewrap_locked(&[km], km, rewrap_wait(), |_, _| {})
            .await
    }

    /// The data key with this id.
    pub fn key(&self, id: &[u8; 16]) -> Result<Arc<DataKey>, EngineError> {
        self.keys
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::Corrupt {
                object: format!("keys/{}", hex::encode(id)),
                reason: "data key named by an object is missing".into(),
            })
    }
}

/// How long a rewrap waits for running backups to release the repository (the lock's
/// `SNAPCRYPT_LOCK_WAIT_SECS`, else 10 minutes).
pub fn rewrap_wait() -> std::time::Duration {
    crate::engine::lock::lock_wait(std::time::Duration::from_secs(600))
}

/// How many times [`Repository::rewrap_locked`] lists the key records again.
const REWRAP_PASSES: usize = 5;
