//! Where a BackupJob's repository lives: a PersistentVolumeClaim, or a bucket in S3, Google
//! Cloud Storage or Azure Blob Storage.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Where the repository lives: exactly one of `pvc`, `s3`, `gcs` and `azure`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.pvc), has(self.s3), has(self.gcs), has(self.azure)].filter(x, x).size() == 1").message("destination: set exactly one of pvc, s3, gcs or azure"))]
pub struct Destination {
    /// A PersistentVolumeClaim in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcDestination>,
    /// An S3 or S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// A Google Cloud Storage bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsDestination>,
    /// An Azure Blob Storage container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureDestination>,
}

impl Destination {
    /// How many destinations are set (the schema allows exactly one).
    pub fn count(&self) -> usize {
        [
            self.pvc.is_some(),
            self.s3.is_some(),
            self.gcs.is_some(),
            self.azure.is_some(),
        ]
        .into_iter()
        .filter(|x| *x)
        .count()
    }
}

/// A repository on a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcDestination {
    /// Name of the PersistentVolumeClaim.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory inside the claim that holds the repository, relative, without `.` segments.
    #[serde(default = "default_repo_path")]
    #[schemars(pattern(r"^[A-Za-z0-9_\-][A-Za-z0-9._\-]*(/[A-Za-z0-9_\-][A-Za-z0-9._\-]*)*$"))]
    pub path: String,
}

fn default_repo_path() -> String {
    "snapcrypt".to_string()
}

/// A repository in an S3 bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.endpoint) || !self.endpoint.startsWith('http://') || (has(self.insecure) && self.insecure)").message("s3.endpoint: http:// sends the credentials unencrypted: use https://, or set insecure: true for an emulator or a trusted network"))]
pub struct S3Destination {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63), pattern(r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix of the repository inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Endpoint URL for S3-compatible stores (for example https://minio.example:9000); absent
    /// means AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^https?://"))]
    pub endpoint: Option<String>,
    /// Region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_SESSION_TOKEN`).
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
    /// Use path-style URLs (endpoint/bucket/key), as most S3-compatible stores need.
    #[serde(default)]
    pub path_style: bool,
    /// Allow an `http://` endpoint: credentials and data then cross the network unencrypted
    /// (an emulator, a store on a trusted network only). Without it an `http://` endpoint is
    /// refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// S3 Object Lock: every write-once object of the repository (the config, key records,
    /// packs, index objects, snapshots) is written locked for `days`, each retention pass
    /// extends what kept snapshots still need, and prune never deletes what is locked. The
    /// bucket must have been created with Object Lock enabled; a run on a bucket without it
    /// fails before writing anything, saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLockSpec>,
}

/// How a repository's objects are locked (S3 Object Lock).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectLockSpec {
    /// Compliance: nobody (not even the account's root) can delete a locked version or
    /// shorten its retention until it ends. Governance: principals allowed
    /// s3:BypassGovernanceRetention can.
    pub mode: ObjectLockMode,
    /// How long each write, and each extension, keeps an object, in days.
    #[schemars(range(min = 1, max = 36500))]
    pub days: u32,
}

/// S3 Object Lock's retention modes.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectLockMode {
    Compliance,
    Governance,
}

impl ObjectLockSpec {
    /// As the agent's `--s3-object-lock` takes it.
    pub fn as_arg(&self) -> String {
        let mode = match self.mode {
            ObjectLockMode::Compliance => "compliance",
            ObjectLockMode::Governance => "governance",
        };
        format!("{mode}:{}d", self.days)
    }
}

fn default_region() -> String {
    "us-east-1".to_string()
}

