//! BackupJob: what to back up, where to, under which key, how often and how long to keep it.
// kube-derive repeats `printcolumn(name, type_, ...)` per column; clippy reads that as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{LocalRef, Progress, SecretKeyRef};
pub use super::destination::{
    AzureDestination, Destination, GcsDestination, PvcDestination, S3Destination,
};
use super::verification::{RestoreTestRun, Verification, VerificationRun};

/// Encrypted snapshots of one MongoDB replica set's data volume, on a schedule or once.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "snapcrypt.dev",
    version = "v1alpha1",
    kind = "BackupJob",
    namespaced,
    status = "BackupJobStatus",
    shortname = "bj",
    category = "snapcrypt",
    doc = "Encrypted snapshots of one MongoDB replica set's data volume, on a schedule or once.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progressSummary"
    ),
    printcolumn(
        name = "Last Snapshot",
        type_ = "string",
        json_path = ".status.lastSnapshot"
    ),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(
        name = "Next Run",
        // A time to come: kubectl prints a `date` column as an age, `<invalid>` for one in
        // the future (#29), so the timestamp is printed as it is.
        type_ = "string",
        json_path = ".status.nextScheduleTime"
    ),
    printcolumn(name = "Key", type_ = "string", json_path = ".status.keyId"),
    printcolumn(
        name = "Restore Test",
        type_ = "string",
        json_path = ".status.lastRestoreTest.result"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct BackupJobSpec {
    /// The MongoDB replica set whose data volume is copied.
    pub source: MongoSource,
    /// Where the encrypted repository lives: exactly one of `pvc`, `s3`, `gcs` and `azure`.
    pub destination: Destination,
    /// Which key protects the data: exactly one of `kmipServerRef` and `localKeySecret`.
    pub encryption: Encryption,
    /// When to run; absent means a single run as soon as the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Stop creating scheduled snapshots; a running one finishes.
    #[serde(default)]
    pub suspend: bool,
    /// Which snapshots to keep; absent keeps all of them. Applied by each snapshot pod after a
    /// successful backup to the snapshots this job's schedule made (repository tags
    /// backupjob=NAMESPACE/NAME and trigger=schedule), never to the one just taken nor to
    /// on-demand runs (Snapshots a user created); the forgotten ones' Snapshot objects are
    /// deleted. The outcome is the Snapshot's RetentionApplied condition; with
    /// `retention.credentialsSecret` the pass runs in a retention pod of its own instead, and
    /// its outcome is status.retention and the job's RetentionApplied condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Refuse a dbPath holding more files than this, before anything is written (MongoDB Cloud
    /// Manager refuses 100,000 or more by default).
    #[serde(default = "default_max_files")]
    #[schemars(range(min = 1, max = 100000000))]
    pub max_files: u64,
    /// Per-chunk compression: auto skips chunks that do not shrink.
    #[serde(default)]
    pub compression: Compression,
    /// Times a failed snapshot is retried before the run is given up (new Snapshot objects are
    /// not created for retries; the snapshot pod is restarted).
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: u32,
    /// CPU and memory for the snapshot pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where snapshot pods may run, beyond what the member decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Scheduled proof that the backups restore: reading the data, restore tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// What deleting this BackupJob does to the Snapshot objects its schedule made. Retain
    /// (the default): they stay, labelled snapcrypt.dev/orphaned=true with condition
    /// Orphaned, and a BackupJob of the same name applied again adopts them. Delete: they are
    /// deleted with the job (owner references). Either way the repository keeps every
    /// snapshot: deleting a custom resource never deletes backup data.
    #[serde(default)]
    pub snapshot_deletion_policy: SnapshotDeletionPolicy,
    /// The cluster this one takes the job's snapshots over from: the repository names the
    /// cluster that writes them (status.catalog.owner), and a BackupJob of the same namespace
    /// and name in another cluster only reads them (no backups, no retention) unless it names
    /// that cluster here. Only that cluster: once taken over, the old one, if it comes back,
    /// only reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub take_over_from: Option<String>,
    /// Second repositories the job's snapshots are copied into, each under its own master
    /// key, retention and schedule (3-2-1: a copy in another store, region or account).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub copies: Vec<super::copy::CopySpec>,
}

/// What deleting a BackupJob does to its Snapshot objects (never to the repository).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotDeletionPolicy {
    /// The Snapshots stay, marked orphaned; a re-applied job of the same name adopts them.
    #[default]
    Retain,
    /// The Snapshots are deleted with the job (the repository keeps the data).
    Delete,
}

