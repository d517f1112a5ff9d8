//! The repository's objects as bytes: see docs/REPOSITORY.md for the whole picture.

use serde::{Deserialize, Serialize};

use super::crypto::{ChunkId, ID_LEN};
use crate::kms::WrappedKey;

/// Repository format version, stored in `config`.
pub const FORMAT_VERSION: u32 = 1;
/// Magic of pack files.
pub const PACK_MAGIC: &[u8; 4] = b"SCPK";
/// Magic of sealed objects (indexes, snapshots).
pub const OBJECT_MAGIC: &[u8; 4] = b"SCOB";
/// Pack header: magic, version, 11 reserved bytes, data key id, salt.
pub const PACK_HEADER_LEN: usize = 4 + 1 + 11 + 16 + ID_LEN;
/// Sealed object header: magic, version, kind, data key id, salt.
pub const OBJECT_HEADER_LEN: usize = 4 + 1 + 1 + 16 + ID_LEN;
/// Nonce counter of a pack's trailer (a blob's counter is its offset in the pack).
pub const TRAILER_COUNTER: u64 = u64::MAX;
/// Bytes of one binary index entry.
pub const INDEX_ENTRY_LEN: usize = ID_LEN + 4 + 4 + 4 + 1 + 1;

/// `config`: plaintext, written once when the repository is created.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Config {
    /// Always `snapcrypt-repository`.
    pub format: String,
    /// Format version; this build reads version 1.
    pub version: u32,
    /// Random repository id.
    pub id: String,
    /// When the repository was created (RFC 3339).
    pub created: String,
    /// How files are cut into chunks.
    pub chunker: ChunkerParams,
    /// Packs are closed once they reach this many bytes.
    pub pack_size: u64,
    /// The data key the repository was created with (its chunk-id key is the repository's).
    pub key: String,
    /// Keyed BLAKE3 (under a key derived from the secret chunk-id key) of this JSON with `mac`
    /// empty: the config is readable without keys but cannot be altered unnoticed.
    #[serde(default)]
    pub mac: String,
}

impl Config {
    /// The MAC of this config under the repository's chunk-id key.
    pub fn compute_mac(&self, id_key: &[u8; 32]) -> String {
        let mut unsigned = self.clone();
        unsigned.mac = String::new();
        let key = blake3::derive_key("snapcrypt config mac v1", id_key);
        let json = serde_json::to_vec(&unsigned).unwrap_or_default();
        blake3::keyed_hash(&key, &json).to_hex().to_string()
    }
}

/// Chunking parameters (fixed among all snapshots of a repository, so chunks deduplicate).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// `fixed`: aligned blocks of `size` bytes (the last one shorter).
    pub kind: String,
    /// Block size in bytes.
    pub size: u32,
}

/// `keys/<data key id>`: one data key, wrapped by a key manager. Replaced in place by a rewrap.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeyRecord {
    /// Hex id of the data key (named in every object it encrypts).
    pub data_key_id: String,
    /// When the data key was created (RFC 3339).
    pub created: String,
    /// When it was last wrapped (RFC 3339).
    pub wrapped_at: String,
    /// The 64 secret bytes (content key, chunk-id key), wrapped.
    pub wrapped: WrappedKey,
    /// Master keys this data key was wrapped under before, oldest first (kept so status can
    /// show every key the repository has used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PastWrap>,
    /// The wrap this record had before a rewrap that has not finished yet: while any record
    /// has one, the repository opens with the old master key as well as the new. Removed when
    /// the rewrap of every record is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<WrappedKey>,
}

/// A master key a data key was once wrapped under.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PastWrap {
    pub kms: String,
    pub master_key_id: String,
    /// When the data key was rewrapped away from it (RFC 3339).
    pub until: String,
}

/// Kinds of sealed objects (bound into their authentication).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    Index = 1,
    Snapshot = 2,
    /// A backup's file list so far (`checkpoints/`), for a retry after it is killed.
    Checkpoint = 3,
}

/// Kinds of blobs inside packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
}

/// One blob in a pack, as stored in its trailer and index object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    pub id: ChunkId,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length (ciphertext and tag).
    pub stored_len: u32,
    /// Plaintext length after decompression.
    pub raw_len: u32,
    pub kind: BlobKind,
    /// Bit 0: zstd-compressed.
    pub flags: u8,
}

impl BlobEntry {
    pub fn compressed(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Append the binary form (the layout of docs/REPOSITORY.md).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.flags);
    }

    /// Decode entries; None if the bytes are not a whole number of valid entries (an unknown
    /// kind, or a length over [`MAX_BLOB_LEN`]).
    pub fn decode_all(bytes: &[u8]) -> Option<Vec<BlobEntry>> {
        if !bytes.len().is_multiple_of(INDEX_ENTRY_LEN) {
            return None;
        }
        bytes
            .chunks_exact(INDEX_ENTRY_LEN)
            .map(|e| {
                let u32_at = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
                let kind = match e[44] {
                    0 => BlobKind::Data,
                    1 => BlobKind::Tree,
                    _ => return None,
                };
                let mut id = [0u8; ID_LEN];
                id.copy_from_slice(&e[..ID_LEN]);
                let (stored_len, raw_len) = (u32_at(36), u32_at(40));
                // Lengths bound every buffer a reader makes for the blob: none past what a
                // blob can be, however the entry was made.
                if stored_len > MAX_BLOB_LEN || raw_len > MAX_BLOB_LEN {
                    return None;
                }
                Some(BlobEntry {
                    id,
                    offset: u32_at(32),
                    stored_len,
                    raw_len,
                    kind,
                    flags: e[45],
                })
            })
            .collect()
    }
}

