//! The clients of repositories in object stores (S3, Google Cloud Storage, Azure Blob
//! Storage), all object_store's, with credentials from each store's usual environment
//! variables and files. A store with no credential source configured is refused with what to
//! set, rather than left to fall back on a metadata service whose error names that service
//! (use `SNAPCRYPT_AMBIENT_CREDENTIALS=1` for the machine's or pod's own identity: an EC2 or
//! IRSA role, GKE Workload Identity, an AKS managed identity).

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{ClientConfigKey, ObjectStore};

use super::location::{Location, StoreKind, StoreOptions};
use super::object_lock::LockClient;
use super::{BackendError, retry_config};

/// The environment one store's client reads: the process's, or (for a copy's target) only the
/// variables under a prefix, with the prefix removed. object_store's `from_env` builders read
/// the process's environment alone, so the builders here apply the same variables from this.
struct StoreEnv(Vec<(String, String)>);

impl StoreEnv {
    fn of(prefix: Option<&str>) -> StoreEnv {
        let all: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        if let Some(p) = prefix.filter(|p| !p.is_empty()) {
            let scoped: Vec<(String, String)> = all
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(p)?.to_string(), v.clone())))
                .collect();
            if !scoped.is_empty() {
                return StoreEnv(scoped);
            }
        }
        StoreEnv(all)
    }

    fn get(&self, var: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.as_str())
    }

    fn set(&self, var: &str) -> bool {
        self.get(var).is_some_and(|x| !x.is_empty())
    }

    /// The variables whose names start with `family` (`AWS_`), names lowercased as
    /// object_store's config keys are.
    fn family<'a>(&'a self, family: &'a str) -> impl Iterator<Item = (String, &'a str)> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.starts_with(family))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
    }

    /// `builder` with every variable of `family` that names one of its config keys (`K`),
    /// as object_store's `from_env` applies them.
    fn apply<B, K: std::str::FromStr>(
        &self,
        family: &str,
        builder: B,
        with: impl Fn(B, K, &str) -> B,
    ) -> B {
        self.family(family)
            .filter_map(|(key, value)| Some((key.parse::<K>().ok()?, value)))
            .fold(builder, |b, (key, value)| with(b, key, value))
    }

    /// Use the identity the environment gives (instance metadata, a pod's workload identity).
    fn ambient_allowed(&self) -> bool {
        self.set("SNAPCRYPT_AMBIENT_CREDENTIALS") || self.set("SNAPCRYPT_S3_INSTANCE_CREDENTIALS")
    }

    /// Is some S3 credential source configured besides instance metadata?
    fn s3_configured(&self, s3: &StoreOptions) -> bool {
        (s3.access_key_id.is_some() && s3.secret_access_key.is_some())
            || (self.set("AWS_ACCESS_KEY_ID") && self.set("AWS_SECRET_ACCESS_KEY"))
            || self.set("AWS_WEB_IDENTITY_TOKEN_FILE")
            || self.set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            || self.set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            || self.ambient_allowed()
    }

    /// Is some GCS credential source configured besides the metadata server? The gcloud
    /// application-default file counts when it exists.
    fn gcs_configured(&self) -> bool {
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
        .any(|v| self.set(v))
            || adc.is_some_and(|p| p.is_file())
            || self.ambient_allowed()
    }

    /// Is some Azure credential source configured besides the managed identity endpoint? A
    /// federated token file is what AKS Workload Identity injects into a pod.
    fn azure_configured(&self) -> bool {
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
        .any(|v| self.set(v))
            || self.ambient_allowed()
    }
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
    s3: &StoreOptions,
) -> Result<(Arc<dyn ObjectStore>, Option<LockClient>), BackendError> {
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
    let env = StoreEnv::of(s3.credentials_env.as_deref());
    let configured = match kind {
        StoreKind::S3 => env.s3_configured(s3),
        StoreKind::Gcs => env.gcs_configured(),
        StoreKind::Azure => env.azure_configured(),
    };
    if !configured {
        return Err(bad(no_credentials(*kind).into()));
    }
    if s3.object_lock.is_some() && *kind != StoreKind::S3 {
        return Err(bad(
            "object lock is implemented for S3 repositories only (S3 Object Lock); remove it for this store".into(),
        ));
    }
    let mut lock = None;
    let store: Arc<dyn ObjectStore> = match kind {
        StoreKind::S3 => {
            let builder = s3_builder(&env, bucket, s3);
            let client = Arc::new(builder.clone().build().map_err(|e| bad(e.to_string()))?);
            // Also without a lock of its own: the client asks the bucket whether it has
            // Object Lock before a prune deletes anything (Backend::check_no_unknown_lock).
            let region = builder
                .get_config_value(&AmazonS3ConfigKey::Region)
                .unwrap_or_else(|| "us-east-1".into());
            lock = Some(LockClient::new(
                client.clone(),
                bucket_url(&builder, bucket),
                prefix.clone(),
                region,
                s3.object_lock,
            )?);
            client
        }
        StoreKind::Gcs => Arc::new(
            gcs_builder(&env, bucket)
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        StoreKind::Azure => Arc::new(
            azure_builder(&env, bucket)
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
    };
    let store = if prefix.is_empty() {
        store
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(
            store,
            prefix.as_str(),
        ))
    };
    Ok((store, lock))
}

/// The URL of `bucket` as the S3 client built from `b` addresses it: path style under the
/// endpoint, the endpoint itself with virtual-hosted style, or AWS's own.
fn bucket_url(b: &AmazonS3Builder, bucket: &str) -> String {
    let virtual_hosted = b
        .get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest)
        .is_some_and(|v| v == "true");
    let region = b
        .get_config_value(&AmazonS3ConfigKey::Region)
        .unwrap_or_else(|| "us-east-1".into());
    match b.get_config_value(&AmazonS3ConfigKey::Endpoint) {
        Some(ep) if virtual_hosted => ep.trim_end_matches('/').to_string(),
        Some(ep) => format!("{}/{bucket}", ep.trim_end_matches('/')),
        None if virtual_hosted => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
    }
}

