//! An open repository: its config, its unwrapped data keys, and reading and writing sealed
//! objects (indexes, snapshots) and blobs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::EngineError;
use super::backend::{Backend, BackendError};
use super::crypto::{ChunkId, DataKey, ID_LEN, random_id};
use super::format::{
    BlobEntry, ChunkerParams, Config, FORMAT_VERSION, KeyRecord, OBJECT_HEADER_LEN, OBJECT_MAGIC,
    ObjectKind, SnapshotManifest, TreeEntry, pack_object_name,
};
use super::pack::{StagedPack, blob_aad, parse_pack_header};
use crate::kms::{KeyManager, KmsError};

thread_local! {
    /// One zstd decompression context per thread: creating one per blob costs more than the
    /// decompression itself.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Decompress `data` into `out` (whose capacity bounds the output).
fn decompress_into(data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress_to_buffer(data, out).map(|_| ()),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}

/// Default chunk size: see docs/REPOSITORY.md for the measurements behind it.
pub const DEFAULT_CHUNK_SIZE: u32 = 16 * 1024;
/// Default pack size.
pub const DEFAULT_PACK_SIZE: u64 = 32 * 1024 * 1024;

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
    pub blobs: HashMap<ChunkId, BlobLoc>,
}

impl Index {
    fn add(&mut self, pack: PackInfo, entries: Vec<BlobEntry>) {
        let n = self.packs.len() as u32;
        self.packs.push(pack);
        for entry in entries {
            self.blobs
                .entry(entry.id)
                .or_insert(BlobLoc { pack: n, entry });
        }
    }
}

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

fn parse_key_id(hex_id: &str) -> Option<[u8; 16]> {
    let v = hex::decode(hex_id).ok()?;
    v.try_into().ok()
}

impl Repository {
    /// Open an existing repository, unwrapping its data keys with `km`.
    pub async fn open(backend: Backend, km: &dyn KeyManager) -> Result<Self, EngineError> {
        Self::open_any(backend, &[km]).await
    }

    /// Open an existing repository, unwrapping each data key with whichever of `kms` can
    /// (a key migration that stopped half-way is resumed with both the old and the new).
    pub async fn open_any(backend: Backend, kms: &[&dyn KeyManager]) -> Result<Self, EngineError> {
        let config = match backend.get("config").await {
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
        let mut repo = Repository {
            backend,
            config,
            keys: HashMap::new(),
            records: Vec::new(),
        };
        repo.load_keys(kms).await?;
        // The config names the data key it was created with; its chunk-id key is the
        // repository's. A record with another chunk-id key is a stray left by a writer that
        // lost the race to create the repository: it is ignored.
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
        repo.keys.retain(|_, k| k.id_key() == &id_key);
        let kept: Vec<String> = repo.keys.keys().map(hex::encode).collect();
        repo.records.retain(|r| kept.contains(&r.data_key_id));
        Ok(repo)
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
            // Another writer created the repository at the same moment: use theirs.
            backend.delete(&name).await?;
            return Ok((Self::open(backend, km).await?, false));
        }
        Ok((Self::open(backend, km).await?, true))
    }