/// The longest a blob's stored or raw bytes may be: a chunk is at most 1 MiB
/// (`repo::CHUNK_SIZES`), a piece of a file list 1 MiB before compression; 16 MiB leaves room
/// and bounds what a reader allocates for one blob.
pub const MAX_BLOB_LEN: u32 = 16 * 1024 * 1024;

/// A sealed object's envelope as read from the store (untrusted): the header (bound into the
/// associated data), the data key and salt it names, and the ciphertext with its tag.
#[derive(Debug, PartialEq, Eq)]
pub struct ObjectEnvelope<'a> {
    pub header: &'a [u8],
    pub data_key_id: [u8; 16],
    pub salt: [u8; ID_LEN],
    pub body: &'a [u8],
}

/// Split a sealed object of `kind` into its envelope, or say why it is not one. Checks the
/// magic, the version, the kind and that a tag fits; never reads past `bytes`.
pub fn parse_object_envelope(
    bytes: &[u8],
    kind: ObjectKind,
) -> Result<ObjectEnvelope<'_>, &'static str> {
    if bytes.len() < OBJECT_HEADER_LEN + 16 || &bytes[..4] != OBJECT_MAGIC || bytes[4] != 1 {
        return Err("not a snapcrypt object (bad header or truncated)");
    }
    if bytes[5] != kind as u8 {
        return Err("object of the wrong kind");
    }
    let (header, body) = bytes.split_at(OBJECT_HEADER_LEN);
    let mut data_key_id = [0u8; 16];
    data_key_id.copy_from_slice(&header[6..22]);
    let mut salt = [0u8; ID_LEN];
    salt.copy_from_slice(&header[22..OBJECT_HEADER_LEN]);
    Ok(ObjectEnvelope {
        header,
        data_key_id,
        salt,
        body,
    })
}

/// `snapshots/<id>`: what one snapshot is. Sealed; written last, so a snapshot exists only once
/// this object does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SnapshotManifest {
    /// Hex id (also the object's name).
    pub id: String,
    /// When the backup started (RFC 3339).
    pub time: String,
    /// When it finished (RFC 3339).
    pub finished: String,
    /// Host that took it.
    pub hostname: String,
    /// Source directory as given.
    pub source: String,
    /// User tags.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Snapshot this one was compared against for unchanged files, if any.
    #[serde(default)]
    pub parent: Option<String>,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of the regular files.
    pub logical_bytes: u64,
    /// Bytes this snapshot added to the repository.
    pub stored_bytes: u64,
    /// Tree blobs holding the file list, in order.
    pub tree: Vec<String>,
    /// Data keys of every pack this snapshot reads.
    pub data_keys: Vec<String>,
    /// The master key that wrapped the data key used for new data, when the snapshot was taken.
    pub master_key_id: String,
}

/// One entry of a snapshot's file list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TreeEntry {
    /// Path relative to the source root, `/`-separated; "" is the root directory itself.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Size in bytes (files).
    #[serde(default)]
    pub size: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Inode and device at backup time, to recognise unchanged files next time.
    #[serde(default)]
    pub inode: u64,
    /// Chunk ids, concatenated, base64.
    #[serde(default, with = "chunk_list", skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
    /// A file of more than [`PART_CHUNKS`] chunks is listed in parts, each holding the next
    /// [`PART_CHUNKS`] of its chunks (the last the rest), so no reader or writer holds a whole
    /// chunk list: the first part (`part` 0, left out) carries the file's size and metadata,
    /// each later part follows the one before it, with the same path and metadata, size 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part: u32,
}

/// Chunks in each part of a file's entry but the last (256 MiB of 16 KiB chunks; 512 KiB of
/// ids).
pub const PART_CHUNKS: usize = 16_384;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

mod chunk_list {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{ChunkId, ID_LEN};

