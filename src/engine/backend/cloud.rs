//! The clients of repositories in object stores (S3, Google Cloud Storage, Azure Blob
//! Storage), all object_store's, with credentials from each store's usual environment
//! variables and files. A store with no credential source configured is refused with what to
//! set, rather than left to fall back on a metadata service whose error names that service
//! (use `SNAPCRYPT_AMBIENT_CREDENTIALS=1` for the machine's or pod's own identity: an EC2 or
//! IRSA role, GKE Workload Identity, an AKS managed identity).

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{ClientConfigKey, ObjectStore};

use super::location::{Location, S3Options, StoreKind};
use super::{BackendError, retry_config};

fn set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|x| !x.is_empty())
}

/// Use the identity the environment gives (instance metadata, a pod's workload identity).
fn ambient_allowed() -> bool {
    set("SNAPCRYPT_AMBIENT_CREDENTIALS") || set("SNAPCRYPT_S3_INSTANCE_CREDENTIALS")
}

/// Is some S3 credential source configured besides instance metadata?
fn s3_credentials_configured(s3: &S3Options) -> bool {
    (s3.access_key_id.is_some() && s3.secret_access_key.is_some())
        || (set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY"))
        || set("AWS_WEB_IDENTITY_TOKEN_FILE")
        || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || ambient_allowed()
}

/// Is some GCS credential source configured besides the metadata server? The gcloud
/// application-default file counts when it exists.
fn gcs_credentials_configured() -> bool {
    let adc = std::env::var_os("HOME").map(|h| {
        std::path::Path::new(&h).join(".config/gcloud/application_default_credentials.json")
    });
    [
        "GOOGLE_SERVICE_ACCOUNT",
        "GOOGLE_SERVICE_ACCOUNT_PATH",
        "GOOGLE_SERVICE_ACCOUNT_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_BEARER_TOKEN",
        "SERVICE_ACCOUNT",
    ]
    .iter()
    .any(|v| set(v))
        || adc.is_some_and(|p| p.is_file())
        || ambient_allowed()
}

/// Is some Azure credential source configured besides the managed identity endpoint? A
/// federated token file is what AKS Workload Identity injects into a pod.
fn azure_credentials_configured() -> bool {
    [
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_SAS_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_TOKEN",
        "AZURE_CLIENT_SECRET",
        "AZURE_STORAGE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_STORAGE_USE_EMULATOR",
        "AZURE_USE_AZURE_CLI",
    ]
    .iter()
    .any(|v| set(v))
        || ambient_allowed()
}

/// What to set for each store, when nothing is.
fn no_credentials(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::S3 => {
            "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the job's credentialsSecret (or SNAPCRYPT_S3_INSTANCE_CREDENTIALS=1 to use the instance's role)"
        }
        StoreKind::Gcs => {
            "no GCS credentials: set GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT) to a service-account key file, or the job's credentialsSecret (or SNAPCRYPT_AMBIENT_CREDENTIALS=1 to use the metadata server: GKE Workload Identity)"
        }
        StoreKind::Azure => {
            "no Azure credentials: set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN or AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/AZURE_TENANT_ID, or the job's credentialsSecret (or SNAPCRYPT_AMBIENT_CREDENTIALS=1 for a managed identity; AKS Workload Identity sets AZURE_FEDERATED_TOKEN_FILE)"
        }
    }
}

/// The store of a remote location, under its prefix.
pub(super) fn open_remote(
    location: &Location,
    s3: &S3Options,
) -> Result<Arc<dyn ObjectStore>, BackendError> {
    let Location::Remote {
        kind,
        bucket,
        prefix,
    } = location
    else {
        return Err(BackendError::BadLocation {
            repo: location.to_string(),
            reason: "not an object store".into(),
        });
    };
    let bad = |reason: String| BackendError::BadLocation {
        repo: location.to_string(),
        reason,
    };
    let configured = match kind {
        StoreKind::S3 => s3_credentials_configured(s3),
        StoreKind::Gcs => gcs_credentials_configured(),
        StoreKind::Azure => azure_credentials_configured(),
    };
    if !configured {
        return Err(bad(no_credentials(*kind).into()));
    }
    let store: Arc<dyn ObjectStore> = match kind {
        StoreKind::S3 => Arc::new(
            s3_builder(bucket, s3)
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        StoreKind::Gcs => Arc::new(
            gcs_builder(bucket)
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        StoreKind::Azure => Arc::new(
            azure_builder(bucket)
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
    };
    Ok(if prefix.is_empty() {
        store
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(
            store,
            prefix.as_str(),
        ))
    })
}

fn s3_builder(bucket: &str, s3: &S3Options) -> AmazonS3Builder {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry_config());
    if let Some(e) = s3
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
    {
        b = b.with_allow_http(e.starts_with("http://")).with_endpoint(e);
    }
    if let Some(r) = &s3.region {
        b = b.with_region(r);
    }
    if s3.path_style {
        b = b.with_virtual_hosted_style_request(false);
    }
    if let Some(k) = &s3.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &s3.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    b
}

/// GOOGLE_* variables as object_store reads them, plus GOOGLE_APPLICATION_CREDENTIALS (the
/// SDKs' convention, read by object_store too). `GOOGLE_BASE_URL` points it at another
/// endpoint (an emulator, a private or sovereign endpoint); a plain `http://` one is allowed.
fn gcs_builder(bucket: &str) -> GoogleCloudStorageBuilder {
    let mut b = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry_config());
    if std::env::var("GOOGLE_BASE_URL").is_ok_and(|url| url.starts_with("http://")) {
        // One client setting added, the others the environment gave kept (a proxy, timeouts).
        b = b.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
    b
}

/// AZURE_* variables as object_store reads them: the account (`AZURE_STORAGE_ACCOUNT_NAME`),
/// a key, SAS token, client secret or federated token, `AZURE_STORAGE_ENDPOINT` for another
/// cloud (a sovereign cloud's blob endpoint), and `AZURE_STORAGE_USE_EMULATOR` with
/// `AZURITE_BLOB_STORAGE_URL` for Azurite.
fn azure_builder(container: &str) -> MicrosoftAzureBuilder {
    let mut b = MicrosoftAzureBuilder::from_env()
        .with_container_name(container)
        .with_retry(retry_config());
    if std::env::var("AZURE_STORAGE_ENDPOINT").is_ok_and(|url| url.starts_with("http://")) {
        b = b.with_config(AzureConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
    b
}
