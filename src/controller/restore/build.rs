//! Pure builders of what the Restore controller writes: the restore pod and the next status.

use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};

use crate::api::restore::RestoreStatus;
use crate::api::snapshot::RunPhase;
use crate::api::{KmipServer, Restore};
use crate::controller::agent::pod::{AgentRepo, JobAgentPod, PodError, job_agent_pod, mount};
use crate::controller::conditions::{self, merge};
use crate::controller::names::{RESTORE_UID_LABEL, restore_pod_name};
use crate::controller::reason::Reason;
use crate::engine::progress::human_bytes;
use crate::engine::restore::RestoreStats;

/// Where the target claim is mounted in the restore pod.
pub const TARGET_MOUNT: &str = "/target";

/// Everything the restore pod depends on, decided before building.
#[derive(Clone, Debug)]
pub struct RestorePlan<'a> {
    pub restore: &'a Restore,
    /// The repository and key (the Snapshot's BackupJob's, or spec.source's), and the
    /// identity and limits the pod runs under.
    pub repo: AgentRepo<'a>,
    /// Which snapshot.
    pub snapshot: Chosen<'a>,
    pub image: &'a str,
    /// Seconds between progress reports (the agent's default when 2).
    pub progress_interval: f64,
    /// Extra environment (the operator's --agent-env).
    pub agent_env: &'a [(String, String)],
    /// The KmipServer of a KMIP job, with its active master key id.
    pub kmip: Option<(&'a KmipServer, &'a str)>,
}

/// Which snapshot a restore pod restores.
#[derive(Clone, Debug, PartialEq)]
pub enum Chosen<'a> {
    /// A Snapshot object's repository snapshot.
    Id(&'a str),
    /// spec.source.snapshot (latest, an id, before:TIME) among the snapshots with these tags
    /// (the job's, and spec.source.tags): the pod chooses.
    Select {
        snapshot: &'a str,
        tags: std::collections::BTreeMap<String, String>,
    },
}

impl Chosen<'_> {
    /// As the agent's arguments.
    fn args(&self) -> Vec<String> {
        match self {
            Chosen::Id(id) => vec!["--snapshot".into(), (*id).into()],
            Chosen::Select { snapshot, tags } => {
                let mut args = vec!["--snapshot".into(), (*snapshot).into()];
                for (k, v) in tags {
                    args.extend(["--snapshot-tag".into(), format!("{k}={v}")]);
                }
                args
            }
        }
    }
}

/// The restore pod: `snapcrypt agent restore` with the repository read-only, the key, and the
/// target claim read-write. It runs as mongod's usual user (999) with that group as fsGroup,
/// so the restored files belong to whoever starts mongod on the volume, and the scheduler
/// places it where the target claim can be attached.
pub fn restore_pod(p: &RestorePlan) -> Result<Pod, PodError> {
    let r = p.restore;
    let owner = r.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = r.uid().ok_or(PodError::NoOwner)?;
    let name = r.name_any();
    let target = r.spec.one_target();
    let target_dir = match &target.path {
        Some(path) => format!("{TARGET_MOUNT}/{path}"),
        None => TARGET_MOUNT.to_string(),
    };
    let mut args: Vec<String> = vec!["agent".into(), "restore".into()];
    args.extend(p.snapshot.args());
    args.extend([
        "--target".into(),
        target_dir,
        // Every part of the target below the claim's mount is resolved without following a
        // link: a link planted in the claim never leads the restore elsewhere.
        "--target-within".into(),
        TARGET_MOUNT.into(),
        // A refusal names spec.target's fields, not the agent's flags.
        "--fixes-as-restore-spec".into(),
    ]);
    if target.force {
        args.push("--force".into());
        if target.delete_extra {
            args.push("--delete-extra".into());
        }
    }
    if r.spec.verify_restored {
        args.push("--check".into());
    }
    if (p.progress_interval - 2.0).abs() > f64::EPSILON {
        args.extend([
            "--progress-interval".into(),
            p.progress_interval.to_string(),
        ]);
    }
    job_agent_pod(JobAgentPod {
        repo: p.repo.clone(),
        kmip: p.kmip,
        image: p.image,
        agent_env: p.agent_env,
        name: restore_pod_name(&name),
        namespace: r.namespace(),
        owner,
        component: "restore",
        run_label: (RESTORE_UID_LABEL, uid),
        annotations: None,
        object_env: ("SNAPCRYPT_RESTORE", &name),
        args,
        volumes: vec![Volume {
            name: "target".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: target.claim_name.clone(),
                read_only: None,
            }),
            ..Default::default()
        }],
        mounts: vec![mount("target", TARGET_MOUNT, false)],
        target: None,
    })
}