    pub fn serialize<S: Serializer>(v: &[ChunkId], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v.concat()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ChunkId>, D::Error> {
        let raw = STANDARD
            .decode(String::deserialize(d)?)
            .map_err(serde::de::Error::custom)?;
        if !raw.len().is_multiple_of(ID_LEN) {
            return Err(serde::de::Error::custom(
                "chunk list length is not a multiple of 32",
            ));
        }
        Ok(raw
            .chunks_exact(ID_LEN)
            .map(|c| {
                let mut id = [0u8; ID_LEN];
                id.copy_from_slice(c);
                id
            })
            .collect())
    }
}

/// The name of a pack object from its hex id.
pub fn pack_object_name(pack_id: &str) -> String {
    format!("data/{}/{}", &pack_id[..2], pack_id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fixed-seed generator of hostile bytes (xorshift64: no dependency for a test).
    pub(crate) fn noise(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    fn entry(n: u8, kind: BlobKind) -> BlobEntry {
        BlobEntry {
            id: [n; ID_LEN],
            offset: 64 + u32::from(n) * 100,
            stored_len: 100,
            raw_len: 16384,
            kind,
            flags: n & 1,
        }
    }

    #[test]
    fn blob_entries_have_the_documented_width_and_round_trip() {
        let entries = vec![entry(1, BlobKind::Data), entry(2, BlobKind::Tree)];
        let mut bytes = Vec::new();
        for e in &entries {
            e.encode(&mut bytes);
        }
        assert_eq!(bytes.len(), 2 * INDEX_ENTRY_LEN);
        assert_eq!(INDEX_ENTRY_LEN, 46);
        assert_eq!(BlobEntry::decode_all(&bytes), Some(entries));
        // Little-endian offset right after the id.
        assert_eq!(&bytes[32..36], &(64u32 + 100).to_le_bytes());
    }

    #[test]
    fn hostile_blob_entries_are_refused() {
        let mut bytes = Vec::new();
        entry(1, BlobKind::Data).encode(&mut bytes);
        assert_eq!(BlobEntry::decode_all(&bytes[..45]), None, "a torn entry");
        let mut unknown = bytes.clone();
        unknown[44] = 9;
        assert_eq!(BlobEntry::decode_all(&unknown), None, "an unknown kind");
        assert_eq!(BlobEntry::decode_all(&[]), Some(vec![]));
        // A length past what a blob can be: refused before any buffer is sized by it.
        let mut huge = bytes.clone();
        huge[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            BlobEntry::decode_all(&huge),
            None,
            "a stored length of 4 GiB"
        );
        let mut huge = bytes.clone();
        huge[40..44].copy_from_slice(&(MAX_BLOB_LEN + 1).to_le_bytes());
        assert_eq!(
            BlobEntry::decode_all(&huge),
            None,
            "a raw length past the bound"
        );
    }

    #[test]
    fn object_envelopes_are_checked_before_anything_is_read() {
        let mut obj = Vec::new();
        obj.extend_from_slice(OBJECT_MAGIC);
        obj.push(1);
        obj.push(ObjectKind::Snapshot as u8);
        obj.extend_from_slice(&[3; 16]);
        obj.extend_from_slice(&[4; ID_LEN]);
        obj.extend_from_slice(&[5; 20]);
        let env = parse_object_envelope(&obj, ObjectKind::Snapshot).expect("envelope");
        assert_eq!(
            (env.data_key_id, env.salt, env.body.len()),
            ([3; 16], [4; ID_LEN], 20)
        );
        assert_eq!(env.header.len(), OBJECT_HEADER_LEN);
        assert_eq!(
            parse_object_envelope(&obj, ObjectKind::Index),
            Err("object of the wrong kind")
        );
        for cut in [0, 4, OBJECT_HEADER_LEN, OBJECT_HEADER_LEN + 15] {
            assert!(parse_object_envelope(&obj[..cut], ObjectKind::Snapshot).is_err());
        }
        let mut v2 = obj.clone();
        v2[4] = 2;
        assert!(parse_object_envelope(&v2, ObjectKind::Snapshot).is_err());
    }

    /// 50,000 fixed-seed hostile inputs (random, and mutations of valid objects) through every
    /// parser of repository bytes: none panics. The fuzz target runs the same function.
    #[test]
    fn seeded_mutations_never_panic() {
        let mut next = noise(0x5eed_cafe);
        let mut valid = Vec::new();
        valid.extend_from_slice(PACK_MAGIC);
        valid.push(1);
        valid.extend_from_slice(&[0; 11 + 16 + ID_LEN]);
        for n in 0..4 {
            entry(n, BlobKind::Data).encode(&mut valid);
        }
        let mut sealed = Vec::new();
        sealed.extend_from_slice(OBJECT_MAGIC);
        sealed.extend_from_slice(&[1, ObjectKind::Index as u8]);
        sealed.extend_from_slice(&[0; 16 + ID_LEN + 40]);
        for i in 0..50_000u32 {
            let base = if i % 2 == 0 { &valid } else { &sealed };
            let mut data = base.clone();
            match next() % 4 {
                0 => data.truncate((next() % (base.len() as u64 + 1)) as usize),
                1 => {
                    for _ in 0..1 + next() % 4 {
                        let at = (next() % data.len() as u64) as usize;
                        data[at] = next() as u8;
                    }
                }
                2 => data.extend((0..next() % 64).map(|_| next() as u8)),
                _ => data = (0..next() % 200).map(|_| next() as u8).collect(),
            }
            crate::engine::pack::fuzz_repository_bytes(&data);
        }
    }
}
