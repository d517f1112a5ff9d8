//! The typed KMIP operations of [`KmipClient`]: one method per operation, each building its
//! request payload and reading its response payload (`messages.rs`).

use zeroize::Zeroizing;

use super::client::{KmipClient, ServerInfo};
use super::error::KmipError;
use super::messages::{self, EncryptOutput, KeyAttributes, QueryOutput};
use super::tags;
use super::ttlv::Ttlv;
use super::types::{KeyState, Operation, ProtocolVersion, RevocationReason};

impl KmipClient {
    /// DiscoverVersions: the protocol versions the server speaks.
    pub async fn discover_versions(&self) -> Result<Vec<ProtocolVersion>, KmipError> {
        let p = self.call(Operation::DiscoverVersions, None, vec![]).await?;
        Ok(messages::parse_discover_versions(&p))
    }

    /// Query operations, object types and server information.
    pub async fn query(&self) -> Result<QueryOutput, KmipError> {
        let p = self
            .call(
                Operation::Query,
                None,
                messages::query(&[
                    tags::QUERY_OPERATIONS,
                    tags::QUERY_OBJECTS,
                    tags::QUERY_SERVER_INFORMATION,
                ]),
            )
            .await?;
        Ok(messages::parse_query(&p))
    }

    /// DiscoverVersions and Query together.
    pub async fn server_info(&self) -> Result<ServerInfo, KmipError> {
        let versions = self.discover_versions().await?;
        let q = self.query().await?;
        Ok(ServerInfo {
            endpoint: self.answered_by().unwrap_or_default(),
            vendor: q.vendor_identification,
            server_information: q.server_information,
            versions,
            operations: q.operations,
        })
    }

    /// Create an AES-256 key named `name` for Encrypt, Decrypt, Wrap Key and Unwrap Key.
    /// It starts PreActive: [`Self::activate`] it before use.
    pub async fn create_aes256_key(&self, name: &str) -> Result<String, KmipError> {
        let p = self
            .call(Operation::Create, None, messages::create_aes256(name))
            .await?;
        self.unique_id_of(Operation::Create, &p)
    }

