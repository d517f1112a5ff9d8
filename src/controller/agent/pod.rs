//! What every agent pod (every kind of run) shares: where things are mounted, the restricted
//! security context, and the repository and key a BackupJob names, as volumes, mounts,
//! arguments and environment. Pure.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    ObjectFieldSelector, PodSecurityContext, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};

use kube::ResourceExt;

use crate::api::KmipServer;
use crate::api::backup_job::Encryption;
use crate::api::destination::Destination;
use crate::api::kmip_server::WrappingMode;

/// Where a PVC destination is mounted.
pub const REPO_MOUNT: &str = "/repo";
/// Where the local key Secret is mounted, and the file name of the key in it.
pub const KEY_MOUNT: &str = "/etc/snapcrypt/key";
pub const KEY_FILE: &str = "key.json";
/// Where the KmipServer's client TLS Secret is mounted.
pub const KMIP_MOUNT: &str = "/etc/snapcrypt/kmip";

/// Scratch space (packs are staged here for S3); the root filesystem is read-only.
pub const TMP_MOUNT: &str = "/tmp";
/// Kubernetes' default termination message path, passed to the agent explicitly.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Name of the agent container.
pub const CONTAINER: &str = "agent";
/// The uid of the official mongo image's `mongodb` user: what restored files belong to, and
/// what a snapshot pod runs as when the member pod names no user.
pub const MONGODB_UID: i64 = 999;

/// Why a pod cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error(
        "spec.encryption.kmipServerRef: the KmipServer has no active master key yet (see its status)"
    )]
    KmipNotReady,
    #[error("spec.encryption: no key source set")]
    NoKey,
    #[error("spec.destination: no destination set")]
    NoDestination,
    #[error("the owner object has no uid (not read from the API server)")]
    NoOwner,
}

pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

pub fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
    }
}

/// The Secret and key an environment variable is taken from, if it is (tests read pods so).
#[cfg(test)]
pub(crate) fn secret_of(e: &EnvVar) -> Option<(&str, &str)> {
    let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
    Some((r.name.as_str(), r.key.as_str()))
}

pub fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The scratch volume (the root filesystem is read-only) and its mount, and the environment
/// every agent gets: where to report (`object_env` names the object: SNAPCRYPT_SNAPSHOT or
/// SNAPCRYPT_RESTORE), its own pod's name, the termination log, and scratch space as TMPDIR and
/// HOME; after `extra` (the operator's --agent-env), so that the agent's own win.
pub fn agent_basics(
    namespace: &str,
    object_env: (&str, &str),
    extra: &[(String, String)],
) -> (Volume, VolumeMount, Vec<EnvVar>) {
    let own = [
        env("SNAPCRYPT_NAMESPACE", namespace),
        env(object_env.0, object_env.1),
        env("SNAPCRYPT_TERMINATION_LOG", TERMINATION_LOG),
        env("SNAPCRYPT_TMPDIR", TMP_MOUNT),
        env("TMPDIR", TMP_MOUNT),
        env("HOME", TMP_MOUNT),
        // The pod's own name, which the snapshot agent's result report names.
        EnvVar {
            name: "SNAPCRYPT_POD_NAME".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    api_version: None,
                }),
                ..Default::default()
            }),
        },
    ];
    let mut envs: Vec<EnvVar> = extra
        .iter()
        .filter(|(name, _)| !own.iter().any(|e| &e.name == name))
        .map(|(name, value)| env(name, value))
        .collect();
    envs.extend(own);
    (
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        mount("tmp", TMP_MOUNT, false),
        envs,
    )
}

/// The agent container: `snapcrypt ARGS`, restricted, its result in the termination message.
pub fn agent_container(
    image: &str,
    args: Vec<String>,
    envs: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
    resources: Option<ResourceRequirements>,
) -> Container {
    Container {
        name: CONTAINER.into(),
        image: Some(image.into()),
        command: Some(vec!["snapcrypt".into()]),
        args: Some(args),
        env: Some(envs),
        volume_mounts: Some(mounts),
        resources,
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(container_security()),
        ..Default::default()
    }
}

/// How a pod uses the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Mount a PVC repository read-only (a restore only reads).
    pub repo_read_only: bool,
    /// Rewrap older data keys under the active master key (a backup after a rotation).
    pub rewrap: bool,
}

/// The repository and key of a BackupJob, as a pod needs them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepoAccess {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    pub args: Vec<String>,
    pub envs: Vec<EnvVar>,
    /// Labels the pod needs (AKS Workload Identity's opt-in).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A destination and encryption (a job's, or a Restore's spec.source) as volumes, mounts,
