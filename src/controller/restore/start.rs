//! Starting a Restore, pure: from its Snapshot, BackupJob, references and target claim as
//! dereference read them, validate (the spec, a target that holds the repository, a target
//! another pod is using), build the restore pod, and the changes that start it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::build::{Chosen, Outcome, RestorePlan, Step, restore_pod};
use super::dereference::World;
use super::{Error, RECHECK, after};
use crate::api::Restore;
use crate::api::RestoreSpec;
use crate::api::destination::Destination;
use crate::api::restore::RestoreSource;
use crate::api::snapshot::JOB_TAG;
use crate::api::snapshot::RunPhase;
use crate::controller::agent::identity::{RunObject, identity_changes, own_identity_changes};
use crate::controller::agent::job::Blocked;
use crate::controller::agent::node::{claims_mounted, has_ended};
use crate::controller::agent::pod::AgentRepo;
use crate::controller::context::OperatorConfig;
use crate::controller::execute::Change;
use crate::controller::job_spec::consistency::DEFAULT_RUN_TIMEOUT;
use crate::controller::job_spec::validate::label_selector_problem;
use crate::controller::names::{
    CHECK_RESTORE_UID_LABEL, RESTORE_UID_LABEL, restore_service_account,
};
use crate::controller::reason::Reason;
use crate::engine::repo::Which;

/// What the spec asks that cannot be done (the CRD's rules say the same, for API servers
/// that do not run them).
pub(super) fn spec_problem(r: &Restore) -> Option<String> {
    if let Some(problem) = shape_problem(&r.spec) {
        return Some(problem);
    }
    let t = r.spec.one_target();
    if t.delete_extra && !t.force {
        return Some("spec.target.deleteExtra: true needs spec.target.force: true (deleteExtra removes what a non-empty target holds that the snapshot does not; without force a non-empty target is refused)".to_string());
    }
    r.spec
        .check
        .as_ref()
        .and_then(|c| crate::controller::job_spec::checks::check_env_problem("spec.check", c))
}

/// The spec's shape: exactly one of snapshotRef and source, and of target and targets; a
/// snapshot spec.source can choose (the CRD's rules say the same, for API servers that do not
/// run them). Pure.
pub(super) fn shape_problem(spec: &RestoreSpec) -> Option<String> {
    let which = match (&spec.snapshot_ref, &spec.source) {
        (Some(_), Some(_)) => Some("both spec.snapshotRef and spec.source are set"),
        (None, None) => Some("neither spec.snapshotRef nor spec.source is set"),
        _ => None,
    };
    if let Some(what) = which {
        return Some(format!(
            "{what}: set exactly one (snapshotRef names a Snapshot object of this namespace; source names a repository and a snapshot in it, for a cluster without the Snapshot objects)"
        ));
    }
    let where_ = match (&spec.target, &spec.targets) {
        (Some(_), Some(_)) => Some("both spec.target and spec.targets are set"),
        (None, None) => Some("neither spec.target nor spec.targets is set"),
        _ => None,
    };
    if let Some(what) = where_ {
        return Some(format!(
            "{what}: set exactly one (target names one claim; targets several, such as every member of a replica set)"
        ));
    }
    if let Some(t) = &spec.targets {
        if t.claim_names.is_empty() == t.selector.is_none() {
            return Some("spec.targets: set exactly one of claimNames (a list) or selector (the members' data claims by label)".into());
        }
        if t.delete_extra && !t.force {
            return Some("spec.targets.deleteExtra: true needs spec.targets.force: true".into());
        }
        if let Some(problem) = t
            .selector
            .as_ref()
            .and_then(|sel| label_selector_problem("spec.targets.selector", sel))
        {
            return Some(problem);
        }
    }
    let source = spec.source.as_ref()?;
    Which::parse(&source.snapshot)
        .err()
        .map(|e| format!("spec.source.snapshot: {e}"))
}

/// A target claim that holds the repository (`destination`, a job's or spec.source's, named
/// as `whose`): refused before any pod starts (a restore into it could overwrite or remove the
/// backups it reads). Pure.
pub(super) fn target_is_repository(
    r: &Restore,
    destination: &Destination,
    whose: &str,
) -> Option<String> {
    let pvc = destination.pvc.as_ref()?;
    let claim = &r.spec.one_target().claim_name;
    (pvc.claim_name == *claim).then(|| {
        format!(
            "spec.target.claimName: {claim} holds the repository of {whose}: a restore into it could overwrite or remove the backups it reads; restore into another claim"
        )
    })
}

