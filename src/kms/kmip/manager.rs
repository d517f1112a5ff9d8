//! `KmipKeyManager`: data keys wrapped under a master key held by a KMIP server.
//!
//! Two wrapping modes:
//! - **server-side** (default, algorithm `KMIP-AES-256-GCM`): the server's Encrypt and
//!   Decrypt with AES-256-GCM. The master key never leaves the server. Needs KMIP 1.4 (the
//!   first version whose Encrypt response carries the GCM tag).
//! - **local key wrap** (opt-in, algorithm `AES-KWP`, RFC 5649): the master key is fetched
//!   with Get and wraps the data key in this process. Weaker: the master key is in this
//!   process's memory (wiped after each use, but aws-lc-rs keeps its own copy of the
//!   key-encryption key that it does not wipe), and the server's audit log shows only a Get.
//!   For servers without Encrypt/Decrypt.
//!
//! Unwrapping follows the record (`WrappedKey::algorithm`, `master_key_id`), whatever mode
//! the manager wraps with, so data keys wrapped under older master keys stay readable.

use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::client::{KmipClient, ServerInfo};
use super::error::KmipError;
use super::types::{KeyState, ProtocolVersion, ResultReason};
use crate::kms::{KeyManager, KmsError, SecretBytes, WrappedKey};

/// `WrappedKey::kms` of keys wrapped by this manager.
pub const KIND: &str = "kmip";
/// Server-side AES-256-GCM (KMIP Encrypt/Decrypt).
pub const ALGORITHM_SERVER_GCM: &str = "KMIP-AES-256-GCM";
/// Local AES key wrap with padding (RFC 5649) under a master key fetched with Get.
pub const ALGORITHM_LOCAL_KWP: &str = "AES-KWP";
/// The master key name used when none is configured.
pub const DEFAULT_KEY_NAME: &str = "snapcrypt-master";

const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

/// How data keys are wrapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WrapMode {
    /// Server-side AES-256-GCM: the master key never leaves the KMIP server.
    #[default]
    ServerSide,
    /// Get the master key and wrap locally with AES-KWP. Weaker; see the module docs.
    LocalKeyWrap,
}

/// A key manager whose master key is a KMIP object. Cloning shares the connection.
#[derive(Clone)]
pub struct KmipKeyManager {
    client: Arc<KmipClient>,
    key_id: String,
    mode: WrapMode,
}

impl std::fmt::Debug for KmipKeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipKeyManager")
            .field("key_id", &self.key_id)
            .field("mode", &self.mode)
            .field("client", &self.client)
            .finish()
    }
}

impl KmipKeyManager {
    /// A manager that wraps under master key `key_id`. Checks only what needs no network.
    pub fn new(
        client: Arc<KmipClient>,
        key_id: impl Into<String>,
        mode: WrapMode,
    ) -> Result<Self, KmipError> {
        if mode == WrapMode::ServerSide && client.version() < ProtocolVersion::V1_4 {
            return Err(KmipError::Config(format!(
                "server-side AES-GCM wrapping needs KMIP 1.4 (before 1.4 the Encrypt response has no field for the GCM tag), but KMIP {} is configured: use --kmip-version 1.4, or --kmip-local-wrap",
                client.version()
            )));
        }
        Ok(Self {
            client,
            key_id: key_id.into(),
            mode,
        })
    }

    /// The manager for the Active key named `name`, created (and activated) if there is
    /// none. Returns whether it was created. With several Active keys of that name, the
    /// newest (by Initial Date) wins, which is what rotation leaves behind.
    pub async fn find_or_create(
        client: Arc<KmipClient>,
        name: &str,
        mode: WrapMode,
    ) -> Result<(Self, bool), KmipError> {
        // Validate the mode before touching the server.
        Self::new(client.clone(), "", mode)?;
        let ids = client.locate_by_name(name).await?;
        if ids.is_empty() {
            let id = client.create_master_key(name).await?;
            tracing::info!(key_id = %id, %name, "KMIP: created and activated a new master key");
            return Ok((Self::new(client, id, mode)?, true));
        }
        let mut found = Vec::new();
        for id in ids {
            let a = client
                .get_attributes(&id, &["State", "Initial Date"])
                .await?;
            found.push((id, a.state, a.initial_date));
        }
        let best = found
            .iter()
            .filter(|(_, s, _)| *s == Some(KeyState::Active))
            .max_by_key(|(id, _, date)| (*date, id.parse::<u64>().ok(), id.clone()));
        match best {
            Some((id, _, _)) => Ok((Self::new(client, id.clone(), mode)?, false)),
            None => Err(KmipError::NoActiveKey {
                name: name.into(),
                found: found
                    .into_iter()
                    .map(|(id, s, _)| (id, s.map_or("unknown".into(), |s| s.to_string())))
                    .collect(),
            }),
        }
    }

