//! Which key manager opens the repository: the local key file (the default) or a KMIP server.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::CliError;
use super::repo_args::RepoArgs;
use crate::kms::KeyManager;
use crate::kms::local::LocalKeyManager;

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Local master key file (default: $SNAPCRYPT_KEY_FILE, else ~/.config/snapcrypt/key.json;
    /// `backup` creates it, mode 0600, on first use). Never stored in the repository.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// The key manager these flags name. With `create`, a missing local key file is created
    /// (and reported once on stderr).
    pub async fn key_manager(
        &self,
        _repo: &RepoArgs,
        create: bool,
    ) -> Result<Arc<dyn KeyManager>, CliError> {
        self.local_key(create)
    }

    /// The state of master key `id` as its key manager reports it (for KMIP: the server's
    /// State attribute); `active` is the key new data keys are wrapped under.
    pub async fn key_state(
        &self,
        km: &dyn KeyManager,
        kms: &str,
        id: &str,
        active: Option<&str>,
    ) -> String {
        if kms != km.kind() {
            return format!("unknown (not a {} key)", km.kind());
        }
        if active == Some(id) {
            return "Active (in use)".into();
        }
        if kms == "local" {
            return "unknown (not this key file)".into();
        }
        "Superseded".into()
    }

    /// The local key manager.
    pub fn local_key(&self, create: bool) -> Result<Arc<dyn KeyManager>, CliError> {
        let path = self
            .key_file
            .clone()
            .unwrap_or_else(LocalKeyManager::default_path);
        if create {
            let (km, created) = LocalKeyManager::load_or_create(&path)?;
            if created {
                eprintln!(
                    "snapcrypt: created a new master key file {} ({}); keep a copy somewhere safe: without it the repository cannot be read",
                    path.display(),
                    km.key_id()
                );
            }
            Ok(Arc::new(km))
        } else if !path.exists() {
            Err(format!(
                "key file {} does not exist: pass --key-file with the key the repository was created with (or the KMIP flags)",
                path.display()
            )
            .into())
        } else {
            Ok(Arc::new(LocalKeyManager::load(&path)?))
        }
    }
}
