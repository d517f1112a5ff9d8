//! The default key store: a 256-bit master key in a local file (mode 0600), never stored in
//! the repository. Data keys are wrapped with AES-256-GCM under it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{KeyManager, KmsError, SecretBytes, WrappedKey};

const KEY_FILE_FORMAT: &str = "snapcrypt-local-key/v1";
const WRAP_ALGORITHM: &str = "AES-256-GCM";

/// A master key held in a local file.
pub struct LocalKeyManager {
    key_id: String,
    key: Zeroizing<[u8; 32]>,
}

/// Debug shows the key id only, never the key.
impl std::fmt::Debug for LocalKeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyManager")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    key_id: String,
    key: String,
}

impl LocalKeyManager {
    /// Load the key file at `path`.
    pub fn load(path: &Path) -> Result<Self, KmsError> {
        let err = |reason: String| KmsError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
        let km = Self::parse(&text).map_err(err)?;
        if let Some(warning) = fs::metadata(path).ok().and_then(|m| mode_warning(path, &m)) {
            eprintln!("snapcrypt: warning: {warning}");
        }
        Ok(km)
    }

    /// Parse key file contents (as stored in a file or a Kubernetes Secret).
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed: KeyFile = serde_json::from_str(text).map_err(|_| {
            "not a snapcrypt key file (expected JSON with format, key_id, key)".to_string()
        })?;
        let encoded = Zeroizing::new(parsed.key);
        if parsed.format != KEY_FILE_FORMAT {
            return Err(format!(
                "format is {:?}, expected {KEY_FILE_FORMAT:?}",
                parsed.format
            ));
        }
        let raw = Zeroizing::new(
            STANDARD
                .decode(encoded.as_bytes())
                .map_err(|_| "key is not base64".to_string())?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if raw.len() != 32 {
            return Err(format!("key is {} bytes, expected 32", raw.len()));
        }
        key.copy_from_slice(&raw);
        let key_id = key_id_of(&key);
        if key_id != parsed.key_id {
            return Err(format!(
                "key_id {} does not match the key (expected {key_id})",
                parsed.key_id
            ));
        }
        Ok(Self { key_id, key })
    }

    /// Create a new random key file at `path` (mode 0600, parent directories created).
    /// Fails if the file exists.
    pub fn create(path: &Path) -> Result<Self, KmsError> {
        let err = |reason: String| KmsError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut key[..])
            .map_err(|_| err("no randomness".into()))?;
        let key_id = key_id_of(&key);
        let text = Zeroizing::new(
            serde_json::to_string_pretty(&KeyFile {
                format: KEY_FILE_FORMAT.into(),
                key_id: key_id.clone(),
                key: STANDARD.encode(&key[..]),
            })
            .map_err(|e| err(e.to_string()))?,
        );
        // Missing parent directories are made private; an existing one keeps its mode (it
        // may be a shared directory such as /tmp or $HOME).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(e.to_string()))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
        Ok(Self { key_id, key })
    }

    /// Load the key file, or create it if it does not exist. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KmsError> {
        if path.exists() {
            Ok((Self::load(path)?, false))
        } else {
            Ok((Self::create(path)?, true))
        }
    }

    /// The default key file location: `$SNAPCRYPT_KEY_FILE`, else
    /// `$XDG_CONFIG_HOME/snapcrypt/key.json`, else `~/.config/snapcrypt/key.json`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("SNAPCRYPT_KEY_FILE") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("snapcrypt").join("key.json")
    }

    /// A key manager of the 32-byte `key` itself (fuzzing and tests: keys are otherwise only
    /// ever read from a key file).
    pub(crate) fn from_key(key: [u8; 32]) -> Self {
        Self {
            key_id: key_id_of(&key),
            key: Zeroizing::new(key),
        }
    }

    /// The master key's id, derived from the key (so it names this exact key).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn aead(&self) -> Result<LessSafeKey, KmsError> {
        UnboundKey::new(&AES_256_GCM, &self.key[..])
            .map(LessSafeKey::new)
            .map_err(|_| KmsError::Other("bad key length".into()))
    }
}

