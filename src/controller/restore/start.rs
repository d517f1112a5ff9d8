//! Starting a Restore: dereference its Snapshot, BackupJob, references and target claim,
//! validate (the spec, a target that holds the repository, a target another pod is using),
//! build the restore pod (pure), apply the agent's identity and the pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::build::{RestorePlan, Step, restore_pod};
use super::{Error, RECHECK, after, dereference_error};
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, Restore, Snapshot};
use crate::controller::agent::identity::{RunObject, apply_agent_identity, apply_run_access};
use crate::controller::agent::job::{Blocked, Needs, check_job, job_kmip};
use crate::controller::context::Context;
use crate::controller::kube_api::apply;
use crate::controller::names::{CHECK_RESTORE_UID_LABEL, RESTORE_UID_LABEL};
use crate::controller::reason::Reason;

/// What the spec asks that cannot be done (the CRD's rules say the same, for API servers
/// that do not run them).
pub(super) fn spec_problem(r: &Restore) -> Option<String> {
    let t = &r.spec.target;
    if t.delete_extra && !t.force {
        return Some("spec.target.deleteExtra: true needs spec.target.force: true (deleteExtra removes what a non-empty target holds that the snapshot does not; without force a non-empty target is refused)".to_string());
    }
    r.spec
        .check
        .as_ref()
        .and_then(|c| crate::controller::job_spec::checks::check_env_problem("spec.check", c))
}

/// A target claim that holds the BackupJob's repository: refused before any pod starts (a
/// restore into it could overwrite or remove the backups it reads). Pure.
pub(super) fn target_is_repository(r: &Restore, job: &BackupJob) -> Option<String> {
    let pvc = job.spec.destination.pvc.as_ref()?;
    let claim = &r.spec.target.claim_name;
    (pvc.claim_name == *claim).then(|| {
        format!(
            "spec.target.claimName: {claim} holds the repository of BackupJob {} (its spec.destination.pvc.claimName): a restore into it could overwrite or remove the backups it reads; restore into another claim",
            job.name_any()
        )
    })
}

/// The Restore's Snapshot and its id in the repository, once it has succeeded; else the step
/// that says why not (waiting for it, or failed for good).
async fn snapshot_to_restore(
    r: &Restore,
    ctx: &Context,
) -> Result<Result<(Snapshot, String), (Step, Option<Duration>)>, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let client = &ctx.client;
    let deref = |what: &'static str| dereference_error(&name, what);
    let wait = |reason: Reason, message: String| (Step::Wait { reason, message }, Some(RECHECK));
    let snap_name = &r.spec.snapshot_ref.name;
    let Some(snap) = Api::<Snapshot>::namespaced(client.clone(), &ns)
        .get_opt(snap_name)
        .await
        .map_err(deref("Snapshot"))?
    else {
        return Ok(Err(wait(
            Reason::SnapshotNotFound,
            format!("spec.snapshotRef.name: Snapshot {snap_name} does not exist in namespace {ns}"),
        )));
    };
    let st = snap.status.clone().unwrap_or_default();
    let id = match (st.phase, st.repository_snapshot_id.as_deref()) {
        (RunPhase::Succeeded, Some(id)) => id.to_string(),
        (RunPhase::Failed, _) => {
            return Ok(Err((
                Step::Failed {
                    reason: Reason::SnapshotFailed,
                    message: format!(
                        "spec.snapshotRef.name: Snapshot {snap_name} failed, so there is nothing to restore"
                    ),
                    finished: None,
                },
                None,
            )));
        }
        (phase, _) => {
            return Ok(Err(wait(
                Reason::SnapshotNotReady,
                format!(
                    "spec.snapshotRef.name: Snapshot {snap_name} is {phase:?}; the restore starts once it has succeeded"
                ),
            )));
        }
    };

    Ok(Ok((snap, id)))
}

