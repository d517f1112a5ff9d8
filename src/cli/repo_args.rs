//! Flags every repository command shares: where the repository is and which key opens it.

use clap::Args;

use super::CliError;
use crate::engine::backend::{Backend, Location, StoreOptions};

#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// The repository: a directory path, file://PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX
    /// (Google Cloud Storage) or az://CONTAINER/PREFIX (Azure Blob Storage, the account from
    /// $AZURE_STORAGE_ACCOUNT_NAME). Credentials come from each store's usual environment
    /// variables and files (see README).
    #[arg(long, env = "SNAPCRYPT_REPO", value_name = "REPO")]
    pub repo: String,

    #[command(flatten)]
    pub s3: S3Args,

    /// The prefix of the environment variables this store's credentials are read from (a
    /// copy's target: `SNAPCRYPT_TO_`); none: the usual variables.
    #[arg(skip)]
    pub credentials_env: Option<String>,
}

/// How an S3-compatible store is reached (the repository's, or for `copy` the source's).
#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// S3 endpoint URL for S3-compatible stores (default: $AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region (default: $AWS_REGION).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Use path-style S3 URLs (endpoint/bucket/key), as most S3-compatible stores need.
    #[arg(long)]
    pub s3_path_style: bool,

    /// S3 Object Lock: write the repository's write-once objects (config, keys, packs, index
    /// objects, snapshots) locked for DAYS in MODE (compliance or governance), and have
    /// prune keep what is locked and extend what kept snapshots need. The bucket must have
    /// Object Lock enabled. Give it to every command that writes the repository.
    #[arg(long, value_name = "MODE:DAYSd", value_parser = crate::engine::backend::ObjectLock::parse)]
    pub s3_object_lock: Option<crate::engine::backend::ObjectLock>,
}

impl RepoArgs {
    pub fn location(&self) -> Result<Location, CliError> {
        Ok(Location::parse(&self.repo)?)
    }

    /// Open the store (creating a local directory only if `create`).
    pub fn backend(&self, create: bool) -> Result<Backend, CliError> {
        let s3 = StoreOptions {
            endpoint: self.s3.s3_endpoint.clone(),
            region: self.s3.s3_region.clone(),
            path_style: self.s3.s3_path_style,
            access_key_id: None,
            secret_access_key: None,
            credentials_env: self.credentials_env.clone(),
            object_lock: self.s3.s3_object_lock,
        };
        Ok(Backend::open(&self.location()?, &s3, create)?)
    }
}
