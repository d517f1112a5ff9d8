//! The snapshot pod: `snapcrypt agent snapshot` on the chosen member's node, with the member's
//! data volume mounted read-only, the repository (PVC or S3) and the key. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, Toleration, Volume,
};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::backup_job::{BackupJobSpec, Compression};
use crate::api::snapshot::CaptureStatus;
use crate::api::{BackupJob, KmipServer, Snapshot};
use crate::controller::agent::pod::{
    Access, MONGODB_UID, agent_basics, agent_container, mount, pod_security, repository_access,
};
pub use crate::controller::agent::pod::{
    CONTAINER, KEY_FILE, KEY_MOUNT, KMIP_MOUNT, PodError, REPO_MOUNT, RunAs, TERMINATION_LOG,
    TMP_MOUNT,
};
use crate::controller::job_spec::validate::db_path_in_volume;
use crate::controller::names::{
    ATTEMPT_LABEL, CAPTURE_ANNOTATION, MEMBER_ANNOTATION, MEMBER_REASON_ANNOTATION,
    MEMBER_ROLE_ANNOTATION, SNAPSHOT_UID_LABEL, agent_service_account, job_labels, pod_name,
};

/// Where the member's data volume is mounted in the snapshot pod.
pub const SOURCE_MOUNT: &str = "/data/source";
use crate::api::snapshot::{CAPTURE_TAG, CLUSTER_TAG};
pub use crate::api::snapshot::{JOB_TAG, TRIGGER_ON_DEMAND, TRIGGER_SCHEDULE, TRIGGER_TAG};
use crate::controller::job_spec::consistency::Capture;

pub use crate::controller::job_spec::retention::made_by_job;

/// Everything the pod depends on, decided before building.
#[derive(Clone, Debug)]
pub struct PodPlan<'a> {
    pub snapshot: &'a Snapshot,
    pub job: &'a BackupJob,
    /// 1 for the first run, 2 for the first retry, ...
    pub attempt: u32,
    /// The member pod copied from, its role and why it was chosen, and its node.
    pub member: &'a str,
    pub member_role: &'a str,
    pub member_reason: &'a str,
    /// The node to run on: the member's, whose volume it mounts; None when it reads a claim
    /// restored from a VolumeSnapshot (the scheduler places it where that claim attaches).
    pub node: Option<&'a str>,
    /// The PersistentVolumeClaim behind the member's data volume.
    pub data_claim: &'a str,
    /// User and group the agent runs as: the member's, so it can read mongod's files.
    pub run_as: RunAs,
    /// Image with the snapcrypt binary.
    pub image: &'a str,
    /// Seconds between progress reports (the agent's default when 2).
    pub progress_interval: f64,
    /// Extra environment (the operator's --agent-env).
    pub agent_env: &'a [(String, String)],
    /// The KmipServer of a KMIP job, with its active master key id (from its status).
    pub kmip: Option<(&'a KmipServer, &'a str)>,
    /// The member pod's tolerations (a pod on the member's node needs them on a tainted node).
    pub member_tolerations: &'a [Toleration],
    /// This cluster, as the operator names it: the job's snapshots are claimed for it in the
    /// repository (empty: not claimed).
    pub cluster: &'a str,
}

/// The user the member's mongod runs as (the container mounting the data volume, else the
/// pod), so the agent can read files mongod created with mode 0600. Root becomes 999.
pub fn member_run_as(member: &Pod, data_volume: &str) -> RunAs {
    let spec = member.spec.as_ref();
    let container = spec.and_then(|s| {
        s.containers.iter().find(|c| {
            c.volume_mounts
                .as_ref()
                .is_some_and(|ms| ms.iter().any(|m| m.name == data_volume))
        })
    });
    let csc = container.and_then(|c| c.security_context.as_ref());
    let psc = spec.and_then(|s| s.security_context.as_ref());
    let uid = csc
        .and_then(|c| c.run_as_user)
        .or(psc.and_then(|p| p.run_as_user))
        .filter(|u| *u != 0)
        .unwrap_or(MONGODB_UID);
    let gid = csc
        .and_then(|c| c.run_as_group)
        .or(psc.and_then(|p| p.run_as_group))
        .or(psc.and_then(|p| p.fs_group))
        .filter(|g| *g != 0)
        .unwrap_or(uid);
    RunAs { uid, gid }
}

