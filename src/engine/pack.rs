//! Pack files: many sealed blobs in one object, so object stores are not flooded with tiny
//! objects. A pack is staged in a local file, named by the BLAKE3 hash of its bytes.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::crypto::{ChunkId, CryptoError, DataKey, ObjectCipher, TAG_LEN, random_id};
use super::format::{
    BlobEntry, BlobKind, INDEX_ENTRY_LEN, PACK_HEADER_LEN, PACK_MAGIC, TRAILER_COUNTER,
};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("staging pack {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("pack is over 4 GiB")]
    TooLarge,
}

/// Associated data of a blob: its type and chunk id, so a blob cannot be passed off as another.
pub fn blob_aad(kind: BlobKind, id: &ChunkId) -> [u8; 37] {
    let mut aad = [0u8; 37];
    aad[..4].copy_from_slice(b"blob");
    aad[4] = kind as u8;
    aad[5..].copy_from_slice(id);
    aad
}

/// Associated data of a pack's trailer.
pub const TRAILER_AAD: &[u8] = b"snapcrypt pack trailer v1";

/// The bytes a pack's trailer adds to its entry list: the AEAD tag sealing the list, then the
/// little-endian u32 length of the sealed list, which ends the pack.
pub const TRAILER_OVERHEAD: usize = TAG_LEN + 4;

/// The most a pack's sealed entry list may hold (46 bytes a blob: far past any pack's blob
/// count): checked before it is read, so a hostile length field never sizes a buffer.
pub const TRAILER_MAX: u64 = 64 * 1024 * 1024;

/// The exact size of a pack holding `entries`: the header, the sealed blobs, the sealed entry
/// list and its length.
pub fn pack_size<'a>(entries: impl IntoIterator<Item = &'a BlobEntry>) -> u64 {
    let (mut count, mut blobs) = (0u64, 0u64);
    for e in entries {
        count += 1;
        blobs += u64::from(e.stored_len);
    }
    PACK_HEADER_LEN as u64 + blobs + count * INDEX_ENTRY_LEN as u64 + TRAILER_OVERHEAD as u64
}

/// Where a pack of `size` bytes whose last four bytes say `len` keeps its sealed entry list,
/// or why it cannot: the one framing rule every reader of a trailer follows.
pub fn trailer_range(size: u64, len: u32) -> Result<std::ops::Range<u64>, String> {
    let len = u64::from(len);
    if size < (PACK_HEADER_LEN + 4) as u64 {
        return Err(format!("{size} bytes: too short for a pack"));
    }
    if len > TRAILER_MAX || len + 4 + PACK_HEADER_LEN as u64 > size {
        return Err(format!(
            "trailer of {len} bytes does not fit a pack of {size}"
        ));
    }
    Ok(size - 4 - len..size - 4)
}

/// The 64-byte pack header: magic, version, reserved, data key id, salt.
pub fn pack_header(data_key_id: &[u8; 16], salt: &[u8; 32]) -> [u8; PACK_HEADER_LEN] {
    let mut h = [0u8; PACK_HEADER_LEN];
    h[..4].copy_from_slice(PACK_MAGIC);
    h[4] = 1;
    h[16..32].copy_from_slice(data_key_id);
    h[32..].copy_from_slice(salt);
    h
}

/// Split a pack header into (data key id, salt); None if it is not one.
pub fn parse_pack_header(h: &[u8]) -> Option<([u8; 16], [u8; 32])> {
    if h.len() < PACK_HEADER_LEN || &h[..4] != PACK_MAGIC || h[4] != 1 {
        return None;
    }
    let mut dk = [0u8; 16];
    dk.copy_from_slice(&h[16..32]);
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&h[32..64]);
    Some((dk, salt))
}

/// Bytes hashed and written at once.
const WRITE_BLOCK: usize = 1 << 20;

/// A pack being written.
pub struct PackWriter {
    out: File,
    /// Bytes not yet hashed and written: both done a megabyte at a time, since BLAKE3 hashes
    /// long inputs on all its SIMD lanes, and blob by blob (a few KiB each, unaligned to its
    /// 1 KiB chunks) it took as long as hashing the chunk ids.
    pending: Vec<u8>,
    path: PathBuf,
    header: [u8; PACK_HEADER_LEN],
    cipher: ObjectCipher,
    entries: Vec<BlobEntry>,
    offset: u64,
    hasher: blake3::Hasher,
}

/// A finished, staged pack: move it into the repository with `Backend::commit_staged`.
pub struct StagedPack {
    pub path: PathBuf,
    /// Hex BLAKE3 of the pack's bytes: its name.
    pub id: String,
    pub header: [u8; PACK_HEADER_LEN],
    pub entries: Vec<BlobEntry>,
    pub size: u64,
}

