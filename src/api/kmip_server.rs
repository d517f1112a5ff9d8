//! KmipServer: a KMIP key server, how to reach it, and the master key snapcrypt keeps there.
// kube-derive repeats `printcolumn(name, type_, ...)` per column; clippy reads that as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A KMIP key server and the master key that wraps the data keys of the BackupJobs that use it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "snapcrypt.dev",
    version = "v1alpha1",
    kind = "KmipServer",
    namespaced,
    status = "KmipServerStatus",
    shortname = "kmip",
    category = "snapcrypt",
    doc = "A KMIP key server and the master key that wraps snapcrypt's data keys.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Active Key",
        type_ = "string",
        json_path = ".status.activeKeyId"
    ),
    printcolumn(
        name = "Last Rotation",
        type_ = "date",
        json_path = ".status.lastRotationTime"
    ),
    printcolumn(
        name = "Next Rotation",
        // A time to come: kubectl prints a `date` column as an age, `<invalid>` for one in
        // the future (#29), so the timestamp is printed as it is.
        type_ = "string",
        json_path = ".status.nextRotationTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.wrapping == 'localKeyWrap' || self.protocolVersion == '1.4'").message("protocolVersion: server-side wrapping (wrapping: serverEncrypt) needs KMIP 1.4, the first version with AES-GCM tags; use protocolVersion 1.4 or wrapping localKeyWrap"))]
pub struct KmipServerSpec {
    /// KMIP endpoints as host:port, tried in this order (the first that answers is used).
    #[schemars(
        length(min = 1, max = 16),
        inner(pattern(r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$"))
    )]
    pub endpoints: Vec<String>,
    /// Mutual TLS settings for talking to the server.
    pub tls: KmipTls,
    /// KMIP protocol version to speak. 1.4 by default: server-side wrapping uses AES-GCM, whose
    /// authentication tag KMIP carries only from 1.4 on. With 1.0-1.3 set `wrapping:
    /// localKeyWrap`.
    #[serde(default)]
    pub protocol_version: KmipProtocolVersion,
    /// The master key: an existing key id, or a key snapcrypt creates under a name.
    pub master_key: MasterKeySource,
    /// How data keys are wrapped under the master key.
    #[serde(default)]
    pub wrapping: WrappingMode,
    /// When and how the master key is rotated; absent means never automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationPolicy>,
    /// How often the master key's state is polled, as a duration such as 30s, 5m or 1h.
    #[serde(default = "default_poll_interval")]
    #[schemars(pattern(r"^[0-9]+(s|m|h|d)$"))]
    pub poll_interval: String,
    /// Seconds to wait for a TCP and TLS connection to one endpoint before trying the next.
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub connect_timeout_seconds: u32,
}

fn default_poll_interval() -> String {
    "5m".to_string()
}

fn default_connect_timeout() -> u32 {
    10
}

/// Mutual TLS settings for a KMIP server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KmipTls {
    /// Secret holding the client certificate (`tls.crt`), its private key (`tls.key`) and the
    /// CA that signed the server's certificate (`ca.crt`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Name expected in the server's certificate; defaults to the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// KMIP protocol versions snapcrypt speaks.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KmipProtocolVersion {
    /// KMIP 1.0 (needs `wrapping: localKeyWrap`).
    #[serde(rename = "1.0")]
    V1_0,
    /// KMIP 1.1 (needs `wrapping: localKeyWrap`).
    #[serde(rename = "1.1")]
    V1_1,
    /// KMIP 1.2 (no AES-GCM tags: needs `wrapping: localKeyWrap`).
    #[serde(rename = "1.2")]
    V1_2,
    /// KMIP 1.3 (no AES-GCM tags: needs `wrapping: localKeyWrap`).
    #[serde(rename = "1.3")]
    V1_3,
    /// KMIP 1.4, the default.
    #[default]
    #[serde(rename = "1.4")]
    V1_4,
}

impl KmipProtocolVersion {
    /// As written in the spec and on the command line (`1.4`).
    pub fn as_str(self) -> &'static str {
        match self {
            KmipProtocolVersion::V1_0 => "1.0",
            KmipProtocolVersion::V1_1 => "1.1",
            KmipProtocolVersion::V1_2 => "1.2",
            KmipProtocolVersion::V1_3 => "1.3",
            KmipProtocolVersion::V1_4 => "1.4",
        }
    }
}