/// A repository in a Google Cloud Storage bucket. Credentials: a service-account key file
/// from `credentialsSecret`, or else the pod's own identity (GKE Workload Identity, with
/// `workloadIdentity` naming the Google service account).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.credentialsSecret) && has(self.workloadIdentity))").message("gcs: set at most one of credentialsSecret or workloadIdentity"))]
#[x_kube(validation = Rule::new("!has(self.endpoint) || !self.endpoint.startsWith('http://') || (has(self.insecure) && self.insecure)").message("gcs.endpoint: http:// sends the credentials unencrypted: use https://, or set insecure: true for an emulator or a trusted network"))]
#[x_kube(validation = Rule::new("!has(self.endpoint) || has(self.credentialsSecret)").message("gcs.endpoint: with the pod's own identity (no credentialsSecret) its token would be sent to this endpoint: name a credentialsSecret, or remove the endpoint"))]
pub struct GcsDestination {
    /// Bucket name.
    #[schemars(
        length(min = 3, max = 222),
        pattern(r"^[a-z0-9][a-z0-9._\-]*[a-z0-9]$")
    )]
    pub bucket: String,
    /// Object name prefix of the repository inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// Endpoint URL (a private or regional endpoint, an emulator); absent means
    /// https://storage.googleapis.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^https?://"), length(max = 512))]
    pub endpoint: Option<String>,
    /// Secret whose key `service-account.json` holds a service-account key file; mounted as
    /// that file (the SDKs' convention), never put in the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    /// GKE Workload Identity: the agent's ServiceAccount is annotated with this Google service
    /// account (`iam.gke.io/gcp-service-account`), and the agent asks the metadata server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<GcsWorkloadIdentity>,
    /// Allow an `http://` endpoint: credentials and data then cross the network unencrypted
    /// (an emulator, a store on a trusted network only). Without it an `http://` endpoint is
    /// refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// The Google service account agent pods act as.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GcsWorkloadIdentity {
    /// Email of the Google service account, for example
    /// `backups@my-project.iam.gserviceaccount.com`.
    #[schemars(length(min = 3, max = 320), pattern(r"^[^@\s]+@[^@\s]+$"))]
    pub service_account: String,
}

/// A repository in an Azure Blob Storage container. Credentials: from `credentialsSecret`, or
/// else the pod's own identity (AKS Workload Identity, with `workloadIdentity` naming the
/// managed identity's client id).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.credentialsSecret) && has(self.workloadIdentity))").message("azure: set at most one of credentialsSecret or workloadIdentity"))]
#[x_kube(validation = Rule::new("!has(self.endpoint) || !self.endpoint.startsWith('http://') || (has(self.insecure) && self.insecure)").message("azure.endpoint: http:// sends the credentials unencrypted: use https://, or set insecure: true for an emulator or a trusted network"))]
#[x_kube(validation = Rule::new("!has(self.endpoint) || has(self.credentialsSecret)").message("azure.endpoint: with the pod's own identity (no credentialsSecret) its token would be sent to this endpoint: name a credentialsSecret, or remove the endpoint"))]
pub struct AzureDestination {
    /// Storage account name.
    #[schemars(length(min = 3, max = 24), pattern(r"^[a-z0-9]+$"))]
    pub account: String,
    /// Container name.
    #[schemars(length(min = 3, max = 63), pattern(r"^[a-z0-9]([a-z0-9]|-[a-z0-9])*$"))]
    pub container: String,
    /// Blob name prefix of the repository inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// The account's blob endpoint URL, for sovereign clouds (for example
    /// https://ACCOUNT.blob.core.chinacloudapi.cn) or an emulator; absent means
    /// https://ACCOUNT.blob.core.windows.net.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^https?://"), length(max = 512))]
    pub endpoint: Option<String>,
    /// Secret with one of: `AZURE_STORAGE_ACCOUNT_KEY`; `AZURE_STORAGE_SAS_TOKEN`; or
    /// `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` and `AZURE_TENANT_ID` (a service principal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    /// AKS Workload Identity: the agent's ServiceAccount is annotated with this client id
    /// (`azure.workload.identity/client-id`) and its pods labelled
    /// `azure.workload.identity/use: "true"`, so the webhook injects a federated token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<AzureWorkloadIdentity>,
    /// Allow an `http://` endpoint: credentials and data then cross the network unencrypted
    /// (an emulator, a store on a trusted network only). Without it an `http://` endpoint is
    /// refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// The managed identity (or app registration) agent pods act as.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AzureWorkloadIdentity {
    /// Its client id (a GUID).
    #[schemars(pattern(
        r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub client_id: String,
}