/// The Restore's Snapshot id in the repository, once it has succeeded; else the step that
/// says why not (waiting for it, or failed for good). Pure.
fn snapshot_to_restore(r: &Restore, w: &World) -> Result<String, (Step, Option<Duration>)> {
    let ns = r.namespace().unwrap_or_default();
    let wait = |reason: Reason, message: String| (Step::Wait { reason, message }, Some(RECHECK));
    let snap_name = &r.spec.snapshot_name();
    let Some(snap) = &w.snapshot else {
        return Err(wait(
            Reason::SnapshotNotFound,
            format!("spec.snapshotRef.name: Snapshot {snap_name} does not exist in namespace {ns}"),
        ));
    };
    let st = snap.status.clone().unwrap_or_default();
    match (st.phase, st.repository_snapshot_id.as_deref()) {
        (RunPhase::Succeeded, Some(id)) => Ok(id.to_string()),
        (RunPhase::Failed, _) => Err((
            Step::failed(
                Reason::SnapshotFailed,
                format!(
                    "spec.snapshotRef.name: Snapshot {snap_name} failed, so there is nothing to restore"
                ),
            ),
            None,
        )),
        (phase, _) => Err(wait(
            Reason::SnapshotNotReady,
            format!(
                "spec.snapshotRef.name: Snapshot {snap_name} is {phase:?}; the restore starts once it has succeeded"
            ),
        )),
    }
}

/// Starting the restore pod, from what dereference read: validate, the scratch claim if one
/// is asked for, build the pod; the changes that start it (the agent's identity, the pod), the
/// step for status and when to look again. Pure.
pub(super) fn plan_start(
    r: &Restore,
    w: &World,
    config: &OperatorConfig,
) -> Result<Outcome, Error> {
    let wait = |reason: Reason, message: String| {
        Ok(nothing(Step::Wait { reason, message }, Some(RECHECK)))
    };
    let blocked = |b: &Blocked| wait(b.reason, b.message.clone());
    let invalid = |message: String| Ok(nothing(Step::failed(Reason::InvalidSpec, message), None));
    if let Some(message) = spec_problem(r) {
        return invalid(message);
    }
    let id;
    let run = RunObject::of(r, "restores");
    // The repository and key, the snapshot, and the agent's identity: a Snapshot's job's, or
    // spec.source's with an identity of the Restore's own.
    let (repo, chosen, mut changes) = match &r.spec.source {
        None => {
            id = match snapshot_to_restore(r, w) {
                Ok(id) => id,
                Err((step, requeue)) => return Ok(nothing(step, requeue)),
            };
            let Some(job) = &w.job else {
                let snap_name = r.spec.snapshot_name();
                let job_name = w
                    .snapshot
                    .as_ref()
                    .map(|s| s.spec.backup_job_ref.name.clone())
                    .unwrap_or_default();
                return wait(
                    Reason::BackupJobNotFound,
                    format!(
                        "Snapshot {snap_name} belongs to BackupJob {job_name}, which does not exist: its repository and key are unknown (restore with spec.source naming them instead)"
                    ),
                );
            };
            let whose = format!(
                "BackupJob {} (its spec.destination.pvc.claimName)",
                job.name_any()
            );
            if let Some(message) = target_is_repository(r, &job.spec.destination, &whose) {
                return invalid(message);
            }
            let identity = identity_changes("apply_rbac", job, run.as_ref());
            (AgentRepo::of_job(job), Chosen::Id(&id), identity)
        }
        Some(source) => {
            let whose = "spec.source (its destination.pvc.claimName)";
            if let Some(message) = target_is_repository(r, &source.destination, whose) {
                return invalid(message);
            }
            let ns = r.namespace();
            let sa = restore_service_account(&r.name_any());
            let identity = match &run {
                Some(run) => {
                    own_identity_changes("apply_rbac", &sa, ns.clone(), run, &source.destination)
                }
                None => Vec::new(),
            };
            let repo = AgentRepo {
                destination: &source.destination,
                encryption: &source.encryption,
                service_account: sa,
                resources: None,
                deadline_seconds: DEFAULT_RUN_TIMEOUT.as_secs() as i64,
                labels: Default::default(),
            };
            (repo, source_choice(r, source), identity)
        }
    };
    if let Some(b) = &w.blocked {
        return blocked(b);
    }
    let kmip = match &w.kmip {
        Some(Ok(k)) => k.as_ref(),
        Some(Err(b)) => return blocked(b),
        None => None,
    };

    // The target claim: created first if it is a scratch claim.
    let mut start = match after::plan_scratch(r, w.target.as_ref())? {
        Ok(scratch) => scratch,
        Err(step) => return Ok(nothing(step, None)),
    };
    if let Some((reason, message)) = target_not_ready(r, w) {
        return wait(reason, message);
    }

    // Build (pure); the agent's identity goes before the pod.
    let pod = match restore_pod(&RestorePlan {
        restore: r,
        repo,
        snapshot: chosen,
        image: &config.agent_image,
        progress_interval: config.agent_progress_interval,
        agent_env: &config.agent_env,
        kmip: kmip.map(|(ks, key)| (ks, key.as_str())),
    }) {
        Ok(p) => p,
        Err(e) => return invalid(e.to_string()),
    };
    start.append(&mut changes);
    start.push(Change::apply("apply_pod", &pod));
    Ok(Outcome {
        step: Step::Started {
            pod: pod.name_any(),
        },
        check: None,
        changes: start,
        requeue: None,
    })
}