/// `local-` and 16 hex digits of a keyed hash of the key: names the key, reveals nothing.
/// A warning when a key file of one's own can be read or written by others. A file owned by
/// someone else (a Kubernetes Secret volume's files are root's, mode 0444 so that the agent's
/// non-root user can read them) is not the reader's to change, and gets none.
fn mode_warning(path: &Path, m: &fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = m.permissions().mode() & 0o777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    (mode & 0o077 != 0 && m.uid() == me).then(|| {
        format!(
            "key file {} has mode {mode:o}: others can read it; chmod 600 it (or give the Secret volume defaultMode 0400)",
            path.display()
        )
    })
}

fn key_id_of(key: &[u8; 32]) -> String {
    let h = blake3::derive_key("snapcrypt local master key id v1", key);
    format!("local-{}", hex::encode(&h[..8]))
}

fn wrap_aad(key_id: &str) -> Vec<u8> {
    [b"snapcrypt-wrap-v1:".as_slice(), key_id.as_bytes()].concat()
}

#[async_trait]
impl KeyManager for LocalKeyManager {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn active_key_id(&self) -> Result<String, KmsError> {
        Ok(self.key_id.clone())
    }

    async fn wrap(&self, plaintext: &[u8]) -> Result<WrappedKey, KmsError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KmsError::Other("no randomness".into()))?;
        let mut buf = plaintext.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(&self.key_id)),
                &mut buf,
            )
            .map_err(|_| KmsError::Other("wrap failed".into()))?;
        Ok(WrappedKey {
            kms: "local".into(),
            master_key_id: self.key_id.clone(),
            algorithm: WRAP_ALGORITHM.into(),
            ciphertext: buf,
            iv: Some(nonce.to_vec()),
            tag: None,
        })
    }

    async fn master_key_state(&self, id: &str) -> String {
        if id == self.key_id {
            "Active".into()
        } else {
            "unknown (not this key file)".into()
        }
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<SecretBytes, KmsError> {
        if wrapped.kms != "local" || wrapped.master_key_id != self.key_id {
            return Err(KmsError::UnknownKey {
                key_id: self.key_id.clone(),
                kms: "local key file".into(),
                wrapped_by: format!("{} key {}", wrapped.kms, wrapped.master_key_id),
            });
        }
        let failed = || KmsError::UnwrapFailed {
            key_id: wrapped.master_key_id.clone(),
            kms: "local key file".into(),
        };
        let iv = wrapped.iv.as_deref().ok_or_else(failed)?;
        let nonce = Nonce::try_assume_unique_for_key(iv).map_err(|_| failed())?;
        let mut buf = Zeroizing::new(wrapped.ciphertext.clone());
        let len = self
            .aead()?
            .open_in_place(nonce, Aad::from(wrap_aad(&self.key_id)), &mut buf)
            .map_err(|_| failed())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wrap_unwrap_round_trip_and_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/key.json");
        let (km, created) = LocalKeyManager::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let wrapped = km.wrap(b"0123456789abcdef0123456789abcdef").await.unwrap();
        assert_ne!(
            wrapped.ciphertext[..32],
            b"0123456789abcdef0123456789abcdef"[..]
        );
        let again = LocalKeyManager::load(&path).unwrap();
        assert_eq!(
            &again.unwrap(&wrapped).await.unwrap()[..],
            b"0123456789abcdef0123456789abcdef"
        );
        let other = LocalKeyManager::create(&dir.path().join("other.json")).unwrap();
        assert!(matches!(
            other.unwrap(&wrapped).await,
            Err(KmsError::UnknownKey { .. })
        ));
        let mut tampered = wrapped.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(matches!(
            km.unwrap(&tampered).await,
            Err(KmsError::UnwrapFailed { .. })
        ));
    }

    #[test]
    fn rejects_bad_key_files() {
        assert!(
            LocalKeyManager::parse("hello")
                .unwrap_err()
                .contains("not a snapcrypt key file")
        );
        let short = r#"{"format":"snapcrypt-local-key/v1","key_id":"local-0","key":"AAAA"}"#;
        assert!(
            LocalKeyManager::parse(short)
                .unwrap_err()
                .contains("expected 32")
        );
    }
}
