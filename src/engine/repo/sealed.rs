//! Sealed objects (config aside: index, snapshots) and blobs: sealing, opening and checking
//! each against what its name or id says.

use std::sync::Arc;

use super::Repository;
use super::index::{BlobLoc, Index};
use crate::engine::crypto::{ChunkId, DataKey, ObjectCipher, random_id};
use crate::engine::error::EngineError;
use crate::engine::format::{
    BlobEntry, OBJECT_HEADER_LEN, OBJECT_MAGIC, ObjectKind, pack_object_name, parse_object_envelope,
};
use crate::engine::pack::blob_aad;

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

impl Repository {
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
        let env = parse_object_envelope(bytes, kind).map_err(corrupt)?;
        let key = self.key(&env.data_key_id)?;
        let mut body = env.body.to_vec();
        let n = key
            .object_cipher(&env.salt)?
            .open(0, &Self::object_aad(env.header, name), &mut body)
            .map_err(|_| corrupt("authentication failed: tampered, truncated or renamed"))?;
        body.truncate(n);
        Ok(body)
    }

    /// An opener for the blobs of pack `pack` (its index number in `index`).
    pub fn pack_blobs<'i>(
        &self,
        index: &'i Index,
        pack: u32,
    ) -> Result<PackBlobs<'i>, EngineError> {
        let info = &index.packs[pack as usize];
        let key = self.key(&info.data_key_id)?;
        let cipher = key.object_cipher(&info.salt)?;
        Ok(PackBlobs {
            pack_id: &info.id,
            key,
            cipher,
        })
    }

    /// Read one blob from the store.
    pub async fn read_blob(&self, index: &Index, id: &ChunkId) -> Result<Vec<u8>, EngineError> {
        let loc = index.blobs.get(id).ok_or_else(|| EngineError::Corrupt {
            object: format!("blob {}", hex::encode(id)),
            reason: "not in any index".into(),
        })?;
        self.read_blob_at(index, loc).await
    }

    /// Read and open the blob at `loc`, a pack of `index`.
    pub async fn read_blob_at(&self, index: &Index, loc: &BlobLoc) -> Result<Vec<u8>, EngineError> {
        let pack = index
            .packs
            .get(loc.pack as usize)
            .ok_or_else(|| EngineError::Corrupt {
                object: format!("blob {}", hex::encode(loc.entry.id)),
                reason: format!("pack number {} is not in the index", loc.pack),
            })?;
        let sealed = self
            .backend
            .get_range(
                &pack_object_name(&pack.id),
                u64::from(loc.entry.offset),
                u64::from(loc.entry.stored_len),
            )
            .await?;
        let (mut buf, mut scratch) = (sealed.to_vec(), Vec::new());
        Ok(self
            .pack_blobs(index, loc.pack)?
            .open_in_place(&loc.entry, &mut buf, &mut scratch)?
            .to_vec())
    }
}

/// Opens the blobs of one pack: its data key looked up and its subkey derived once, not per
/// blob (restore's hot path: no allocation or key schedule per blob).
pub struct PackBlobs<'i> {
    pack_id: &'i str,
    key: Arc<DataKey>,
    cipher: ObjectCipher,
}

impl PackBlobs<'_> {
    /// Open blob `entry` in place (decrypting `sealed`), decompressing into `scratch` where
    /// needed, and check its content against its id; returns the plaintext.
    pub fn open_in_place<'a>(
        &self,
        entry: &BlobEntry,
        sealed: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], EngineError> {
        let corrupt = |reason: String| EngineError::Corrupt {
            object: pack_object_name(self.pack_id),
            reason,
        };
        let n = self
            .cipher
            .open(
                u64::from(entry.offset),
                &blob_aad(entry.kind, &entry.id),
                sealed,
            )
            .map_err(|_| {
                corrupt(format!(
                    "blob {} at offset {}: authentication failed",
                    hex::encode(entry.id),
                    entry.offset
                ))
            })?;
        let plain: &[u8] = if entry.compressed() {
            scratch.clear();
            scratch.reserve(entry.raw_len as usize);
            decompress_into(&sealed[..n], scratch)
                .map_err(|e| corrupt(format!("blob {}: {e}", hex::encode(entry.id))))?;
            scratch
        } else {
            &sealed[..n]
        };
        if plain.len() != entry.raw_len as usize || self.key.chunk_id(plain) != entry.id {
            return Err(corrupt(format!(
                "blob {}: content does not match its id",
                hex::encode(entry.id)
            )));
        }
        Ok(plain)
    }
}