    /// Create an AES-256 master key named `name` and activate it; returns its id. If the
    /// activation fails, the new key is destroyed (best effort) so no unusable key is left.
    pub async fn create_master_key(&self, name: &str) -> Result<String, KmipError> {
        let id = self.create_aes256_key(name).await?;
        if let Err(e) = self.activate(&id).await {
            if let Err(d) = self.destroy(&id).await {
                tracing::warn!(key_id = %id, error = %d, "KMIP: could not destroy a key whose activation failed");
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Register a raw AES-256 key under `name` (for tests and imports).
    pub async fn register_aes256_key(&self, name: &str, key: &[u8]) -> Result<String, KmipError> {
        if key.len() != 32 {
            return Err(KmipError::Config(format!(
                "an AES-256 key is 32 bytes, not {}",
                key.len()
            )));
        }
        let p = self
            .call(
                Operation::Register,
                None,
                messages::register_aes256(name, key),
            )
            .await?;
        self.unique_id_of(Operation::Register, &p)
    }

    /// Activate a PreActive object.
    pub async fn activate(&self, id: &str) -> Result<(), KmipError> {
        self.call(Operation::Activate, Some(id), messages::unique_id(id))
            .await
            .map(drop)
    }

    /// Get a symmetric key's raw bytes (wiped when dropped).
    pub async fn get_symmetric_key(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, KmipError> {
        let p = self
            .call(Operation::Get, Some(id), messages::unique_id(id))
            .await?;
        messages::parse_get_symmetric_key(&p).map_err(|d| self.protocol(Operation::Get, d))
    }

    /// GetAttributes: the named attributes, or all of them if `names` is empty.
    pub async fn get_attributes(
        &self,
        id: &str,
        names: &[&str],
    ) -> Result<KeyAttributes, KmipError> {
        let p = self
            .call(
                Operation::GetAttributes,
                Some(id),
                messages::get_attributes(id, names),
            )
            .await?;
        messages::parse_attributes(&p).map_err(|d| self.protocol(Operation::GetAttributes, d))
    }

    /// The key's State.
    pub async fn key_state(&self, id: &str) -> Result<KeyState, KmipError> {
        self.get_attributes(id, &["State"])
            .await?
            .state
            .ok_or_else(|| self.protocol(Operation::GetAttributes, format!("no State for {id:?}")))
    }

    /// Locate the objects named `name`.
    pub async fn locate_by_name(&self, name: &str) -> Result<Vec<String>, KmipError> {
        let p = self
            .call(Operation::Locate, None, messages::locate_by_name(name))
            .await?;
        Ok(messages::parse_locate(&p))
    }

    /// Encrypt with AES-GCM under key `id`, with the caller's IV and additional data.
    /// Additional data needs KMIP 1.4 (refused here before that: servers cannot parse it),
    /// and so does getting the tag back.
    pub async fn encrypt_gcm(
        &self,
        id: &str,
        plaintext: &[u8],
        iv: &[u8],
        aad: &[u8],
        tag_len: usize,
    ) -> Result<EncryptOutput, KmipError> {
        self.require_1_4_for("AES-GCM additional data", !aad.is_empty())?;
        let tag_len = i32::try_from(tag_len).unwrap_or(i32::MAX);
        let p = self
            .call(
                Operation::Encrypt,
                Some(id),
                messages::encrypt_gcm(id, plaintext, iv, aad, tag_len),
            )
            .await?;
        messages::parse_encrypt(&p).map_err(|d| self.protocol(Operation::Encrypt, d))
    }

    /// Decrypt AES-GCM under key `id`. The plaintext is wiped when dropped.
    pub async fn decrypt_gcm(
        &self,
        id: &str,
        ciphertext: &[u8],
        iv: &[u8],
        aad: &[u8],
        tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmipError> {
        self.require_1_4_for("AES-GCM additional data", !aad.is_empty())?;
        self.require_1_4_for("the AES-GCM tag", true)?;
        let p = self
            .call(
                Operation::Decrypt,
                Some(id),
                messages::decrypt_gcm(id, ciphertext, iv, aad, tag),
            )
            .await?;
        messages::parse_decrypt(&p).map_err(|d| self.protocol(Operation::Decrypt, d))
    }

    /// ReKey: a replacement for key `id`, returns the new key's id. Servers without ReKey
    /// (PyKMIP) answer Operation Not Supported: see [`KmipError::is_not_supported`].
    pub async fn rekey(&self, id: &str) -> Result<String, KmipError> {
        let p = self
            .call(Operation::ReKey, Some(id), messages::unique_id(id))
            .await?;
        self.unique_id_of(Operation::ReKey, &p)
    }

    /// Revoke key `id`. snapcrypt itself never revokes a master key; tests and operators do.
    pub async fn revoke(
        &self,
        id: &str,
        reason: RevocationReason,
        message: Option<&str>,
    ) -> Result<(), KmipError> {
        self.call(
            Operation::Revoke,
            Some(id),
            messages::revoke(id, reason.code(), message),
        )
        .await
        .map(drop)
    }

    /// Destroy object `id` (servers require it to be revoked or never activated first).
    pub async fn destroy(&self, id: &str) -> Result<(), KmipError> {
        self.call(Operation::Destroy, Some(id), messages::unique_id(id))
            .await
            .map(drop)
    }

    fn require_1_4_for(&self, what: &str, needed: bool) -> Result<(), KmipError> {
        if needed && self.version() < ProtocolVersion::V1_4 {
            return Err(KmipError::Config(format!(
                "{what} needs KMIP 1.4, but KMIP {} is configured (--kmip-version)",
                self.version()
            )));
        }
        Ok(())
    }

    fn unique_id_of(&self, op: Operation, payload: &Ttlv) -> Result<String, KmipError> {
        messages::response_unique_id(payload).map_err(|d| self.protocol(op, d))
    }

    fn protocol(&self, operation: Operation, detail: String) -> KmipError {
        KmipError::Protocol {
            endpoint: self.answered_by().unwrap_or_default(),
            operation,
            detail,
        }
    }
}