/// What a reconcile found, as it matters to status.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Cannot start yet (or at all): a condition reason and a message naming the field.
    Wait { reason: Reason, message: String },
    /// The restore pod was created.
    Started { pod: String },
    /// The pod waits to run.
    PodPending { message: Option<String> },
    /// The pod is restoring.
    PodRunning { started: Option<Time> },
    /// Restored; the check container (pod) judges the result.
    Checking { pod: String },
    /// Restored and verified.
    Succeeded {
        stats: RestoreStats,
        finished: Option<Time>,
    },
    /// Given up: the agent's own message.
    Failed {
        reason: Reason,
        message: String,
        finished: Option<Time>,
    },
}

/// What a reconcile of an unfinished Restore decided: the step for status, the check's
/// status, the changes (carried out in order, before the status is written), when to look
/// again.
#[derive(Debug)]
pub struct Outcome {
    pub step: Step,
    pub check: Option<crate::api::restore::CheckStatus>,
    pub changes: Vec<crate::controller::execute::Change>,
    pub requeue: Option<std::time::Duration>,
}

impl Step {
    /// Given up now, for `reason` (the operator's decision: no pod's finish time).
    pub fn failed(reason: Reason, message: impl Into<String>) -> Self {
        Step::Failed {
            reason,
            message: message.into(),
            finished: None,
        }
    }
}