/// Dereference, validate, build and apply the restore pod. Returns the step for status and
/// when to look again.
pub(super) async fn start(r: &Restore, ctx: &Context) -> Result<(Step, Option<Duration>), Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let client = &ctx.client;
    let deref = |what: &'static str| dereference_error(&name, what);
    let wait =
        |reason: Reason, message: String| Ok((Step::Wait { reason, message }, Some(RECHECK)));
    let blocked = |b: Blocked| wait(b.reason, b.message);
    let invalid = |message: String| -> Result<(Step, Option<Duration>), Error> {
        let reason = Reason::InvalidSpec;
        Ok((
            Step::Failed {
                reason,
                message,
                finished: None,
            },
            None,
        ))
    };
    if let Some(message) = spec_problem(r) {
        return invalid(message);
    }

    // The Snapshot, finished and successful.
    let (snap, id) = match snapshot_to_restore(r, ctx).await? {
        Ok(found) => found,
        Err(step) => return Ok(step),
    };
    let snap_name = &r.spec.snapshot_ref.name;

    // Its BackupJob: the repository and key.
    let job_name = &snap.spec.backup_job_ref.name;
    let Some(job) = Api::<BackupJob>::namespaced(client.clone(), &ns)
        .get_opt(job_name)
        .await
        .map_err(deref("BackupJob"))?
    else {
        return wait(
            Reason::BackupJobNotFound,
            format!(
                "Snapshot {snap_name} belongs to BackupJob {job_name}, which does not exist: its repository and key are unknown (restore with `snapcrypt restore` instead)"
            ),
        );
    };
    if let Some(message) = target_is_repository(r, &job) {
        return invalid(message);
    }
    if let Some(b) = check_job(client, &ns, &job, Needs::RepositoryAndKey)
        .await
        .map_err(deref("the BackupJob's references"))?
    {
        return blocked(b);
    }
    let kmip = match job_kmip(client, &ns, &job)
        .await
        .map_err(deref("KmipServer"))?
    {
        Ok(k) => k,
        Err(b) => return blocked(b),
    };

    // The target claim: created first if it is a scratch claim.
    if let Some(step) = after::ensure_scratch(r, ctx).await? {
        return Ok((step, None));
    }
    if let Some((reason, message)) = target_not_ready(r, ctx).await? {
        return wait(reason, message);
    }

    // Build (pure), then apply the agent's identity and the pod.
    let pod = match restore_pod(&RestorePlan {
        restore: r,
        job: &job,
        snapshot_id: &id,
        image: &ctx.config.agent_image,
        progress_interval: ctx.config.agent_progress_interval,
        agent_env: &ctx.config.agent_env,
        kmip: kmip.as_ref().map(|(ks, key)| (ks, key.as_str())),
    }) {
        Ok(p) => p,
        Err(e) => return invalid(format!("BackupJob {job_name}: {e}")),
    };
    let rbac = |(object, source)| Error::ApplyRbac {
        restore: name.clone(),
        object,
        source,
    };
    apply_agent_identity(ctx, &ns, &job).await.map_err(rbac)?;
    if let Some(run) = RunObject::of(r, "restores") {
        apply_run_access(ctx, &ns, &job, &run).await.map_err(rbac)?;
    }
    let created = apply(&Api::<Pod>::namespaced(client.clone(), &ns), &pod)
        .await
        .map_err(|source| Error::ApplyPod {
            restore: name.clone(),
            pod: pod.name_any(),
            source,
        })?;
    Ok((
        Step::Started {
            pod: created.name_any(),
        },
        None,
    ))
}

/// Why the target claim cannot be written yet, if it cannot: it does not exist, or a pod
/// still running mounts it.
async fn target_not_ready(r: &Restore, ctx: &Context) -> Result<Option<(Reason, String)>, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let claim = &r.spec.target.claim_name;
    if Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .get_opt(claim)
        .await
        .map_err(dereference_error(&name, "target PersistentVolumeClaim"))?
        .is_none()
    {
        return Ok(Some((
            Reason::TargetClaimNotFound,
            format!(
                "spec.target.claimName: PersistentVolumeClaim {claim} does not exist in namespace {ns}"
            ),
        )));
    }
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(dereference_error(&name, "the pods using the target claim"))?;
    Ok(target_in_use(r, &pods.items).map(|m| (Reason::TargetInUse, m)))
}

/// The target claim mounted by a pod that is not done and not this Restore's own: the
/// restore waits (a running mongod would have its files replaced under it). Pure.
pub(super) fn target_in_use(r: &Restore, pods: &[Pod]) -> Option<String> {
    let claim = &r.spec.target.claim_name;
    let uid = r.uid().unwrap_or_default();
    let mut users: Vec<String> = pods
        .iter()
        .filter(|p| {
            let l = p.labels();
            l.get(RESTORE_UID_LABEL) != Some(&uid) && l.get(CHECK_RESTORE_UID_LABEL) != Some(&uid)
        })
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter(|p| {
            p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| &c.claim_name == claim)
                })
        })
        .map(|p| p.name_any())
        .collect();
    if users.is_empty() {
        return None;
    }
    users.sort();
    Some(format!(
        "spec.target.claimName: PersistentVolumeClaim {claim} is in use by pod {}: a restore would replace files under a running process (mongod cannot recover from that); stop it first (scale its StatefulSet to 0), and the restore starts once no pod uses the claim",
        users.join(", pod ")
    ))
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