/// spec.source's snapshot, among its job's (the tag backupjob=NAMESPACE/NAME, a bare name
/// being of the Restore's namespace) with spec.source.tags.
fn source_choice<'a>(r: &Restore, source: &'a RestoreSource) -> Chosen<'a> {
    let job = if source.backup_job.contains('/') {
        source.backup_job.clone()
    } else {
        format!(
            "{}/{}",
            r.namespace().unwrap_or_default(),
            source.backup_job
        )
    };
    let mut tags = source.tags.clone();
    tags.insert(JOB_TAG.into(), job);
    Chosen::Select {
        snapshot: &source.snapshot,
        tags,
    }
}

/// A decision that changes nothing (yet).
fn nothing(step: Step, requeue: Option<Duration>) -> Outcome {
    Outcome {
        step,
        check: None,
        changes: Vec::new(),
        requeue,
    }
}

/// Why the target claim cannot be written yet, if it cannot: it does not exist (and is not a
/// scratch claim this reconcile creates), or a pod still running mounts it. Pure.
fn target_not_ready(r: &Restore, w: &World) -> Option<(Reason, String)> {
    let ns = r.namespace().unwrap_or_default();
    let claim = &r.spec.one_target().claim_name;
    if w.target.is_none() && r.spec.one_target().scratch.is_none() {
        return Some((
            Reason::TargetClaimNotFound,
            format!(
                "spec.target.claimName: PersistentVolumeClaim {claim} does not exist in namespace {ns}"
            ),
        ));
    }
    target_in_use(r, &w.namespace_pods).map(|m| (Reason::TargetInUse, m))
}

/// The target claim mounted by a pod that is not done and not this Restore's own: the
/// restore waits (a running mongod would have its files replaced under it). Pure.
pub(super) fn target_in_use(r: &Restore, pods: &[Pod]) -> Option<String> {
    let claim = &r.spec.one_target().claim_name;
    let uid = r.uid().unwrap_or_default();
    let users = claim_users(claim, pods, &[uid.as_str()]);
    if users.is_empty() {
        return None;
    }
    Some(format!(
        "spec.target.claimName: PersistentVolumeClaim {claim} is in use by pod {}: a restore would replace files under a running process (mongod cannot recover from that); stop it first (scale its StatefulSet to 0), and the restore starts once no pod uses the claim",
        users.join(", pod ")
    ))
}

/// The pods, by name and sorted, that mount `claim` and have not ended, other than the
/// restore and check pods of the Restores `own` (uids). Pure.
pub(super) fn claim_users(claim: &str, pods: &[Pod], own: &[&str]) -> Vec<String> {
    let mut users: Vec<String> = pods
        .iter()
        .filter(|p| {
            let l = p.labels();
            let of = |label: &str| l.get(label).is_some_and(|v| own.contains(&v.as_str()));
            !of(RESTORE_UID_LABEL) && !of(CHECK_RESTORE_UID_LABEL)
        })
        .filter(|p| !has_ended(p))
        .filter(|p| claims_mounted(p).any(|c| c == claim))
        .map(|p| p.name_any())
        .collect();
    users.sort();
    users
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::restore;

    fn pod(name: &str, claim: &str, phase: &str, labels: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  containers: [{{name: c, image: i}}]
  volumes: [{{name: v, persistentVolumeClaim: {{claimName: {claim}}}}}]
status: {{phase: {phase}}}"
        ))
        .expect("pod")
    }

    /// #29 (and #31): a restore into a claim a running pod mounts waits, naming the pod and
    /// what to do; finished pods, other claims and the Restore's own pods do not count.
    #[test]
    fn a_target_claim_a_running_pod_uses_is_named_and_waited_for() {
        let r = restore("{claimName: data, force: true}");
        let mongod = pod("rs0-0", "data", "Running", "app: mongod");
        let message = target_in_use(&r, std::slice::from_ref(&mongod)).expect("in use");
        assert!(
            message.starts_with(
                "spec.target.claimName: PersistentVolumeClaim data is in use by pod rs0-0: a restore would replace files under a running process"
            ),
            "{message}"
        );
        assert!(message.contains("scale its StatefulSet to 0"), "{message}");
        let done = pod("old", "data", "Succeeded", "");
        let elsewhere = pod("rs1-0", "other", "Running", "");
        let own = pod(
            "back-restore",
            "data",
            "Running",
            "snapcrypt.dev/restore-uid: r-uid",
        );
        assert_eq!(target_in_use(&r, &[done, elsewhere, own]), None);
    }
}