fn s3_builder(env: &StoreEnv, bucket: &str, s3: &StoreOptions) -> AmazonS3Builder {
    let mut b = AmazonS3Builder::new();
    b = env.apply("AWS_", b, |b, key, value| b.with_config(key, value));
    // The repository deletes one object at a time: a plain DELETE of the key, which every
    // S3 implementation has and which a policy scoped to key prefixes (least privilege:
    // docs/OPERATIONS.md) authorizes per key, where some judge a bulk DeleteObjects by the
    // bucket alone.
    let mut b = b
        .with_bucket_name(bucket)
        .with_retry(retry_config())
        .with_disable_bulk_delete(true);
    if let Some(e) = s3
        .endpoint
        .clone()
        .or_else(|| env.get("AWS_ENDPOINT_URL").map(str::to_string))
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
fn gcs_builder(env: &StoreEnv, bucket: &str) -> GoogleCloudStorageBuilder {
    let mut b = GoogleCloudStorageBuilder::new();
    if let Some(path) = env.get("SERVICE_ACCOUNT") {
        b = b.with_service_account_path(path);
    }
    b = env.apply("GOOGLE_", b, |b, key, value| b.with_config(key, value));
    let mut b = b.with_bucket_name(bucket).with_retry(retry_config());
    if env
        .get("GOOGLE_BASE_URL")
        .is_some_and(|url| url.starts_with("http://"))
    {
        // One client setting added, the others the environment gave kept (a proxy, timeouts).
        b = b.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
    b
}

/// AZURE_* variables as object_store reads them: the account (`AZURE_STORAGE_ACCOUNT_NAME`),
/// a key, SAS token, client secret or federated token, `AZURE_STORAGE_ENDPOINT` for another
/// cloud (a sovereign cloud's blob endpoint), and `AZURE_STORAGE_USE_EMULATOR` with
/// `AZURITE_BLOB_STORAGE_URL` for Azurite.
fn azure_builder(env: &StoreEnv, container: &str) -> MicrosoftAzureBuilder {
    let mut b = MicrosoftAzureBuilder::new();
    // The managed-identity endpoint is the machine's, whichever store asks it.
    if let Ok(endpoint) = std::env::var("IDENTITY_ENDPOINT") {
        b = b.with_msi_endpoint(endpoint);
    }
    b = env.apply("AZURE_", b, |b, key, value| b.with_config(key, value));
    let mut b = b.with_container_name(container).with_retry(retry_config());
    if env
        .get("AZURE_STORAGE_ENDPOINT")
        .is_some_and(|url| url.starts_with("http://"))
    {
        b = b.with_config(AzureConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
    b
}