/// agent arguments and environment. `kmip` is the KmipServer with its active master key id
/// (from its status).
pub fn repository_access(
    destination: &Destination,
    encryption: &Encryption,
    kmip: Option<(&KmipServer, &str)>,
    how: Access,
) -> Result<RepoAccess, PodError> {
    let mut out = RepoAccess::default();
    super::destination::destination_access(destination, how, &mut out)?;
    key_access(encryption, kmip, how, &mut out)?;
    Ok(out)
}

/// The key: the local key Secret as a file, or the KmipServer's endpoints and client TLS.
fn key_access(
    encryption: &Encryption,
    kmip: Option<(&KmipServer, &str)>,
    how: Access,
    out: &mut RepoAccess,
) -> Result<(), PodError> {
    match (&encryption.local_key_secret, &encryption.kmip_server_ref) {
        (Some(k), _) => {
            out.volumes.push(Volume {
                name: "key".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(k.name.clone()),
                    items: Some(vec![KeyToPath {
                        key: k.key.clone(),
                        path: KEY_FILE.into(),
                        mode: None,
                    }]),
                    // Secret files are owned by root: readable by the agent's (non-root) user
                    // only through the mode. No fsGroup is set, because it would also change
                    // the group of mongod's data files.
                    default_mode: Some(0o444),
                    optional: None,
                }),
                ..Default::default()
            });
            out.mounts.push(mount("key", KEY_MOUNT, true));
            out.args
                .extend(["--key-file".into(), format!("{KEY_MOUNT}/{KEY_FILE}")]);
        }
        (None, Some(_)) => kmip_access(kmip.ok_or(PodError::KmipNotReady)?, how, out),
        (None, None) => return Err(PodError::NoKey),
    }
    Ok(())
}

/// A KMIP job's key: the KmipServer's client TLS Secret mounted at [`KMIP_MOUNT`], its
/// endpoints and settings, and the active master key id.
fn kmip_access((ks, key_id): (&KmipServer, &str), how: Access, out: &mut RepoAccess) {
    out.volumes.push(Volume {
        name: "kmip-tls".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(ks.spec.tls.secret_name.clone()),
            items: Some(
                ["ca.crt", "tls.crt", "tls.key"]
                    .into_iter()
                    .map(|k| KeyToPath {
                        key: k.into(),
                        path: k.into(),
                        mode: None,
                    })
                    .collect(),
            ),
            // Readable by the agent's non-root user through the mode, as the key file.
            default_mode: Some(0o444),
            optional: None,
        }),
        ..Default::default()
    });
    out.mounts.push(mount("kmip-tls", KMIP_MOUNT, true));
    for e in &ks.spec.endpoints {
        out.args.extend(["--kmip-endpoint".into(), e.clone()]);
    }
    out.args.extend([
        "--kmip-ca".into(),
        format!("{KMIP_MOUNT}/ca.crt"),
        "--kmip-cert".into(),
        format!("{KMIP_MOUNT}/tls.crt"),
        "--kmip-key".into(),
        format!("{KMIP_MOUNT}/tls.key"),
        "--kmip-key-id".into(),
        key_id.to_string(),
        "--kmip-version".into(),
        ks.spec.protocol_version.as_str().into(),
        "--kmip-timeout-secs".into(),
        ks.spec.connect_timeout_seconds.to_string(),
    ]);
    if let Some(name) = &ks.spec.tls.server_name {
        out.args.extend(["--kmip-server-name".into(), name.clone()]);
    }
    if ks.spec.wrapping == WrappingMode::LocalKeyWrap {
        out.args.push("--kmip-local-wrap".into());
    }
    // After a rotation, the next snapshot moves older data keys under the new key,
    // unless the policy keeps old snapshots on their old key.
    if how.rewrap && ks.spec.rotation.as_ref().is_none_or(|r| r.rewrap_existing) {
        out.args.push("--rewrap".into());
    }
}