/// Build the snapshot pod for one attempt.
pub fn snapshot_pod(p: &PodPlan) -> Result<Pod, PodError> {
    let snap = p.snapshot;
    let spec = &p.job.spec;
    let owner = snap.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = snap.uid().ok_or(PodError::NoOwner)?;
    let ns = snap.namespace();
    let snap_name = snap.name_any();

    let (tmp_volume, tmp_mount, mut envs) = agent_basics(
        ns.as_deref().unwrap_or_default(),
        ("SNAPCRYPT_SNAPSHOT", &snap_name),
        p.agent_env,
    );
    let mut volumes = vec![
        Volume {
            name: "source".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: p.data_claim.into(),
                read_only: Some(true),
            }),
            ..Default::default()
        },
        tmp_volume,
    ];
    let mut mounts = vec![mount("source", SOURCE_MOUNT, true), tmp_mount];
    let rel = db_path_in_volume(&spec.source);
    let source_dir = if rel.is_empty() {
        SOURCE_MOUNT.to_string()
    } else {
        format!("{SOURCE_MOUNT}/{rel}")
    };
    let mut args: Vec<String> = vec!["agent".into(), "snapshot".into()];
    args.extend(["--source".into(), source_dir]);
    args.extend(["--source-within".into(), SOURCE_MOUNT.into()]);

    // Repository (read-write: the backup writes into it) and key.
    let access = repository_access(
        &spec.destination,
        &spec.encryption,
        p.kmip,
        Access {
            repo_read_only: false,
            rewrap: true,
        },
    )?;
    volumes.extend(access.volumes);
    mounts.extend(access.mounts);
    args.extend(access.args);
    envs.extend(access.envs);
    let access_labels = access.labels;

    args.extend(copy_args(p));
    // The job's retention policy, applied by the agent after a successful backup to the
    // snapshots this job's schedule made (the backupjob and trigger tags below): jobs can share
    // a repository, and on-demand runs (Snapshots a user created) are the user's to forget.
    let job_tag = format!("{}/{}", ns.clone().unwrap_or_default(), p.job.name_any());
    let trigger = if made_by_job(snap, p.job) {
        TRIGGER_SCHEDULE
    } else {
        TRIGGER_ON_DEMAND
    };
    args.extend(retention_args(spec, &job_tag));
    args.extend(tag_args(p, &job_tag, trigger));
    args.extend(owner_args(p));

    let mut labels = job_labels(&p.job.name_any());
    labels.extend(access_labels);
    labels.insert("app.kubernetes.io/name".into(), "snapcrypt".into());
    labels.insert("app.kubernetes.io/component".into(), "snapshot".into());
    labels.insert(SNAPSHOT_UID_LABEL.into(), uid);
    labels.insert(ATTEMPT_LABEL.into(), p.attempt.to_string());

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&snap_name, p.attempt)),
            namespace: ns,
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (MEMBER_ANNOTATION.to_string(), p.member.to_string()),
                (
                    MEMBER_ROLE_ANNOTATION.to_string(),
                    p.member_role.to_string(),
                ),
                (
                    MEMBER_REASON_ANNOTATION.to_string(),
                    p.member_reason.to_string(),
                ),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(
                crate::controller::job_spec::consistency::run_deadline_seconds(p.job),
            ),
            service_account_name: Some(agent_service_account(&p.job.name_any())),
            affinity: p.node.map(pinned_to),
            tolerations: tolerations(p),
            priority_class_name: spec
                .placement
                .as_ref()
                .and_then(|pl| pl.priority_class_name.clone()),
            node_selector: node_selector(p),
            security_context: Some(pod_security(p.run_as)),
            containers: vec![agent_container(
                p.image,
                args,
                envs,
                mounts,
                spec.resources.clone(),
            )],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    })
}