    async fn wrap_record(
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

    /// Unwrap a record's data key with the first of `kms` that can: its current wrap, then the
    /// wrap it had before an unfinished rewrap.
    async fn unwrap_record(
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

    async fn load_keys(&mut self, kms: &[&dyn KeyManager]) -> Result<(), EngineError> {
        self.keys.clear();
        self.records.clear();
        for (name, _) in self.backend.list("keys").await? {
            let bytes = match self.backend.get(&name).await {
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
                    let bytes = self.backend.get(&name).await?;
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
        if let Some(r) = self.records.iter().find(|r| {
            r.wrapped.master_key_id == master
                && r.wrapped.kms == km.kind()
                && r.history.is_empty()
                && r.previous.is_none()
        }) {
            let id = parse_key_id(&r.data_key_id).unwrap_or_default();
            if let Some(k) = self.keys.get(&id) {
                return Ok((k.clone(), master));
            }
        }
        let any = self
            .keys
            .values()
            .next()
            .cloned()
            .ok_or_else(|| EngineError::Corrupt {
                object: "keys/".into(),
                reason: "no data key".into(),
            })?;
        let key = DataKey::generate(Some(any.id_key()))?;
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
                new.history.push(super::format::PastWrap {
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
        self.rewrap_all(km, |_, _| {}).await
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

    fn object_aad(header: &[u8], name: &str) -> Vec<u8> {
        [header, name.as_bytes()].concat()
    }

    /// Seal `plaintext` under `key` as object `name` of `kind`, and store it.
    pub async fn put_sealed(
        &self,
        key: &DataKey,
        kind: ObjectKind,
        name: &str,
        plaintext: Vec<u8>,
    ) -> Result<(), EngineError> {
        let salt = random_id()?;
        let mut header = Vec::with_capacity(OBJECT_HEADER_LEN);
        header.extend_from_slice(OBJECT_MAGIC);
        header.push(1);
        header.push(kind as u8);
        header.extend_from_slice(&key.id);
        header.extend_from_slice(&salt);
        let mut body = plaintext;
        key.object_cipher(&salt)?
            .seal(0, &Self::object_aad(&header, name), &mut body)?;
        header.extend_from_slice(&body);
        self.backend.put(name, header).await?;
        Ok(())
    }

    /// Read and open sealed object `name` of `kind`.
    pub async fn get_sealed(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, EngineError> {
        let bytes = self.backend.get(name).await?;
        self.open_sealed(kind, name, &bytes)
    }

    /// Open the bytes of sealed object `name`.
    pub fn open_sealed(
        &self,
        kind: ObjectKind,
        name: &str,
        bytes: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        let corrupt = |reason: &str| EngineError::Corrupt {
            object: name.into(),
            reason: reason.into(),
        };
        if bytes.len() < OBJECT_HEADER_LEN + 16 || &bytes[..4] != OBJECT_MAGIC || bytes[4] != 1 {
            return Err(corrupt("not a snapcrypt object (bad header or truncated)"));
        }
        if bytes[5] != kind as u8 {
            return Err(corrupt("object of the wrong kind"));
        }
        let (header, body) = bytes.split_at(OBJECT_HEADER_LEN);
        let mut dk = [0u8; 16];
        dk.copy_from_slice(&header[6..22]);
        let mut salt = [0u8; ID_LEN];
        salt.copy_from_slice(&header[22..54]);
        let key = self.key(&dk)?;
        let mut body = body.to_vec();
        let n = key
            .object_cipher(&salt)?
            .open(0, &Self::object_aad(header, name), &mut body)
            .map_err(|_| corrupt("authentication failed: tampered, truncated or renamed"))?;
        body.truncate(n);
        Ok(body)
    }

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

    /// Load every index object. Where a blob is in several packs, a pack not marked for
    /// deletion is preferred, so readers move off packs prune has marked.
    pub async fn load_index(&self) -> Result<Index, EngineError> {
        let marked = self.garbage_marks().await?;
        let present = self.present_packs().await?;
        self.load_index_where(
            |id| present.contains(id) && !marked.contains_key(id),
            |_| true,
        )
        .await
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

    /// The index a writer may deduplicate against: only packs that exist now (one listing of
    /// `data/`) and that prune has not marked for deletion. An index entry whose pack is gone
    /// or going is never trusted with new data.
    pub async fn load_index_for_writing(&self) -> Result<Index, EngineError> {
        let marked = self.garbage_marks().await?;
        let present = self.present_packs().await?;
        self.load_index_where(
            |_| true,
            |id| present.contains(id) && !marked.contains_key(id),
        )
        .await
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

    /// Load the index objects of packs `keep` accepts; those `first` accepts take precedence.
    async fn load_index_where(
        &self,
        first: impl Fn(&str) -> bool,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Index, EngineError> {
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
        let mut index = Index::default();
        let fetched = futures::future::try_join_all(names.iter().map(|(name, _)| async move {
            let plain = self.get_sealed(ObjectKind::Index, name).await?;
            Ok::<_, EngineError>(plain)
        }))
        .await?;
        for ((name, id), plain) in names.into_iter().zip(fetched) {
            let corrupt = |reason: &str| EngineError::Corrupt {
                object: name.clone(),
                reason: reason.into(),
            };
            let (data_key_id, salt) =
                parse_pack_header(&plain).ok_or_else(|| corrupt("bad pack header in index"))?;
            let entries = BlobEntry::decode_all(&plain[super::format::PACK_HEADER_LEN..])
                .ok_or_else(|| corrupt("bad entries"))?;
            index.add(
                PackInfo {
                    id,
                    data_key_id,
                    salt,
                },
                entries,
            );
        }
        Ok(index)
    }

    /// Open one sealed blob read from its pack and check it is what its id says.
    pub fn open_blob(
        &self,
        index: &Index,
        loc: &BlobLoc,
        sealed: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        let mut buf = sealed.to_vec();
        let mut scratch = Vec::new();
        Ok(self
            .open_blob_in_place(index, loc, &mut buf, &mut scratch)?
            .to_vec())
    }

    /// Open a sealed blob in place (decrypting `sealed`), decompressing into `scratch` where
    /// needed, and check its content against its id; returns the plaintext. Restore's hot
    /// path: no allocation per blob.
    pub fn open_blob_in_place<'a>(
        &self,
        index: &Index,
        loc: &BlobLoc,
        sealed: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], EngineError> {
        let pack = &index.packs[loc.pack as usize];
        let corrupt = |reason: String| EngineError::Corrupt {
            object: pack_object_name(&pack.id),
            reason,
        };
        let key = self.key(&pack.data_key_id)?;
        let n = key
            .object_cipher(&pack.salt)?
            .open(
                u64::from(loc.entry.offset),
                &blob_aad(loc.entry.kind, &loc.entry.id),
                sealed,
            )
            .map_err(|_| {
                corrupt(format!(
                    "blob {} at offset {}: authentication failed",
                    hex::encode(loc.entry.id),
                    loc.entry.offset
                ))
            })?;
        let plain: &[u8] = if loc.entry.compressed() {
            scratch.clear();
            scratch.reserve(loc.entry.raw_len as usize);
            decompress_into(&sealed[..n], scratch)
                .map_err(|e| corrupt(format!("blob {}: {e}", hex::encode(loc.entry.id))))?;
            scratch
        } else {
            &sealed[..n]
        };
        if plain.len() != loc.entry.raw_len as usize || key.chunk_id(plain) != loc.entry.id {
            return Err(corrupt(format!(
                "blob {}: content does not match its id",
                hex::encode(loc.entry.id)
            )));
        }
        Ok(plain)
    }

    /// Read one blob from the store.
    pub async fn read_blob(&self, index: &Index, id: &ChunkId) -> Result<Vec<u8>, EngineError> {
        let loc = index.blobs.get(id).ok_or_else(|| EngineError::Corrupt {
            object: format!("blob {}", hex::encode(id)),
            reason: "not in any index".into(),
        })?;
        let pack = &index.packs[loc.pack as usize];
        let sealed = self
            .backend
            .get_range(
                &pack_object_name(&pack.id),
                u64::from(loc.entry.offset),
                u64::from(loc.entry.stored_len),
            )
            .await?;
        self.open_blob(index, loc, &sealed)
    }

    /// Every snapshot manifest, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotManifest>, EngineError> {
        let names = self.backend.list("snapshots").await?;
        let mut out = futures::future::try_join_all(names.iter().map(|(name, _)| async move {
            let plain = self.get_sealed(ObjectKind::Snapshot, name).await?;
            serde_json::from_slice::<SnapshotManifest>(&plain).map_err(|e| EngineError::Corrupt {
                object: name.clone(),
                reason: e.to_string(),
            })
        }))
        .await?;
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Find a snapshot by id, unique id prefix, or `latest`.
    pub async fn find_snapshot(&self, which: &str) -> Result<SnapshotManifest, EngineError> {
        let all = self.snapshots().await?;
        let found: Vec<_> = if which == "latest" {
            all.last().cloned().into_iter().collect()
        } else {
            all.into_iter()
                .filter(|s| s.id.starts_with(which))
                .collect()
        };
        match found.len() {
            1 => Ok(found.into_iter().next().unwrap_or_else(|| unreachable!())),
            0 => Err(EngineError::NoSuchSnapshot {
                which: which.into(),
            }),
            n => Err(EngineError::AmbiguousSnapshot {
                which: which.into(),
                count: n,
            }),
        }
    }

    /// The file list of a snapshot.
    pub async fn load_tree(
        &self,
        index: &Index,
        snap: &SnapshotManifest,
    ) -> Result<Vec<TreeEntry>, EngineError> {
        let mut compressed = Vec::new();
        for id_hex in &snap.tree {
            let id: ChunkId = hex::decode(id_hex)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| EngineError::Corrupt {
                    object: format!("snapshots/{}", snap.id),
                    reason: "bad tree id".into(),
                })?;
            compressed.extend_from_slice(&self.read_blob(index, &id).await?);
        }
        let json = zstd::stream::decode_all(&compressed[..]).map_err(|e| EngineError::Corrupt {
            object: format!("tree of snapshot {}", snap.id),
            reason: e.to_string(),
        })?;
        serde_json::from_slice(&json).map_err(|e| EngineError::Corrupt {
            object: format!("tree of snapshot {}", snap.id),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use crate::engine::backend::{Location, S3Options};
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
            &S3Options::default(),
            true,
        )?;
        Ok(Repository::open_or_init(backend, km, DEFAULT_CHUNK_SIZE)
            .await?
            .0)
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
                &S3Options::default(),
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
            &S3Options::default(),
            false,
        )
        .unwrap();
        let mut resumed = Repository::open_any(backend, &[&mid, &new]).await.unwrap();
        new.left.store(10, std::sync::atomic::Ordering::SeqCst);
        resumed.rewrap_all(&new, |_, _| {}).await.unwrap();
        assert!(resumed.key_records().iter().all(|r| r.previous.is_none()));
        let backend = Backend::open(
            &Location::Local(dir.path().join("repo")),
            &S3Options::default(),
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
                let backend = Backend::open(&loc, &S3Options::default(), true)?;
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
}