/// Where the master key comes from: exactly one of `keyId` and `create`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.keyId) != has(self.create)").message("masterKey: set exactly one of keyId (an existing key) or create (a new key)"))]
pub struct MasterKeySource {
    /// Unique identifier of an existing, active AES-256 key on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_id: Option<String>,
    /// Create a new AES-256 master key with this name if none with the name exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<CreateKey>,
}

/// A master key snapcrypt creates on the server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreateKey {
    /// The KMIP Name attribute given to the key; rotated keys get a `-N` suffix.
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9._\-]+$"))]
    pub name: String,
}

/// How data keys are wrapped under the master key.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WrappingMode {
    /// The KMIP server encrypts and decrypts data keys (KMIP Encrypt/Decrypt, AES-GCM): the
    /// master key never leaves the server. The default.
    #[default]
    ServerEncrypt,
    /// WEAKER: the master key is fetched with Get and data keys are wrapped locally with AES key
    /// wrap (RFC 5649). Only for servers without Encrypt (KMIP 1.0/1.1).
    LocalKeyWrap,
}

/// When and how the master key is rotated.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicy {
    /// Time between rotations, as a duration such as 720h or 90d.
    #[schemars(pattern(r"^[0-9]+(m|h|d)$"))]
    pub period: String,
    /// Rewrap the data keys of existing snapshots under the new key (metadata only; no data is
    /// rewritten). When false, old snapshots keep depending on the key they were taken under.
    #[serde(default = "default_true")]
    pub rewrap_existing: bool,
}

fn default_true() -> bool {
    true
}

/// What snapcrypt last saw of the server and its keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KmipServerStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reachable, Authenticated, KeyActive and Rotating.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What the server says about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<KmipServerIdentity>,
    /// Unique identifier of the master key new data keys are wrapped under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    /// Every master key snapcrypt has used, with the snapshots that still need it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<MasterKeyStatus>,
    /// When the master key was last rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// When the rotation policy will next rotate the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
    /// Progress of rewrapping data keys after the last rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrap: Option<RewrapProgress>,
}

/// What a KMIP server reports about itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KmipServerIdentity {
    /// The endpoint that answered.
    pub endpoint: String,
    /// Vendor identification from Query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Protocol versions from DiscoverVersions, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocol_versions: Vec<String>,
    /// The protocol version in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negotiated_version: Option<String>,
}

/// One master key and who depends on it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MasterKeyStatus {
    /// The key's unique identifier on the server.
    pub id: String,
    /// The key's KMIP Name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// KMIP state as the server reports it (PreActive, Active, Deactivated, Compromised,
    /// Destroyed), or Superseded once a newer key is active and this one is kept for reading.
    #[schemars(with = "String")]
    pub state: MasterKeyState,
    /// When the key was created or first used by snapcrypt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// When a newer key replaced this one for new data keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<Time>,
    /// Kept snapshots whose data keys are wrapped under this key. A key with dependants is never
    /// revoked or destroyed by snapcrypt.
    pub dependent_snapshots: u64,
}

/// A master key's state: KMIP's State attribute as the server reports it, or Superseded (ours:
/// a newer key is active and this one is kept for reading). Serialised as those names (the
/// status schema keeps a string).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MasterKeyState {
    PreActive,
    Active,
    Deactivated,
    Compromised,
    Destroyed,
    DestroyedCompromised,
    Superseded,
    /// Not read yet, or a name this version does not know (written by another version).
    #[default]
    #[serde(other)]
    Unknown,
}

impl MasterKeyState {
    /// Whether the key may wrap new data keys, or will once activated.
    pub fn usable(self) -> bool {
        matches!(self, MasterKeyState::Active | MasterKeyState::PreActive)
    }
}

impl std::fmt::Display for MasterKeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Progress of rewrapping data keys under a new master key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RewrapProgress {
    /// The key data keys are being rewrapped under.
    pub target_key_id: String,
    /// Repositories finished.
    pub repositories_done: u32,
    /// Repositories to rewrap (one per BackupJob that references this server).
    pub repositories_total: u32,
    /// Data keys rewrapped so far.
    pub data_keys_done: u64,
    /// When the rewrap started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the rewrap finished; absent while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}
