//! Which key manager opens the repository: the local key file (the default) or a KMIP server
//! (`--kmip-*`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::CliError;
use super::kmip_args::KmipArgs;
use crate::kms::KeyManager;
use crate::kms::local::LocalKeyManager;

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Local master key file (default: $SNAPCRYPT_KEY_FILE, else ~/.config/snapcrypt/key.json;
    /// `backup` creates it, mode 0600, on first use). Never stored in the repository. Not used
    /// when --kmip-endpoint is given.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    #[command(flatten)]
    pub kmip: KmipArgs,
}

impl KeyArgs {
    /// The key manager these flags name: KMIP if --kmip-endpoint is given, else the local key
    /// file. With `create`, a missing local key file is created (and reported once on stderr).
    pub async fn key_manager(&self, create: bool) -> Result<Arc<dyn KeyManager>, CliError> {
        if self.kmip.configured() {
            if self.key_file.is_some() {
                return Err("give either --key-file or --kmip-endpoint, not both".into());
            }
            return Ok(Arc::new(self.kmip.key_manager().await?));
        }
        self.local_key(create)
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