/// The job's retention policy as agent arguments, scoped to the snapshots this job's schedule
/// made (none without a policy).
fn retention_args(spec: &BackupJobSpec, job_tag: &str) -> Vec<String> {
    let Some(r) = spec.retention.as_ref() else {
        return Vec::new();
    };
    // Least privilege: the job's retention pod applies it, with credentials this pod lacks.
    if r.credentials_secret.is_some() {
        return Vec::new();
    }
    let mut args = crate::controller::job_spec::retention::retention_flags(r);
    let any = !args.is_empty();
    if any {
        args.extend([
            "--prune-tag".into(),
            format!("{JOB_TAG}={job_tag}"),
            "--prune-tag".into(),
            format!("{TRIGGER_TAG}={TRIGGER_SCHEDULE}"),
        ]);
    }
    args
}

/// The snapshot's repository tags as agent arguments: the Snapshot's own tags, its job, its
/// trigger, the Snapshot and the member; and the job as the snapshot's host.
fn tag_args(p: &PodPlan, job_tag: &str, trigger: &str) -> Vec<String> {
    let snap = p.snapshot;
    let ns = snap.namespace().unwrap_or_default();
    let mut tags: BTreeMap<String, String> = snap.spec.tags.clone();
    tags.insert(JOB_TAG.into(), job_tag.into());
    tags.insert(TRIGGER_TAG.into(), trigger.into());
    tags.insert("snapshot".into(), format!("{ns}/{}", snap.name_any()));
    tags.insert("member".into(), p.member.into());
    let capture = match crate::controller::job_spec::consistency::capture(&p.job.spec.source) {
        Capture::VolumeSnapshot { .. } => "volumeSnapshot",
        Capture::FsyncLock { .. } => "fsyncLock",
        Capture::StoppedMember { .. } => "stoppedMember",
    };
    tags.insert(CAPTURE_TAG.into(), capture.into());
    if !p.cluster.is_empty() {
        tags.insert(CLUSTER_TAG.into(), p.cluster.into());
    }
    let mut args: Vec<String> = tags
        .into_iter()
        .flat_map(|(k, v)| ["--tag".to_string(), format!("{k}={v}")])
        .collect();
    // Each pod's hostname is its own name: the job is the host the repository knows, so each
    // run continues from the job's last snapshot (its parent) instead of storing every chunk.
    args.extend(["--host".into(), format!("{JOB_TAG}:{job_tag}")]);
    args
}

/// The cluster the job's snapshots are written by, and the one the job takes them over from
/// (spec.takeOverFrom): a backup from a cluster that does not own them is refused before it
/// writes, and so is its retention.
fn owner_args(p: &PodPlan) -> Vec<String> {
    if p.cluster.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["--cluster".to_string(), p.cluster.to_string()];
    if let Some(from) = &p.job.spec.take_over_from {
        args.extend(["--take-over-from".to_string(), from.clone()]);
    }
    args
}

/// Pinned to the member's node by node name, which every scheduler honours (the hostname
/// label may differ from the node name on some clouds).
/// How the agent copies: the file limit, the progress interval, the compression.
fn copy_args(p: &PodPlan) -> Vec<String> {
    let spec = &p.job.spec;
    let mut args = vec!["--max-files".into(), spec.max_files.to_string()];
    if (p.progress_interval - 2.0).abs() > f64::EPSILON {
        args.extend([
            "--progress-interval".into(),
            p.progress_interval.to_string(),
        ]);
    }
    let compression = match spec.compression {
        Compression::Auto => "auto",
        Compression::Zstd => "zstd",
        Compression::None => "none",
    };
    args.extend(["--compression".into(), compression.into()]);
    args
}

/// The spec's node labels, for a pod not pinned to the member's node (there the member
/// decides).
fn node_selector(p: &PodPlan) -> Option<BTreeMap<String, String>> {
    let pl = p.job.spec.placement.as_ref()?;
    (p.node.is_none() && !pl.node_selector.is_empty()).then(|| pl.node_selector.clone())
}

/// The member pod's tolerations, then the spec's (duplicates once).
fn tolerations(p: &PodPlan) -> Option<Vec<Toleration>> {
    let mut all: Vec<Toleration> = p.member_tolerations.to_vec();
    for t in p
        .job
        .spec
        .placement
        .iter()
        .flat_map(|pl| pl.tolerations.iter())
    {
        if !all.contains(t) {
            all.push(t.clone());
        }
    }
    (!all.is_empty()).then_some(all)
}