/// Scheduling of the snapshot pods. A pod that mounts the member's data volume runs on the
/// member's node and gets the member pod's tolerations (database nodes are often tainted);
/// one that reads a claim restored from a VolumeSnapshot goes where the scheduler puts it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// PriorityClass of the snapshot pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Node labels for snapshot pods that read a restored VolumeSnapshot (a pod that mounts
    /// the member's volume always runs on the member's node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations added to the member pod's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// How long a snapshot pod may stay Pending (unschedulable, a volume that does not
    /// attach, an image that does not pull) before its attempt fails with the reason: a number
    /// of seconds, minutes or hours (90s, 10m, 1h). Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]{1,6}[smh]$"))]
    pub pending_timeout: Option<String>,
    /// How long a snapshot or restore pod of this job may be active on its node before the
    /// kubelet stops it and its attempt fails with that reason (the pod's
    /// activeDeadlineSeconds): a copy that hangs (a store that never answers, a stuck mount)
    /// never leaves a run Running forever. A number of seconds, minutes or hours (90s, 10m,
    /// 1h). Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]{1,6}[smh]$"))]
    pub run_timeout: Option<String>,
    /// How long the node of a running snapshot or restore pod may stay not Ready (its kubelet
    /// stopped reporting, or reports NotReady) before the operator gives the pod up: it is
    /// deleted at once (its kubelet cannot confirm) and its attempt fails naming the node.
    /// The kubelet that would enforce runTimeout is the one gone. Needs the operator to read
    /// Nodes (the chart grants it). A number of seconds, minutes or hours. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]{1,6}[smh]$"))]
    pub node_lost_timeout: Option<String>,
}

fn default_max_files() -> u64 {
    100_000
}

fn default_backoff_limit() -> u32 {
    2
}

/// The MongoDB replica set to back up.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.statefulSetName) != has(self.selector)").message("source: set exactly one of statefulSetName or selector to find the replica set's pods"))]
#[x_kube(validation = Rule::new("!has(self.consistency) || self.consistency.mode != 'fsyncLock' || has(self.connection)").message("source.consistency.mode fsyncLock needs source.connection to reach MongoDB"))]
#[x_kube(validation = Rule::new("has(self.connection) || (has(self.syncSource) && self.syncSource.mode == 'member')").message("source: without source.connection only syncSource.mode member can be used (anySecondary and primary need a connection to ask MongoDB which member is which)"))]
pub struct MongoSource {
    /// Name of the StatefulSet that runs the replica set members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub stateful_set_name: Option<String>,
    /// Label selector for the replica set member pods, instead of statefulSetName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Name of the pod volume (or StatefulSet volumeClaimTemplate) that holds the dbPath.
    #[schemars(length(min = 1, max = 253))]
    pub data_volume_name: String,
    /// The MongoDB dbPath inside that volume's mount, as mongod sees it: an absolute path of
    /// plain names (no `.`, `..` or empty segments, no trailing slash).
    #[serde(default = "default_db_path")]
    #[schemars(pattern(r"^(/([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))+$"))]
    pub db_path: String,
    /// Path where the data volume is mounted in the mongod container; dbPath is taken relative
    /// to it. Defaults to dbPath itself (the volume is mounted at dbPath). An absolute path of
    /// plain names, like dbPath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(/([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))+$"))]
    pub mount_path: Option<String>,
    /// Which member to copy from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_source: Option<SyncSource>,
    /// How to reach MongoDB to ask which members are secondaries (and to fsyncLock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<MongoConnection>,
    /// How a consistent copy is obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
}

fn default_db_path() -> String {
    "/data/db".to_string()
}

/// Which replica-set member a snapshot copies from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.mode == 'member') == has(self.member)").message("syncSource: member names a pod if and only if mode is member"))]
pub struct SyncSource {
    /// anySecondary (default: a healthy secondary with the least lag, sparing the primary),
    /// primary, or member (the pod named in `member`).
    #[serde(default)]
    pub mode: SyncSourceMode,
    /// Pod name of the member to copy from, with mode member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub member: Option<String>,
}

/// How the member to copy from is chosen.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SyncSourceMode {
    /// A healthy, visible, non-delayed secondary with the least replication lag.
    #[default]
    AnySecondary,
    /// The current primary.
    Primary,
    /// The member named in `member`.
    Member,
}