/// The next status from the previous one and the step. Pure.
pub fn next_status(
    prev: &RestoreStatus,
    step: &Step,
    target: &str,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> RestoreStatus {
    let now_t = Time(now);
    let mut s = prev.clone();
    s.observed_generation = generation;
    let conds = match step {
        Step::Wait { reason, message } => {
            s.phase = RunPhase::Pending;
            s.message = Some(message.clone());
            conditions::waiting(*reason, message)
        }
        Step::Started { pod } => {
            // Pending until the pod runs, as for a Snapshot.
            s.phase = RunPhase::Pending;
            s.pod_name = Some(pod.clone());
            let msg = format!("restore pod {pod} created");
            s.message = Some(msg.clone());
            conditions::under_way(Reason::Starting, Reason::PodCreated, &msg)
        }
        Step::PodPending { message } => {
            s.phase = RunPhase::Pending;
            let msg = format!(
                "restore pod waiting to run{}",
                message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            s.message = Some(msg.clone());
            conditions::under_way(Reason::Starting, Reason::PodPending, &msg)
        }
        Step::PodRunning { started } => {
            s.phase = RunPhase::Running;
            if s.start_time.is_none() {
                s.start_time = Some(started.clone().unwrap_or_else(|| now_t.clone()));
            }
            let msg = "restoring".to_string();
            s.message = Some(msg.clone());
            conditions::under_way(Reason::Restoring, Reason::Restoring, &msg)
        }
        Step::Checking { pod } => {
            s.phase = RunPhase::Running;
            let msg = format!("restored; check pod {pod} is judging the restored volume");
            s.message = Some(msg.clone());
            conditions::under_way(Reason::Checking, Reason::Checking, &msg)
        }
        Step::Succeeded { stats, finished } => {
            s.phase = RunPhase::Succeeded;
            s.snapshot_id = Some(stats.snapshot.clone());
            s.completion_time = Some(finished.clone().unwrap_or_else(|| now_t.clone()));
            let msg = format!(
                "restored snapshot {} into {target}: {} files, {}, every chunk verified{}",
                stats.snapshot,
                stats.files,
                human_bytes(stats.bytes),
                if stats.checked {
                    ", every file read back and matched"
                } else {
                    ""
                }
            );
            s.message = Some(msg.clone());
            conditions::finished(true, Reason::Restored, &msg)
        }
        Step::Failed {
            reason,
            message,
            finished,
        } => {
            s.phase = RunPhase::Failed;
            s.completion_time = Some(finished.clone().unwrap_or_else(|| now_t.clone()));
            s.message = Some(message.clone());
            conditions::finished(false, *reason, message)
        }
    };
    s.conditions = merge(&prev.conditions, &conds, generation, &now_t);
    s
}

/// Labels selecting the pods of the Restore with `uid`.
pub fn pod_selector(uid: &str) -> String {
    format!("{RESTORE_UID_LABEL}={uid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::agent::pod::{KEY_MOUNT, REPO_MOUNT};
    use crate::controller::fixtures::{job, restore};
    use k8s_openapi::api::core::v1::Container;

    const PVC_LOCAL: &str = "  source: {statefulSetName: rs0, dataVolumeName: mongo-data, syncSource: {mode: member, member: rs0-2}}\n  destination: {pvc: {claimName: backups, path: clusters/rs0}}\n  encryption: {localKeySecret: {name: rs0-key, key: key.json}}\n";

    fn arg_after<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
        let args = c.args.as_ref().expect("args");
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    }

    #[test]
    fn restore_pod_reads_the_repository_and_writes_the_target() {
        let j = job(PVC_LOCAL);
        // The restore pod for a target given as YAML.
        let pod_for = |target: &str| {
            restore_pod(&RestorePlan {
                restore: &restore(target),
                repo: AgentRepo::of_job(&j),
                snapshot: Chosen::Id("3f2a"),
                image: "snapcrypt:test",
                progress_interval: 2.0,
                agent_env: &[],
                kmip: None,
            })
            .expect("pod")
        };
        let pod = pod_for("{claimName: fresh-data, path: db, force: true}");
        assert_eq!(pod.name_any(), "back-restore");
        assert_eq!(pod.owner_references()[0].kind, "Restore");
        assert_eq!(pod.labels()[RESTORE_UID_LABEL], "r-uid");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("snapcrypt-agent-rs0")
        );
        assert!(spec.affinity.is_none(), "placed by the scheduler");
        let psc = spec.security_context.as_ref().expect("psc");
        assert_eq!(
            (psc.run_as_user, psc.fs_group, psc.run_as_non_root),
            (Some(999), Some(999), Some(true))
        );
        let c = &spec.containers[0];
        assert_eq!(&c.args.as_ref().expect("args")[..2], ["agent", "restore"]);
        assert_eq!(arg_after(c, "--snapshot"), Some("3f2a"));
        assert_eq!(arg_after(c, "--target"), Some("/target/db"));
        assert_eq!(arg_after(c, "--target-within"), Some(TARGET_MOUNT));
        assert_eq!(arg_after(c, "--repo"), Some("/repo/clusters/rs0"));
        assert!(c.args.as_ref().expect("args").contains(&"--force".into()));
        assert!(!c.args.as_ref().expect("args").contains(&"--rewrap".into()));
        let csc = c.security_context.as_ref().expect("csc");
        assert_eq!(csc.read_only_root_filesystem, Some(true));
        // The key is read-only; the target is written; the repository is writable for the
        // restore's shared lock.
        let mounts = c.volume_mounts.as_ref().expect("mounts");
        for (name, path, ro) in [
            ("target", TARGET_MOUNT, None),
            ("repo", REPO_MOUNT, None),
            ("key", KEY_MOUNT, Some(true)),
        ] {
            let m = mounts.iter().find(|m| m.name == name).expect(name);
            assert_eq!((m.mount_path.as_str(), m.read_only), (path, ro), "{name}");
        }
        let vols = spec.volumes.as_ref().expect("volumes");
        let repo = vols.iter().find(|v| v.name == "repo").expect("repo");
        assert_eq!(
            repo.persistent_volume_claim
                .as_ref()
                .and_then(|c| c.read_only),
            None
        );
        assert!(
            !c.args
                .as_ref()
                .expect("args")
                .contains(&"--delete-extra".into())
        );
        // The agent's container for a target given as YAML.
        let agent = |target: &str| {
            pod_for(target)
                .spec
                .expect("spec")
                .containers
                .swap_remove(0)
        };
        // Refusals name spec.target's fields, not the agent's flags.
        assert!(
            c.args
                .as_ref()
                .expect("args")
                .contains(&"--fixes-as-restore-spec".into())
        );
        // deleteExtra (with force) becomes --delete-extra.
        let c = agent("{claimName: data, force: true, deleteExtra: true}");
        let args = c.args.expect("args");
        assert!(args.contains(&"--force".into()) && args.contains(&"--delete-extra".into()));
        // Without a path the claim's root is the target; without force, no --force.
        let c = agent("{claimName: fresh-data}");
        assert_eq!(arg_after(&c, "--target"), Some("/target"));
        assert!(!c.args.as_ref().expect("args").contains(&"--force".into()));
    }

    #[test]
    fn a_kmip_job_without_an_active_key_cannot_build() {
        let r = restore("{claimName: fresh-data}");
        let j = job(
            "  source: {statefulSetName: rs0, dataVolumeName: d, syncSource: {mode: member, member: rs0-2}}\n  destination: {pvc: {claimName: backups}}\n  encryption: {kmipServerRef: {name: kms}}\n",
        );
        let e = restore_pod(&RestorePlan {
            restore: &r,
            repo: AgentRepo::of_job(&j),
            snapshot: Chosen::Id("x"),
            image: "i",
            progress_interval: 2.0,
            agent_env: &[],
            kmip: None,
        })
        .expect_err("no key");
        assert_eq!(e, PodError::KmipNotReady);
    }

    #[test]
    fn life_of_a_restore() {
        let now: jiff::Timestamp = "2026-11-28T01:00:00Z".parse().expect("t");
        let cond = |s: &RestoreStatus, t: &str| {
            let c = s.conditions.iter().find(|c| c.type_ == t).expect("cond");
            format!("{} {}", c.status, c.reason)
        };
        let waiting = next_status(
            &RestoreStatus::default(),
            &Step::Wait {
                reason: Reason::SnapshotNotReady,
                message: "spec.snapshotRef.name: Snapshot s is Running".into(),
            },
            "fresh-data",
            Some(1),
            now,
        );
        assert_eq!(waiting.phase, RunPhase::Pending);
        assert_eq!(cond(&waiting, "Ready"), "False SnapshotNotReady");
        let started = next_status(
            &waiting,
            &Step::Started {
                pod: "back-restore".into(),
            },
            "fresh-data",
            Some(1),
            now,
        );
        // A created pod is Pending until it runs, as for a Snapshot.
        assert_eq!(started.phase, RunPhase::Pending);
        assert_eq!(cond(&started, "Progressing"), "True PodCreated");
        assert_eq!(started.pod_name.as_deref(), Some("back-restore"));
        let done = next_status(
            &started,
            &Step::Succeeded {
                stats: RestoreStats {
                    snapshot: "3f2a".into(),
                    files: 9,
                    bytes: 2048,
                    read_without_lock: None,
                    checked: false,
                },
                finished: None,
            },
            "fresh-data/db",
            Some(1),
            now,
        );
        assert_eq!(done.phase, RunPhase::Succeeded);
        assert_eq!(cond(&done, "Ready"), "True Restored");
        assert_eq!(
            done.message.as_deref(),
            Some(
                "restored snapshot 3f2a into fresh-data/db: 9 files, 2.0 KiB, every chunk verified"
            )
        );
        let failed = next_status(
            &started,
            &Step::Failed {
                reason: Reason::RestoreFailed,
                message: "target /target is not empty".into(),
                finished: None,
            },
            "fresh-data",
            Some(1),
            now,
        );
        assert_eq!(failed.phase, RunPhase::Failed);
        assert_eq!(cond(&failed, "Failed"), "True RestoreFailed");
    }

    /// #29: a Restore that fails before its pod ran reports no restore: Failed with the
    /// reason, never Ready, no start time.
    #[test]
    fn a_restore_failed_before_its_pod_ran_reports_no_restore() {
        let waiting = next_status(
            &RestoreStatus::default(),
            &Step::Wait {
                reason: Reason::SecretNotFound,
                message: "Secret rs0-key not found".into(),
            },
            "claim restored",
            Some(1),
            "2026-11-27T03:00:00Z".parse().expect("t"),
        );
        let failed = next_status(
            &waiting,
            &Step::Failed {
                reason: Reason::TargetClaimNotFound,
                message: "spec.target.claimName restored: no such claim".into(),
                finished: None,
            },
            "claim restored",
            Some(1),
            "2026-11-27T03:01:00Z".parse().expect("t"),
        );
        assert_eq!(failed.phase, RunPhase::Failed);
        assert_eq!(failed.start_time, None);
        let ready = failed.conditions.iter().find(|c| c.type_ == "Ready");
        assert!(ready.is_some_and(|c| c.status == "False"), "{ready:?}");
        assert!(
            failed
                .message
                .as_deref()
                .is_some_and(|m| !m.contains("restored snapshot"))
        );
    }
}
