//! Content encryption. Every object is AES-256-GCM under a subkey derived from the data key
//! and a random 256-bit salt unique to the object (a pack, an index, a snapshot), so nonces
//! are counters within one subkey and never repeat. Chunk ids are keyed BLAKE3 of the
//! plaintext under a separate secret id key, so ids reveal nothing about content.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Length of an AEAD tag appended to every sealed blob.
pub const TAG_LEN: usize = 16;
/// Length of chunk ids, salts and keys.
pub const ID_LEN: usize = 32;

/// A chunk id: keyed BLAKE3 of the chunk's plaintext.
pub type ChunkId = [u8; ID_LEN];

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("authentication failed: the object is tampered, truncated or under another key")]
    Open,
    #[error("the system random generator failed")]
    Random,
    #[error("data key material has the wrong length")]
    KeyLength,
    #[error("encryption failed")]
    Seal,
}

/// The secret material of one data key: the content key and the repository's chunk-id key.
/// Wiped from memory on drop.
pub struct DataKey {
    /// Identifies this data key in object headers (random, not secret).
    pub id: [u8; 16],
    enc: Zeroizing<[u8; 32]>,
    id_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// A new random data key sharing the repository's chunk-id key (`id_key`), or a new id key
    /// for a new repository.
    pub fn generate(id_key: Option<&[u8; 32]>) -> Result<Self, CryptoError> {
        let mut key = DataKey {
            id: [0; 16],
            enc: Zeroizing::new([0; 32]),
            id_key: Zeroizing::new([0; 32]),
        };
        fill_random(&mut key.id)?;
        fill_random(&mut key.enc[..])?;
        match id_key {
            Some(k) => key.id_key.copy_from_slice(k),
            None => fill_random(&mut key.id_key[..])?,
        }
        Ok(key)
    }

    /// The 64 secret bytes a key manager wraps: content key then id key.
    pub fn material(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::with_capacity(64));
        v.extend_from_slice(&self.enc[..]);
        v.extend_from_slice(&self.id_key[..]);
        v
    }

    /// Rebuild a data key from unwrapped material.
    pub fn from_material(id: [u8; 16], material: &[u8]) -> Result<Self, CryptoError> {
        if material.len() != 64 {
            return Err(CryptoError::KeyLength);
        }
        let mut key = DataKey {
            id,
            enc: Zeroizing::new([0; 32]),
            id_key: Zeroizing::new([0; 32]),
        };
        key.enc.copy_from_slice(&material[..32]);
        key.id_key.copy_from_slice(&material[32..]);
        Ok(key)
    }

    /// The repository-wide chunk-id key (shared by all data keys of a repository).
    pub fn id_key(&self) -> &[u8; 32] {
        &self.id_key
    }

    /// The chunk id of `plaintext`.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        *blake3::keyed_hash(&self.id_key, plaintext).as_bytes()
    }

    /// The cipher for one object, from its salt.
    pub fn object_cipher(&self, salt: &[u8; ID_LEN]) -> Result<ObjectCipher, CryptoError> {
        // Keyed BLAKE3 is a PRF, so this is a sound KDF: a fresh key per random salt.
        let mut hasher = blake3::Hasher::new_keyed(&self.enc);
        hasher.update(b"snapcrypt object subkey v1");
        hasher.update(salt);
        let sub = Zeroizing::new(*hasher.finalize().as_bytes());
        let key = UnboundKey::new(&AES_256_GCM, &sub[..]).map_err(|_| CryptoError::KeyLength)?;
        Ok(ObjectCipher {
            key: LessSafeKey::new(key),
        })
    }
}

/// AES-256-GCM under one object's subkey; nonces are the caller's counters.
pub struct ObjectCipher {
    key: LessSafeKey,
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

impl ObjectCipher {
    /// Encrypt `buf` in place and append the tag. Each `counter` must be used once per object.
    pub fn seal(&self, counter: u64, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.key
            .seal_in_place_append_tag(nonce(counter), Aad::from(aad), buf)
            .map_err(|_| CryptoError::Seal)
    }

    /// Decrypt `buf` (ciphertext and tag) in place; returns the plaintext length.
    pub fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> Result<usize, CryptoError> {
        self.key
            .open_in_place(nonce(counter), Aad::from(aad), buf)
            .map(|p| p.len())
            .map_err(|_| CryptoError::Open)
    }
}

/// Fill `buf` from the system's secure random generator.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Random)
}

/// A random salt or id.
pub fn random_id() -> Result<[u8; ID_LEN], CryptoError> {
    let mut id = [0u8; ID_LEN];
    fill_random(&mut id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_binding() {
        let key = DataKey::generate(None).unwrap();
        let salt = random_id().unwrap();
        let c = key.object_cipher(&salt).unwrap();
        let mut buf = b"hello world".to_vec();
        c.seal(7, b"aad", &mut buf).unwrap();
        assert_eq!(buf.len(), 11 + TAG_LEN);
        let mut wrong_counter = buf.clone();
        assert!(c.open(8, b"aad", &mut wrong_counter).is_err());
        let mut wrong_aad = buf.clone();
        assert!(c.open(7, b"other", &mut wrong_aad).is_err());
        let other = key.object_cipher(&random_id().unwrap()).unwrap();
        assert!(other.open(7, b"aad", &mut buf.clone()).is_err());
        let n = c.open(7, b"aad", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello world");
    }

    #[test]
    fn material_round_trip_keeps_ids() {
        let key = DataKey::generate(None).unwrap();
        let again = DataKey::from_material(key.id, &key.material()).unwrap();
        assert_eq!(key.chunk_id(b"x"), again.chunk_id(b"x"));
        let sibling = DataKey::generate(Some(key.id_key())).unwrap();
        assert_eq!(key.chunk_id(b"x"), sibling.chunk_id(b"x"));
        assert_ne!(
            key.chunk_id(b"x"),
            DataKey::generate(None).unwrap().chunk_id(b"x")
        );
    }
}