/// A connection to the replica set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.authMechanism == 'MONGODB-X509' ? (has(self.tls) && self.tls.enabled) : true").message("connection: authMechanism MONGODB-X509 needs tls.enabled"))]
#[x_kube(validation = Rule::new("self.authMechanism == 'PLAIN' ? (has(self.tls) && self.tls.enabled) : true").message("connection: authMechanism PLAIN (LDAP) sends the password as it is: it needs tls.enabled"))]
pub struct MongoConnection {
    /// Port mongod listens on in each member pod.
    #[serde(default = "default_mongo_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Replica set name; read from the members when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_set: Option<String>,
    /// Authentication mechanism.
    #[serde(default)]
    pub auth_mechanism: AuthMechanism,
    /// Authentication database (`$external` is used for MONGODB-X509 and PLAIN).
    #[serde(default = "default_auth_source")]
    pub auth_source: String,
    /// Secret with `username` and `password` (SCRAM, PLAIN), or `tls.crt` and `tls.key` (X.509).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    /// TLS to MongoDB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MongoTls>,
}

fn default_mongo_port() -> u16 {
    27017
}

fn default_auth_source() -> String {
    "admin".to_string()
}

/// MongoDB authentication mechanisms.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMechanism {
    /// SCRAM-SHA-256, the default.
    #[default]
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-1.
    #[serde(rename = "SCRAM-SHA-1")]
    ScramSha1,
    /// X.509 client certificate.
    #[serde(rename = "MONGODB-X509")]
    X509,
    /// LDAP through SASL PLAIN.
    #[serde(rename = "PLAIN")]
    Plain,
    /// No authentication.
    #[serde(rename = "NONE")]
    None,
}

/// TLS settings for MongoDB connections.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MongoTls {
    /// Use TLS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Secret whose `ca.crt` verifies the members' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret: Option<String>,
}

fn default_true() -> bool {
    true
}

/// How a consistent copy of the dbPath is obtained.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.mode == 'volumeSnapshot') == has(self.volumeSnapshotClassName)").message("consistency: volumeSnapshotClassName is set if and only if mode is volumeSnapshot"))]
#[x_kube(validation = Rule::new("!has(self.quiesce) || self.mode == 'volumeSnapshot'").message("consistency: quiesce applies to mode volumeSnapshot only"))]
pub struct Consistency {
    /// How the copy is made consistent. volumeSnapshot (recommended): a CSI VolumeSnapshot
    /// of the member's data volume is cut (under a seconds-long lock, see quiesce) and copied
    /// from a temporary claim restored from it. fsyncLock: the member is locked for the whole
    /// copy. stoppedMember: the files are copied as they are, which mongod can recover from
    /// only if the member is stopped; every such Snapshot says Consistent=False. `none` is the
    /// old name of stoppedMember (accepted, with a warning).
    pub mode: ConsistencyMode,
    /// CSI VolumeSnapshotClass for mode volumeSnapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_snapshot_class_name: Option<String>,
    /// For mode volumeSnapshot: lock writes on the member while the snapshot is cut.
    /// fsyncLock (the default when source.connection is set) or none (the default without a
    /// connection: a crash-consistent cut, which mongod recovers from when its journal is on
    /// the same volume, mongod's default layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<Quiesce>,
    /// For mode volumeSnapshot: how long to wait for the VolumeSnapshot to become readyToUse
    /// before the attempt fails: a number of seconds, minutes or hours (90s, 10m, 1h).
    /// Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]{1,6}[smh]$"))]
    pub volume_snapshot_timeout: Option<String>,
    /// The longest the member may stay fsyncLocked, in seconds: past it the run is aborted and
    /// the member unlocked. Default 600 for mode fsyncLock (the whole copy), 60 for the cut of
    /// mode volumeSnapshot with quiesce fsyncLock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_lock_seconds: Option<u32>,
    /// Allow fsyncLocking the primary (syncSource mode primary, or a chosen member that turned
    /// out to be the primary). A locked primary takes no writes at all: off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_primary: bool,
}

/// Consistency modes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ConsistencyMode {
    /// Cut a CSI VolumeSnapshot of the data volume and copy from a claim restored from it.
    VolumeSnapshot,
    /// db.fsyncLock() on the member for the duration of the copy.
    FsyncLock,
    /// Copy the files as they are: consistent only if the member is stopped.
    StoppedMember,
    /// The old name of stoppedMember (deprecated).
    #[serde(rename = "none")]
    LegacyNone,
}