fn pinned_to(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    match_expressions: None,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Record `capture` (its lock left out: that is the operator's to track) on `pod`, so that
/// [`recorded_capture`] can rebuild it when the status write after the pod's creation is lost
/// or not yet seen. Pure.
pub fn record_capture(pod: &mut Pod, capture: &CaptureStatus) {
    let capture = CaptureStatus {
        lock: None,
        ..capture.clone()
    };
    if let Ok(json) = serde_json::to_string(&capture) {
        pod.annotations_mut()
            .insert(CAPTURE_ANNOTATION.to_string(), json);
    }
}

/// The capture [`record_capture`] recorded on `pod`, if it did. Pure.
pub fn recorded_capture(pod: &Pod) -> Option<CaptureStatus> {
    serde_json::from_str(pod.annotations().get(CAPTURE_ANNOTATION)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::job;
    use k8s_openapi::api::core::v1::Container;

    fn snapshot() -> Snapshot {
        serde_yaml::from_str(
            r#"
apiVersion: snapcrypt.dev/v1alpha1
kind: Snapshot
metadata: {name: rs0-202611270300, namespace: db, uid: 5d0c4b8e-1f7a-4c44-9d53-0123456789ab}
spec:
  backupJobRef: {name: rs0}
  tags: {reason: nightly}
"#,
        )
        .expect("snapshot yaml")
    }

    const PVC_LOCAL: &str = r#"
  source: {statefulSetName: rs0, dataVolumeName: mongo-data, dbPath: /data/db, mountPath: /data, syncSource: {mode: member, member: rs0-2}}
  destination: {pvc: {claimName: backups, path: clusters/rs0}}
  encryption: {localKeySecret: {name: rs0-key, key: key.json}}
  maxFiles: 5000
  compression: zstd
  resources: {limits: {memory: 512Mi}}
"#;

    fn build(job: &BackupJob) -> Result<Pod, PodError> {
        build_for(job, &snapshot())
    }

    fn build_for(job: &BackupJob, snap: &Snapshot) -> Result<Pod, PodError> {
        snapshot_pod(&PodPlan {
            attempt: 2,
            ..plan_for(job, snap)
        })
    }

    /// The plan of attempt 1 on member rs0-2 (node-b), without KMIP or tolerations.
    fn plan_for<'a>(job: &'a BackupJob, snap: &'a Snapshot) -> PodPlan<'a> {
        PodPlan {
            snapshot: snap,
            job,
            attempt: 1,
            member: "rs0-2",
            member_role: "SECONDARY",
            member_reason: "named",
            node: Some("node-b"),
            data_claim: "mongo-data-rs0-2",
            run_as: RunAs { uid: 999, gid: 999 },
            image: "snapcrypt:test",
            progress_interval: 2.0,
            agent_env: &[],
            kmip: None,
            member_tolerations: &[],
            cluster: "",
        }
    }

    fn container(pod: &Pod) -> &Container {
        &pod.spec.as_ref().expect("spec").containers[0]
    }

    fn arg_after<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
        let args = c.args.as_ref().expect("args");
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    }

    #[test]
    fn retention_is_passed_to_the_agent_scoped_to_the_job() {
        let pod = build(&job(&format!(
            "{PVC_LOCAL}  retention: {{keepLast: 7, keepMonthly: 12, maxAge: 400d}}\n"
        )))
        .expect("pod");
        let c = container(&pod);
        assert_eq!(arg_after(c, "--keep-last"), Some("7"));
        assert_eq!(arg_after(c, "--keep-daily"), None);
        assert_eq!(arg_after(c, "--keep-monthly"), Some("12"));
        assert_eq!(arg_after(c, "--max-age"), Some("400d"));
        let scope: Vec<&str> = c
            .args
            .as_ref()
            .expect("args")
            .windows(2)
            .filter(|w| w[0] == "--prune-tag")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(scope, ["backupjob=db/rs0", "trigger=schedule"]);
        // A Snapshot the job made (its controller owner) is tagged as the schedule's.
        let job7 = job(&format!("{PVC_LOCAL}  retention: {{keepLast: 7}}\n"));
        let mut scheduled = snapshot();
        scheduled.metadata.owner_references =
            Some(vec![job7.controller_owner_ref(&()).expect("owner")]);
        assert!(made_by_job(&scheduled, &job7));
        assert!(!made_by_job(&snapshot(), &job7));
        let pod = build_for(&job7, &scheduled).expect("pod");
        assert!(
            container(&pod)
                .args
                .as_ref()
                .expect("args")
                .windows(2)
                .any(|w| w[0] == "--tag" && w[1] == "trigger=schedule")
        );
        // An empty policy keeps everything: no pass at all.
        let pod = build(&job(&format!("{PVC_LOCAL}  retention: {{}}\n"))).expect("pod");
        assert_eq!(arg_after(container(&pod), "--prune-tag"), None);
        // Least privilege: with retention credentials the job's retention pod prunes, and the
        // snapshot pod neither prunes nor sees them.
        let pod = build(&job(&format!(
            "{PVC_LOCAL}  retention: {{keepLast: 7, credentialsSecret: pruner}}\n"
        )))
        .expect("pod");
        assert_eq!(arg_after(container(&pod), "--keep-last"), None);
        assert_eq!(arg_after(container(&pod), "--prune-tag"), None);
        assert!(
            !serde_json::to_string(&pod)
                .expect("json")
                .contains("pruner")
        );
    }

    #[test]
    fn pvc_destination_with_a_local_key() {
        let pod = build(&job(PVC_LOCAL)).expect("pod");
        assert_eq!(pod.name_any(), "rs0-202611270300-2");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        // A run that hangs is stopped by the kubelet: placement.runTimeout, 24h by default.
        assert_eq!(spec.active_deadline_seconds, Some(86_400));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("snapcrypt-agent-rs0")
        );
        let term = &spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .expect("node affinity")
            .node_selector_terms[0];
        let field = &term.match_fields.as_ref().expect("fields")[0];
        assert_eq!(
            (field.key.as_str(), field.values.as_deref()),
            ("metadata.name", Some(&["node-b".to_string()][..]))
        );
        let c = container(&pod);
        assert_eq!(c.image.as_deref(), Some("snapcrypt:test"));
        assert_eq!(c.command.as_deref(), Some(&["snapcrypt".to_string()][..]));
        assert_eq!(&c.args.as_ref().expect("args")[..2], ["agent", "snapshot"]);
        assert_eq!(arg_after(c, "--source"), Some("/data/source/db"));
        assert_eq!(arg_after(c, "--repo"), Some("/repo/clusters/rs0"));
        assert_eq!(
            arg_after(c, "--key-file"),
            Some("/etc/snapcrypt/key/key.json")
        );
        assert_eq!(arg_after(c, "--max-files"), Some("5000"));
        assert_eq!(arg_after(c, "--compression"), Some("zstd"));
        assert_eq!(arg_after(c, "--host"), Some("backupjob:db/rs0"));
        let tags: Vec<&str> = c
            .args
            .as_ref()
            .expect("args")
            .windows(2)
            .filter(|w| w[0] == "--tag")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            tags,
            [
                "backupjob=db/rs0",
                "capture=stoppedMember",
                "member=rs0-2",
                "reason=nightly",
                "snapshot=db/rs0-202611270300",
                "trigger=on-demand"
            ]
        );
        // No cluster named (an operator names one): no claim on the job's snapshots.
        assert_eq!(arg_after(c, "--cluster"), None);
        // No retention policy: the agent prunes nothing.
        assert_eq!(arg_after(c, "--prune-tag"), None);
        assert_eq!(arg_after(c, "--keep-last"), None);
        // The data volume is the member's claim, read-only; the key Secret is read-only.
        let vols = spec.volumes.as_ref().expect("volumes");
        let source = vols.iter().find(|v| v.name == "source").expect("source");
        let claim = source.persistent_volume_claim.as_ref().expect("claim");
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("mongo-data-rs0-2", Some(true))
        );
        let mounts = c.volume_mounts.as_ref().expect("mounts");
        for (name, path, ro) in [
            ("source", "/data/source", Some(true)),
            ("tmp", "/tmp", None),
            ("repo", "/repo", None),
            ("key", "/etc/snapcrypt/key", Some(true)),
        ] {
            let m = mounts.iter().find(|m| m.name == name).expect(name);
            assert_eq!((m.mount_path.as_str(), m.read_only), (path, ro), "{name}");
        }
        let key = vols
            .iter()
            .find(|v| v.name == "key")
            .and_then(|v| v.secret.as_ref())
            .expect("key");
        assert_eq!(key.secret_name.as_deref(), Some("rs0-key"));
        assert_eq!(key.items.as_ref().expect("items")[0].key, "key.json");
        // Restricted security context.
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        let psc = spec
            .security_context
            .as_ref()
            .expect("pod security context");
        assert_eq!((psc.run_as_user, psc.run_as_group), (Some(999), Some(999)));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(
            c.termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
        let env: BTreeMap<&str, Option<&str>> = c
            .env
            .as_ref()
            .expect("env")
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(env["SNAPCRYPT_NAMESPACE"], Some("db"));
        assert_eq!(env["SNAPCRYPT_SNAPSHOT"], Some("rs0-202611270300"));
        assert_eq!(env["SNAPCRYPT_TMPDIR"], Some("/tmp"));
        let pod_name = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SNAPCRYPT_POD_NAME");
        assert_eq!(
            pod_name
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("metadata.name"),
            "the agent's result report names its pod"
        );
        assert_eq!(
            env["SNAPCRYPT_TERMINATION_LOG"],
            Some("/dev/termination-log")
        );
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some()
        );
        // Owned by the Snapshot; labelled with its uid and the attempt.
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Snapshot", Some(true))
        );
        assert_eq!(
            pod.labels()[SNAPSHOT_UID_LABEL],
            "5d0c4b8e-1f7a-4c44-9d53-0123456789ab"
        );
        assert_eq!(pod.labels()[ATTEMPT_LABEL], "2");
        assert_eq!(pod.annotations()[MEMBER_ANNOTATION], "rs0-2");
    }

    #[test]
    fn s3_destination_takes_credentials_from_the_secret() {
        let spec = PVC_LOCAL.replace(
            "destination: {pvc: {claimName: backups, path: clusters/rs0}}",
            "destination: {s3: {bucket: backups, prefix: /rs0/, endpoint: \"http://127.0.0.1:9000\", credentialsSecret: s3-creds, pathStyle: true}}",
        );
        let pod = build(&job(&spec)).expect("pod");
        let c = container(&pod);
        assert_eq!(arg_after(c, "--repo"), Some("s3://backups/rs0"));
        assert_eq!(arg_after(c, "--s3-endpoint"), Some("http://127.0.0.1:9000"));
        assert_eq!(arg_after(c, "--s3-region"), Some("us-east-1"));
        assert!(
            c.args
                .as_ref()
                .expect("args")
                .contains(&"--s3-path-style".to_string())
        );
        let env = c.env.as_ref().expect("env");
        let id = env
            .iter()
            .find(|e| e.name == "AWS_ACCESS_KEY_ID")
            .expect("key id");
        let r = id
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secret ref");
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("s3-creds", "AWS_ACCESS_KEY_ID")
        );
        let token = env
            .iter()
            .find(|e| e.name == "AWS_SESSION_TOKEN")
            .expect("token");
        assert_eq!(
            token
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .and_then(|r| r.optional),
            Some(true)
        );
        assert!(
            !pod.spec
                .as_ref()
                .expect("spec")
                .volumes
                .as_ref()
                .expect("v")
                .iter()
                .any(|v| v.name == "repo")
        );
    }

    #[test]
    fn kmip_jobs_mount_the_tls_secret_and_name_the_active_key() {
        let spec = PVC_LOCAL.replace(
            "encryption: {localKeySecret: {name: rs0-key, key: key.json}}",
            "encryption: {kmipServerRef: {name: kmip}}",
        );
        let j = job(&spec);
        let snap = snapshot();
        let ks: KmipServer = serde_yaml::from_str(
            "apiVersion: snapcrypt.dev/v1alpha1\nkind: KmipServer\nmetadata: {name: kmip, namespace: db}\nspec: {endpoints: ['k1:5696', 'k2:5696'], tls: {secretName: kmip-tls, serverName: kmip.example}, masterKey: {create: {name: mk}}}",
        )
        .expect("kmip server");
        let mut plan = plan_for(&j, &snap);
        assert_eq!(snapshot_pod(&plan).err(), Some(PodError::KmipNotReady));
        plan.kmip = Some((&ks, "7"));
        let pod = snapshot_pod(&plan).expect("pod");
        let c = container(&pod);
        assert_eq!(arg_after(c, "--kmip-key-id"), Some("7"));
        assert_eq!(arg_after(c, "--kmip-server-name"), Some("kmip.example"));
        assert_eq!(
            arg_after(c, "--kmip-ca"),
            Some("/etc/snapcrypt/kmip/ca.crt")
        );
        let args = c.args.as_ref().expect("args");
        assert_eq!(args.iter().filter(|a| *a == "--kmip-endpoint").count(), 2);
        assert!(args.iter().any(|a| a == "--rewrap"));
        assert!(!args.iter().any(|a| a == "--key-file"));
        let vols = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        assert!(
            vols.iter()
                .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                    == Some("kmip-tls"))
        );
    }

    #[test]
    fn extra_environment_comes_first_and_never_replaces_the_agents() {
        let job = job(PVC_LOCAL);
        let snap = snapshot();
        let extra = [
            ("HTTPS_PROXY".to_string(), "http://proxy:3128".to_string()),
            ("SNAPCRYPT_NAMESPACE".to_string(), "elsewhere".to_string()),
        ];
        let pod = snapshot_pod(&PodPlan {
            agent_env: &extra,
            ..plan_for(&job, &snap)
        })
        .expect("pod");
        let envs = container(&pod).env.clone().unwrap_or_default();
        assert_eq!(envs[0].name, "HTTPS_PROXY");
        let ns: Vec<_> = envs
            .iter()
            .filter(|e| e.name == "SNAPCRYPT_NAMESPACE")
            .collect();
        assert_eq!(ns.len(), 1);
        assert_ne!(ns[0].value.as_deref(), Some("elsewhere"));
    }

    #[test]
    fn runs_as_the_members_user() {
        let member: Pod = serde_yaml::from_str(
            r#"
metadata: {name: rs0-0}
spec:
  securityContext: {runAsUser: 1001, fsGroup: 1001}
  containers:
  - name: sidecar
    image: x
    securityContext: {runAsUser: 5}
  - name: mongod
    image: mongo
    volumeMounts: [{name: mongo-data, mountPath: /data/db}]
"#,
        )
        .expect("pod");
        assert_eq!(
            member_run_as(&member, "mongo-data"),
            RunAs {
                uid: 1001,
                gid: 1001
            }
        );
        let root: Pod = serde_yaml::from_str(
            "metadata: {name: m}\nspec:\n  containers: [{name: mongod, image: mongo}]\n",
        )
        .expect("pod");
        assert_eq!(
            member_run_as(&root, "mongo-data"),
            RunAs { uid: 999, gid: 999 }
        );
    }

    #[test]
    fn placement_follows_the_member_and_the_spec() {
        let spec = format!(
            "{PVC_LOCAL}  placement: {{priorityClassName: backups, nodeSelector: {{disk: ssd}}, tolerations: [{{key: db, operator: Exists}}]}}\n"
        );
        let j = job(&spec);
        let snap = snapshot();
        let member: Vec<Toleration> = serde_yaml::from_str(
            "[{key: dedicated, operator: Equal, value: mongo, effect: NoSchedule}, {key: db, operator: Exists}]",
        )
        .expect("tolerations");
        let mut plan = PodPlan {
            member_tolerations: &member,
            ..plan_for(&j, &snap)
        };
        let spec = snapshot_pod(&plan).expect("pod").spec.expect("spec");
        let keys: Vec<_> = spec
            .tolerations
            .iter()
            .flatten()
            .map(|t| t.key.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            keys,
            vec!["dedicated", "db"],
            "the member's, then the spec's, once"
        );
        assert_eq!(spec.priority_class_name.as_deref(), Some("backups"));
        assert_eq!(spec.node_selector, None, "the member's node decides");
        plan.node = None;
        let spec = snapshot_pod(&plan).expect("pod").spec.expect("spec");
        assert_eq!(
            spec.node_selector
                .and_then(|n| n.get("disk").cloned())
                .as_deref(),
            Some("ssd")
        );
        assert!(spec.affinity.is_none());
    }
}