/// The pod-level security context: non-root as `run_as`, seccomp RuntimeDefault.
pub fn pod_security(run_as: RunAs) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(run_as.uid),
        run_as_group: Some(run_as.gid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// [`pod_security`] as mongod's usual user and group (999), that group also the volumes'
/// fsGroup: what a pod that writes or reads a dbPath runs as.
pub fn mongodb_pod_security() -> PodSecurityContext {
    let mut security = pod_security(RunAs {
        uid: MONGODB_UID,
        gid: MONGODB_UID,
    });
    security.fs_group = Some(MONGODB_UID);
    security
}

/// The repository an agent pod reads, and the identity, resources and deadline it runs
/// under: a BackupJob's, or a Restore's spec.source (no job at all).
#[derive(Clone, Debug)]
pub struct AgentRepo<'a> {
    pub destination: &'a Destination,
    pub encryption: &'a Encryption,
    /// The ServiceAccount the pod runs as.
    pub service_account: String,
    pub resources: Option<ResourceRequirements>,
    /// activeDeadlineSeconds.
    pub deadline_seconds: i64,
    /// Labels naming the job (none without one).
    pub labels: std::collections::BTreeMap<String, String>,
}

impl<'a> AgentRepo<'a> {
    /// A BackupJob's repository, agent ServiceAccount, resources and runTimeout.
    pub fn of_job(job: &'a crate::api::BackupJob) -> Self {
        AgentRepo {
            destination: &job.spec.destination,
            encryption: &job.spec.encryption,
            service_account: crate::controller::names::agent_service_account(&job.name_any()),
            resources: job.spec.resources.clone(),
            deadline_seconds: crate::controller::job_spec::consistency::run_deadline_seconds(job),
            labels: crate::controller::names::job_labels(&job.name_any()),
        }
    }
}

/// What a job's agent pod that only needs the repository (a restore, a verify) is made of,
/// besides what [`job_agent_pod`] adds to every such pod.
pub struct JobAgentPod<'a> {
    pub repo: AgentRepo<'a>,
    /// The job's KmipServer with its active master key id, for a KMIP job.
    pub kmip: Option<(&'a KmipServer, &'a str)>,
    pub image: &'a str,
    /// Extra environment (the operator's --agent-env).
    pub agent_env: &'a [(String, String)],
    pub name: String,
    pub namespace: Option<String>,
    pub owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    /// `app.kubernetes.io/component`.
    pub component: &'a str,
    /// The label the run's pods are selected by, and its value.
    pub run_label: (&'a str, String),
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
    /// The environment variable naming the object the agent reports to.
    pub object_env: (&'a str, &'a str),
    /// The run's own arguments, volumes and mounts (the repository's and key's are added).
    pub args: Vec<String>,
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    /// A second repository the run writes (a copy's target), in its `--to` form
    /// ([`super::target::as_copy_target`]).
    pub target: Option<RepoAccess>,
}

/// The pod: the agent container as mongod's user with scratch space, the job's repository
/// (read-write, so that the run holds a shared repository lock and no prune removes what it
/// reads: docs/REPOSITORY.md, "Locks and deletion") and key, the job's agent ServiceAccount
/// and resources, never restarted, stopped by the kubelet at the job's runTimeout.
pub fn job_agent_pod(p: JobAgentPod) -> Result<k8s_openapi::api::core::v1::Pod, PodError> {
    let (tmp_volume, tmp_mount, mut envs) = agent_basics(
        p.namespace.as_deref().unwrap_or_default(),
        p.object_env,
        p.agent_env,
    );
    let access = repository_access(
        p.repo.destination,
        p.repo.encryption,
        p.kmip,
        Access {
            repo_read_only: false,
            rewrap: false,
        },
    )?;
    let (mut volumes, mut mounts, mut args) = (p.volumes, p.mounts, p.args);
    volumes.push(tmp_volume);
    mounts.push(tmp_mount);
    let mut labels = p.repo.labels;
    for a in [Some(access), p.target].into_iter().flatten() {
        volumes.extend(a.volumes);
        mounts.extend(a.mounts);
        args.extend(a.args);
        envs.extend(a.envs);
        labels.extend(a.labels);
    }
    labels.insert("app.kubernetes.io/name".into(), "snapcrypt".into());
    labels.insert("app.kubernetes.io/component".into(), p.component.into());
    labels.insert(p.run_label.0.into(), p.run_label.1);
    Ok(k8s_openapi::api::core::v1::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(p.name),
            namespace: p.namespace,
            labels: Some(labels),
            annotations: p.annotations,
            owner_references: Some(vec![p.owner]),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(p.repo.deadline_seconds),
            service_account_name: Some(p.repo.service_account),
            security_context: Some(mongodb_pod_security()),
            containers: vec![agent_container(
                p.image,
                args,
                envs,
                mounts,
                p.repo.resources,
            )],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    })
}

/// The restricted container security context: non-root, read-only root filesystem, no
/// privilege escalation, no capabilities, seccomp RuntimeDefault.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// A non-root user and group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: i64,
    pub gid: i64,
}