impl PackWriter {
    /// Start a pack in `staging`, encrypted under `key`.
    pub fn new(staging: &Path, key: &DataKey) -> Result<Self, PackError> {
        let salt = random_id()?;
        let path = staging.join(format!("pack-{}.tmp", hex::encode(&salt[..12])));
        let io = |source| PackError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::create(&path).map_err(io)?;
        let header = pack_header(&key.id, &salt);
        let mut w = PackWriter {
            out: file,
            pending: Vec::with_capacity(WRITE_BLOCK),
            cipher: key.object_cipher(&salt)?,
            header,
            path,
            entries: Vec::new(),
            offset: 0,
            hasher: blake3::Hasher::new(),
        };
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.pending.extend_from_slice(bytes);
        self.offset += bytes.len() as u64;
        if self.pending.len() >= WRITE_BLOCK {
            self.flush_pending()?;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<(), PackError> {
        self.hasher.update(&self.pending);
        self.out
            .write_all(&self.pending)
            .map_err(|source| PackError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        self.pending.clear();
        Ok(())
    }

    /// Seal `data` (already compressed if `compressed`) and append it as blob `id`.
    pub fn add(
        &mut self,
        id: ChunkId,
        kind: BlobKind,
        raw_len: u32,
        compressed: bool,
        mut data: Vec<u8>,
    ) -> Result<(), PackError> {
        let offset = u32::try_from(self.offset).map_err(|_| PackError::TooLarge)?;
        self.cipher
            .seal(u64::from(offset), &blob_aad(kind, &id), &mut data)?;
        let stored_len = u32::try_from(data.len()).map_err(|_| PackError::TooLarge)?;
        self.write(&data)?;
        self.entries.push(BlobEntry {
            id,
            offset,
            stored_len,
            raw_len,
            kind,
            flags: u8::from(compressed),
        });
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.offset
    }

    /// The blobs added so far.
    pub fn entries(&self) -> &[super::format::BlobEntry] {
        &self.entries
    }

    /// No blob added yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Write the trailer (the sealed entry list and its length) and close the file.
    pub fn finish(mut self) -> Result<StagedPack, PackError> {
        let mut trailer = Vec::with_capacity(self.entries.len() * INDEX_ENTRY_LEN + TAG_LEN);
        for e in &self.entries {
            e.encode(&mut trailer);
        }
        self.cipher
            .seal(TRAILER_COUNTER, TRAILER_AAD, &mut trailer)?;
        let len = u32::try_from(trailer.len()).map_err(|_| PackError::TooLarge)?;
        self.write(&trailer)?;
        self.write(&len.to_le_bytes())?;
        self.flush_pending()?;
        drop(self.out);
        Ok(StagedPack {
            path: self.path,
            id: self.hasher.finalize().to_hex().to_string(),
            header: self.header,
            entries: self.entries,
            size: self.offset,
        })
    }

    /// Abandon the pack and remove its staged file.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Run every parser of untrusted repository bytes over `data`: an index object's contents
/// (pack header, then blob entries, re-encoded to the same bytes), a trailer's entries, and a
/// sealed object's envelope of every kind, opened with a fixed key (authentication must fail,
/// never panic). The fuzz target (`fuzz/fuzz_targets/repository_objects.rs`) and the seeded
/// mutation test (format.rs) call this; it must return and never panic.
#[doc(hidden)]
pub fn fuzz_repository_bytes(data: &[u8]) {
    use super::format::{ObjectKind, parse_object_envelope};
    let _ = parse_pack_header(data);
    if let Some(tail) = data.len().checked_sub(4).and_then(|at| data.get(at..)) {
        let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if let Ok(r) = trailer_range(data.len() as u64, len) {
            assert!(r.start >= PACK_HEADER_LEN as u64 && r.end + 4 == data.len() as u64);
        }
    }
    for entries in [data, data.get(PACK_HEADER_LEN..).unwrap_or_default()] {
        if let Some(decoded) = BlobEntry::decode_all(entries) {
            let mut again = Vec::with_capacity(entries.len());
            for e in &decoded {
                e.encode(&mut again);
            }
            assert_eq!(again, entries, "blob entries re-encode to what was read");
        }
    }
    let Ok(key) = DataKey::from_material([7; 16], &[7; 64]) else {
        return;
    };
    for kind in [ObjectKind::Index, ObjectKind::Snapshot] {
        if let Ok(env) = parse_object_envelope(data, kind)
            && let Ok(cipher) = key.object_cipher(&env.salt)
        {
            let mut body = env.body.to_vec();
            let aad = [env.header, b"index/x".as_slice()].concat();
            let _ = cipher.open(0, &aad, &mut body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #30: the layout in one place: a pack as the writer makes it has exactly the size
    /// `pack_size` says, its last four bytes frame the sealed entry list `trailer_range`
    /// finds, and that list opens to the writer's entries.
    #[test]
    fn a_written_pack_has_the_size_and_trailer_the_layout_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = DataKey::from_material([3; 16], &[5; 64]).expect("key");
        let mut w = PackWriter::new(dir.path(), &key).expect("writer");
        for (i, len) in [0usize, 1, 4096].into_iter().enumerate() {
            let id: ChunkId = [i as u8; crate::engine::crypto::ID_LEN];
            w.add(id, BlobKind::Data, len as u32, false, vec![7; len])
                .expect("add");
        }
        let staged = w.finish().expect("finish");
        let bytes = std::fs::read(&staged.path).expect("read");
        assert_eq!(bytes.len() as u64, staged.size);
        assert_eq!(pack_size(&staged.entries), staged.size);
        let n = bytes.len();
        let len = u32::from_le_bytes(bytes[n - 4..].try_into().expect("4 bytes"));
        let r = trailer_range(n as u64, len).expect("framed");
        let mut sealed = bytes[r.start as usize..r.end as usize].to_vec();
        let (_, salt) = parse_pack_header(&bytes).expect("header");
        let plain = key
            .object_cipher(&salt)
            .expect("cipher")
            .open(TRAILER_COUNTER, TRAILER_AAD, &mut sealed)
            .expect("opens");
        assert_eq!(
            BlobEntry::decode_all(&sealed[..plain]).as_deref(),
            Some(staged.entries.as_slice())
        );
        assert!(trailer_range(n as u64, u32::MAX).is_err());
        assert!(trailer_range(PACK_HEADER_LEN as u64, 0).is_err());
        assert!(trailer_range(n as u64, (n - PACK_HEADER_LEN - 3) as u32).is_err());
    }
}