/// Write quiescing for the volume snapshot cut.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Quiesce {
    /// fsyncLock the member, cut, fsyncUnlock: the lock lasts seconds.
    FsyncLock,
    /// No lock: a crash-consistent cut (journal on the same volume).
    None,
}

/// Which key protects the data: exactly one of `kmipServerRef` and `localKeySecret`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.kmipServerRef) != has(self.localKeySecret)").message("encryption: set exactly one of kmipServerRef or localKeySecret"))]
pub struct Encryption {
    /// A KmipServer in this namespace holding the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kmip_server_ref: Option<LocalRef>,
    /// A Secret key holding a local master key file (as `snapcrypt backup --key-file` uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_key_secret: Option<SecretKeyRef>,
}

/// A cron schedule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Standard 5-field cron expression (minute hour day-of-month month day-of-week).
    #[schemars(length(min = 9, max = 128))]
    pub cron: String,
    /// IANA time zone the cron expression is read in.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

/// Which snapshots to keep. A snapshot kept by any rule is kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep the newest N snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub keep_monthly: Option<u32>,
    /// Forget snapshots older than this, as a duration such as 90d, regardless of other rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]+(h|d)$"))]
    pub max_age: Option<String>,
    /// Least privilege: a Secret with the object-store credentials that deleting needs, with
    /// the same keys as the destination's credentialsSecret (the job's destination for
    /// spec.retention, the copy's for spec.copies[].retention). When set, the pods that write
    /// (snapshot pods, or the copy's copy pods) never delete what a snapshot needs: after each
    /// successful Snapshot (for a copy: each run that left it holding a newer one) the
    /// operator runs a retention pod given only this Secret, so the destination's own
    /// credentials need no delete permission beyond `locks/` and `unfinished/`
    /// (docs/OPERATIONS.md, "Least privilege"). Only for an s3, gcs or azure destination; a
    /// copy without its own retention uses the job's rules, never the job's Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

/// Per-chunk compression.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Compression {
    /// zstd, kept only for chunks it shrinks.
    #[default]
    Auto,
    /// zstd for every chunk.
    Zstd,
    /// No compression.
    None,
}

/// Lifecycle phase of a BackupJob.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackupJobPhase {
    /// Not yet checked.
    #[default]
    Pending,
    /// Valid and waiting for the next run.
    Ready,
    /// A snapshot is running.
    Running,
    /// Suspended by spec.suspend.
    Suspended,
    /// Something the spec references (a Secret or one of its keys, a claim, a KmipServer, the
    /// StatefulSet) does not exist yet; see conditions. The job starts by itself within
    /// seconds of its creation.
    Waiting,
    /// The spec or something it references is wrong (see conditions), or a one-off job's
    /// snapshot failed.
    Failed,
    /// A one-off job whose snapshot finished.
    Completed,
}

/// What the operator last saw of a BackupJob.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupJobStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: BackupJobPhase,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded and Suspended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Name of the newest Snapshot object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<String>,
    /// When the newest Snapshot started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_time: Option<Time>,
    /// Name of the newest Snapshot that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_snapshot: Option<String>,
    /// When the newest successful Snapshot completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// When the schedule next creates a Snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// Name of the Snapshot running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_snapshot: Option<String>,
    /// Progress of the running Snapshot, mirrored from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Progress as one short line (for example `42% 1.2 GiB/2.9 GiB ETA 3m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_summary: Option<String>,
    /// Snapshots kept in the repository.
    #[serde(default)]
    pub snapshot_count: u64,
    /// Bytes the repository stores after deduplication, compression and encryption.
    #[serde(default)]
    pub stored_bytes: u64,
    /// Master key id new data keys are wrapped under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The last scheduled read of the repository's data (spec.verification.readData).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verification: Option<VerificationRun>,
    /// Data-verification runs started so far; the next reads pack group (runs mod n) + 1.
    #[serde(default)]
    pub verification_runs: u64,
    /// The last restore test that ended (spec.verification.restoreTest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore_test: Option<RestoreTestRun>,
    /// The Restore of the restore test running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_restore_test: Option<String>,
    /// The snapshots the repository already held for this job (imported as Snapshot objects)
    /// and the cluster that writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<super::catalog::CatalogStatus>,
    /// Each copy of spec.copies: what it holds, how far behind it is, how its last run went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<super::copy::CopyStatus>,
    /// With spec.retention.credentialsSecret: the retention pods' runs (the last one that
    /// ended, and the one running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<super::retention::RetentionRun>,
}
