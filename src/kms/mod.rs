//! Key managers: they wrap and unwrap the repository's data keys under a master key that never
//! appears in the repository. `local` keeps the master key in a file; `kmip` in a KMIP server.

pub mod kmip;
pub mod local;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Errors a key manager reports. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error(
        "master key {key_id} is not known to this key manager ({kms}); the data key was wrapped by {wrapped_by}"
    )]
    UnknownKey {
        key_id: String,
        kms: String,
        wrapped_by: String,
    },
    #[error("master key {key_id} is {state}, not Active: refusing to wrap new data keys under it")]
    NotActive { key_id: String, state: String },
    #[error(
        "unwrapping a data key under master key {key_id} ({kms}) failed: that key is not the one that wrapped it (a key of the same id on another server, or a key file from another repository) or the key record was tampered with"
    )]
    UnwrapFailed { key_id: String, kms: String },
    #[error("key manager failure: {0}")]
    Other(String),
}

/// A wrapped (encrypted) data key as stored in the repository, with what is needed to unwrap it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// Which kind of key manager wrapped it: `local` or `kmip`.
    pub kms: String,
    /// The master key's id in that key manager.
    pub master_key_id: String,
    /// How it was wrapped, for example `AES-256-GCM` or `AES-KWP`.
    pub algorithm: String,
    /// The wrapped key bytes (base64 in JSON).
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
    /// Nonce or IV, where the algorithm has one.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub iv: Option<Vec<u8>>,
    /// Authentication tag, where the algorithm returns it apart from the ciphertext.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub tag: Option<Vec<u8>>,
}

/// Secret bytes that are wiped from memory when dropped.
pub type SecretBytes = Zeroizing<Vec<u8>>;

/// What every key manager does: wrap new data keys under its active master key, and unwrap
/// data keys wrapped under any master key it still holds.
#[async_trait]
pub trait KeyManager: Send + Sync {
    /// `local` or `kmip`: stored with every wrapped key.
    fn kind(&self) -> &'static str;
    /// The master key that `wrap` uses, after checking it can be used for new data keys
    /// (for KMIP: its state is Active). Errors say why it cannot.
    async fn active_key_id(&self) -> Result<String, KmsError>;
    /// Wrap a data key under the active master key.
    async fn wrap(&self, plaintext: &[u8]) -> Result<WrappedKey, KmsError>;
    /// Unwrap a data key wrapped under `wrapped.master_key_id`.
    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<SecretBytes, KmsError>;

    /// The state of master key `id` as this key manager sees it, for status reports
    /// (for KMIP: the server's State attribute).
    async fn master_key_state(&self, id: &str) -> String {
        let _ = id;
        "unknown".into()
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&STANDARD.encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