    /// The same server and mode, another master key (for rotation and for older keys).
    pub fn with_key(&self, key_id: impl Into<String>) -> Self {
        Self {
            client: self.client.clone(),
            key_id: key_id.into(),
            mode: self.mode,
        }
    }

    /// The configured master key id (as given; [`KeyManager::active_key_id`] also checks it).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn mode(&self) -> WrapMode {
        self.mode
    }

    pub fn client(&self) -> &Arc<KmipClient> {
        &self.client
    }

    /// Create and activate a new AES-256 master key named `name`; returns its id.
    pub async fn create_master_key(&self, name: &str) -> Result<String, KmipError> {
        self.client.create_master_key(name).await
    }

    /// The State of key `id`.
    pub async fn key_state(&self, id: &str) -> Result<KeyState, KmipError> {
        self.client.key_state(id).await
    }

    /// The ids of the keys named `name`.
    pub async fn locate_by_name(&self, name: &str) -> Result<Vec<String>, KmipError> {
        self.client.locate_by_name(name).await
    }

    /// Vendor, versions and operations of the server.
    pub async fn server_info(&self) -> Result<ServerInfo, KmipError> {
        self.client.server_info().await
    }

    fn where_(&self) -> String {
        format!("KMIP server {}", self.client.endpoints().join(", "))
    }

    /// A KMIP error as the trait's error, with the master key in the message.
    fn kms_error(&self, key_id: &str, e: KmipError) -> KmsError {
        match e.result_reason() {
            Some(ResultReason::ItemNotFound) => KmsError::Other(format!(
                "master key {key_id:?} not found on the {}: {e}",
                self.where_()
            )),
            _ => KmsError::Other(format!("master key {key_id:?}: {e}")),
        }
    }

    async fn require_active(&self) -> Result<(), KmsError> {
        let state = self
            .client
            .key_state(&self.key_id)
            .await
            .map_err(|e| self.kms_error(&self.key_id, e))?;
        if state != KeyState::Active {
            return Err(KmsError::NotActive {
                key_id: self.key_id.clone(),
                state: state.to_string(),
            });
        }
        Ok(())
    }

    async fn fetch_master_key(&self, key_id: &str) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let key = self
            .client
            .get_symmetric_key(key_id)
            .await
            .map_err(|e| self.kms_error(key_id, e))?;
        if key.len() != 32 {
            return Err(KmsError::Other(format!(
                "master key {key_id:?} is {} bits, not an AES-256 key",
                key.len() * 8
            )));
        }
        Ok(key)
    }

    async fn wrap_server_side(&self, plaintext: &[u8]) -> Result<WrappedKey, KmsError> {
        let mut iv = [0u8; GCM_IV_LEN];
        SystemRandom::new()
            .fill(&mut iv)
            .map_err(|_| KmsError::Other("no randomness".into()))?;
        let aad = wrap_aad(&self.key_id);
        let out = match self
            .client
            .encrypt_gcm(&self.key_id, plaintext, &iv, &aad, GCM_TAG_LEN)
            .await
        {
            Ok(out) => out,
            Err(e) if e.result_reason() == Some(ResultReason::PermissionDenied) => {
                // Most often the key is not Active: say so plainly if that is the case.
                self.require_active().await?;
                return Err(self.kms_error(&self.key_id, e));
            }
            Err(e) => return Err(self.kms_error(&self.key_id, e)),
        };
        let iv = out.iv.unwrap_or_else(|| iv.to_vec());
        let Some(tag) = out.tag else {
            return Err(KmsError::Other(format!(
                "the {} returned no AES-GCM tag for Encrypt under master key {:?}: it needs KMIP 1.4, or use --kmip-local-wrap",
                self.where_(),
                self.key_id
            )));
        };
        if out.data.len() != plaintext.len() || tag.len() != GCM_TAG_LEN {
            return Err(KmsError::Other(format!(
                "the {} returned an AES-GCM result of unexpected size ({} bytes of ciphertext, {}-byte tag)",
                self.where_(),
                out.data.len(),
                tag.len()
            )));
        }
        let wrapped = WrappedKey {
            kms: KIND.into(),
            master_key_id: self.key_id.clone(),
            algorithm: ALGORITHM_SERVER_GCM.into(),
            ciphertext: out.data,
            iv: Some(iv),
            tag: Some(tag),
        };
        // The result cannot be checked locally: decrypt once before anything depends on it.
        let back = self.unwrap(&wrapped).await?;
        if back.as_slice() != plaintext {
            return Err(KmsError::Other(format!(
                "the {} did not decrypt what it encrypted under master key {:?}",
                self.where_(),
                self.key_id
            )));
        }
        Ok(wrapped)
    }

    async fn wrap_local(&self, plaintext: &[u8]) -> Result<WrappedKey, KmsError> {
        self.require_active().await?;
        let key = self.fetch_master_key(&self.key_id).await?;
        let kek = AesKek::new(&AES_256, &key)
            .map_err(|_| KmsError::Other("AES key wrap set-up failed".into()))?;
        let mut out = vec![0u8; plaintext.len() + 15];
        let len = kek
            .wrap_with_padding(plaintext, &mut out)
            .map_err(|_| KmsError::Other("AES key wrap failed".into()))?
            .len();
        out.truncate(len);
        Ok(WrappedKey {
            kms: KIND.into(),
            master_key_id: self.key_id.clone(),
            algorithm: ALGORITHM_LOCAL_KWP.into(),
            ciphertext: out,
            iv: None,
            tag: None,
        })
    }

    async fn unwrap_server_side(&self, wrapped: &WrappedKey) -> Result<SecretBytes, KmsError> {
        let id = &wrapped.master_key_id;
        let failed = || KmsError::UnwrapFailed {
            key_id: id.clone(),
            kms: self.where_(),
        };
        if self.client.version() < ProtocolVersion::V1_4 {
            return Err(KmsError::Other(format!(
                "data keys wrapped with {ALGORITHM_SERVER_GCM} need KMIP 1.4 to unwrap (KMIP {} is configured): use --kmip-version 1.4",
                self.client.version()
            )));
        }
        let (Some(iv), Some(tag)) = (&wrapped.iv, &wrapped.tag) else {
            return Err(failed());
        };
        match self
            .client
            .decrypt_gcm(id, &wrapped.ciphertext, iv, &wrap_aad(id), tag)
            .await
        {
            Ok(pt) => Ok(pt),
            Err(e) => match e.result_reason() {
                // PyKMIP reports a bad tag as General Failure; KMIP says Cryptographic Failure.
                Some(ResultReason::CryptographicFailure | ResultReason::GeneralFailure) => {
                    Err(failed())
                }
                Some(ResultReason::ItemNotFound) => Err(KmsError::UnknownKey {
                    key_id: id.clone(),
                    kms: self.where_(),
                    wrapped_by: format!("{} key {id}", wrapped.kms),
                }),
                _ => Err(self.kms_error(id, e)),
            },
        }
    }

    async fn unwrap_local(&self, wrapped: &WrappedKey) -> Result<SecretBytes, KmsError> {
        let id = &wrapped.master_key_id;
        let key = self.fetch_master_key(id).await?;
        let kek = AesKek::new(&AES_256, &key)
            .map_err(|_| KmsError::Other("AES key wrap set-up failed".into()))?;
        let mut out = Zeroizing::new(vec![0u8; wrapped.ciphertext.len()]);
        let len = kek
            .unwrap_with_padding(&wrapped.ciphertext, &mut out)
            .map_err(|_| KmsError::UnwrapFailed {
                key_id: id.clone(),
                kms: self.where_(),
            })?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// Binds a wrapped key to the master key id (AES-GCM additional data).
fn wrap_aad(key_id: &str) -> Vec<u8> {
    [b"snapcrypt-wrap-v1:kmip:".as_slice(), key_id.as_bytes()].concat()
}

#[async_trait]
impl KeyManager for KmipKeyManager {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn active_key_id(&self) -> Result<String, KmsError> {
        self.require_active().await?;
        Ok(self.key_id.clone())
    }

    async fn wrap(&self, plaintext: &[u8]) -> Result<WrappedKey, KmsError> {
        match self.mode {
            WrapMode::ServerSide => self.wrap_server_side(plaintext).await,
            WrapMode::LocalKeyWrap => self.wrap_local(plaintext).await,
        }
    }

    async fn master_key_state(&self, id: &str) -> String {
        match KmipKeyManager::key_state(self, id).await {
            Ok(state) => format!("{state:?}"),
            Err(e) => format!("unknown ({e})"),
        }
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<SecretBytes, KmsError> {
        if wrapped.kms != KIND {
            return Err(KmsError::UnknownKey {
                key_id: wrapped.master_key_id.clone(),
                kms: self.where_(),
                wrapped_by: format!("{} key {}", wrapped.kms, wrapped.master_key_id),
            });
        }
        match wrapped.algorithm.as_str() {
            ALGORITHM_SERVER_GCM => self.unwrap_server_side(wrapped).await,
            ALGORITHM_LOCAL_KWP => self.unwrap_local(wrapped).await,
            other => Err(KmsError::Other(format!(
                "data key wrapped with unknown algorithm {other:?} (this version knows {ALGORITHM_SERVER_GCM} and {ALGORITHM_LOCAL_KWP})"
            ))),
        }
    }
}
