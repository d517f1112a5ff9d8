//! The Restore's steps around its restore pod: the scratch claim created before it
//! (spec.target.scratch), the check pod run after it (spec.check), and the scratch claim
//! deleted once the Restore is over, whatever happened.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::build::Step;
use super::check::{
    check_network_policy, check_pod, check_result, check_step, is_own_claim, scratch_claim,
};
use super::{Error, dereference_error};
use crate::api::Restore;
use crate::api::restore::{CheckStatus, RestoreStatus};
use crate::api::verification::CheckResult;
use crate::controller::agent::deadline::{Deadline, deadline};
use crate::controller::agent::node::{needs_stopping, node_of, stop_pod};
use crate::controller::agent::run::RunStep;
use crate::controller::context::Context;
use crate::controller::kube_api::{apply, apply_status, delete_named, delete_own_pod};
use crate::controller::names::CHECK_RESTORE_UID_LABEL;
use crate::controller::reason::Reason;

/// How often a running check is looked at besides its pod's changes (its deadlines).
const CHECK_RECHECK: Duration = Duration::from_secs(30);

/// Create the scratch claim if spec.target.scratch asks for one. `Some(step)`: the restore
/// cannot go on (the claim exists and is not this Restore's).
pub async fn ensure_scratch(r: &Restore, ctx: &Context) -> Result<Option<Step>, Error> {
    let Some(scratch) = &r.spec.target.scratch else {
        return Ok(None);
    };
    let name = r.name_any();
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &r.namespace().unwrap_or_default());
    let claim = &r.spec.target.claim_name;
    if let Some(existing) = api
        .get_opt(claim)
        .await
        .map_err(dereference_error(&name, "scratch claim"))?
    {
        if is_own_claim(r, &existing) {
            return Ok(None);
        }
        return Ok(Some(Step::Failed {
            reason: Reason::ScratchClaimExists,
            message: format!(
                "spec.target.scratch: claim {claim} already exists and was not created by this Restore; nothing was written to it"
            ),
            finished: None,
        }));
    }
    let pvc = scratch_claim(r, scratch).map_err(|e| Error::Build {
        restore: name.clone(),
        reason: e.to_string(),
    })?;
    apply(&api, &pvc)
        .await
        .map_err(|source| Error::ApplyScratch {
            restore: name.clone(),
            source,
        })?;
    ctx.event(
        r,
        Reason::ScratchClaimCreated,
        format!("created scratch claim {claim} ({:?})", scratch.size.0),
    )
    .await;
    Ok(None)
}

/// After a successful restore pod: the check pod's run (started if there is none yet), as the
/// Restore's step; the step as it was without spec.check.
pub async fn run_check(
    r: &Restore,
    ctx: &Context,
    restored: Step,
) -> Result<(Step, Option<Duration>, Option<CheckStatus>), Error> {
    let (Some(check), Step::Succeeded { stats, .. }) = (&r.spec.check, &restored) else {
        return Ok((restored, None, None));
    };
    let name = r.name_any();
    let ns = r.namespace().unwrap_or_default();
    let uid = r.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector =
        format!("{CHECK_RESTORE_UID_LABEL}={uid},app.kubernetes.io/component=restore-check");
    let found = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(dereference_error(&name, "check pod"))?
        .items
        .into_iter()
        .next();
    let Some(pod) = found else {
        let build = |e: crate::controller::agent::pod::PodError| Error::Build {
            restore: name.clone(),
            reason: e.to_string(),
        };
        let pod = check_pod(r, check).map_err(build)?;
        // Its NetworkPolicy first, so the pod never runs without it.
        let policy = check_network_policy(r, check).map_err(build)?;
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        apply(&policies, &policy)
            .await
            .map_err(|source| Error::ApplyPod {
                restore: name.clone(),
                pod: format!("the check's NetworkPolicy {}", policy.name_any()),
                source,
            })?;
        let created = apply(&api, &pod).await.map_err(|source| Error::ApplyPod {
            restore: name.clone(),
            pod: pod.name_any(),
            source,
        })?;
        let pod = created.name_any();
        let status = CheckStatus {
            pod: pod.clone(),
            ..Default::default()
        };
        return Ok((Step::Checking { pod }, Some(CHECK_RECHECK), Some(status)));
    };
    let step = check_step(&pod);
    let (verdict, finished) = match check_result(&pod, &step) {
        Some(judged) => judged,
        None => match overrun(&api, &pod, &step, ctx, &name).await? {
            Some(why) => {
                let status = CheckStatus {
                    pod: pod.name_any(),
                    result: CheckResult::Failed,
                    message: Some(why),
                };
                (status, None)
            }
            None => {
                let status = CheckStatus {
                    pod: pod.name_any(),
                    ..Default::default()
                };
                let step = Step::Checking {
                    pod: pod.name_any(),
                };
                return Ok((step, Some(CHECK_RECHECK), Some(status)));
            }
        },
    };
    let step = match verdict.result {
        CheckResult::Failed => Step::Failed {
            reason: Reason::CheckFailed,
            message: format!(
                "restored snapshot {}, but check pod {} failed: {}",
                stats.snapshot,
                pod.name_any(),
                verdict.message.as_deref().unwrap_or("no message")
            ),
            finished: finished.clone(),
        },
        _ => Step::Succeeded {
            stats: stats.clone(),
            finished,
        },
    };
    Ok((step, None, Some(verdict)))
}

/// Why a check pod that has not ended is stopped (pendingTimeout or nodeLostTimeout, at their
/// defaults; its run time is bounded by activeDeadlineSeconds), if it is.
async fn overrun(
    api: &Api<Pod>,
    pod: &Pod,
    step: &RunStep<String>,
    ctx: &Context,
    restore: &str,
) -> Result<Option<String>, Error> {
    let node = node_of(&ctx.client, pod)
        .await
        .map_err(dereference_error(restore, "the check pod's Node"))?;
    match deadline(
        pod,
        step,
        None,
        node.as_ref(),
        jiff::Timestamp::now(),
        "check",
    ) {
        Deadline::Within(_) => Ok(None),
        Deadline::Overrun(why) => {
            if needs_stopping(pod, node.as_ref()) {
                stop_pod(api, pod, node.as_ref())
                    .await
                    .map_err(|source| Error::StopPod {
                        restore: restore.to_string(),
                        pod: pod.name_any(),
                        source,
                    })?;
            }
            Ok(Some(why))
        }
    }
}

/// A finished Restore's scratch claim deleted (once), with an Event.
pub async fn finish_scratch(r: &Restore, ctx: &Context) -> Result<(), Error> {
    let prev: RestoreStatus = r.status.clone().unwrap_or_default();
    if r.spec.target.scratch.is_none() || prev.scratch_claim_deleted {
        return Ok(());
    }
    let name = r.name_any();
    let ns = r.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claim = &r.spec.target.claim_name;
    let existing = api
        .get_opt(claim)
        .await
        .map_err(dereference_error(&name, "scratch claim"))?;
    // A claim of that name this Restore did not create is never touched.
    if existing.as_ref().is_some_and(|c| !is_own_claim(r, c)) {
        return Ok(());
    }
    let had = existing.is_some();
    if let Some(c) = existing {
        // Its pods first: a finished pod still holds the claim (pvc-protection), so it would
        // stay until the Restore itself is deleted. Their verdicts are in status.
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let used_by = [
            prev.pod_name.clone(),
            prev.check.as_ref().map(|c| c.pod.clone()),
        ];
        let uid = r.uid().unwrap_or_default();
        for pod in used_by.into_iter().flatten() {
            delete_own_pod(&pods, &pod, &uid)
                .await
                .map_err(|source| Error::DeleteScratch {
                    restore: name.clone(),
                    source,
                })?;
        }
        delete_named(&api, &c.name_any())
            .await
            .map_err(|source| Error::DeleteScratch {
                restore: name.clone(),
                source,
            })?;
    }
    let status = RestoreStatus {
        scratch_claim_deleted: true,
        ..prev.clone()
    };
    apply_status(
        &Api::<Restore>::namespaced(ctx.client.clone(), &ns),
        &name,
        &status,
    )
    .await
    .map_err(|source| Error::UpdateStatus {
        restore: name.clone(),
        source,
    })?;
    if had {
        ctx.event(
            r,
            Reason::ScratchClaimDeleted,
            format!("deleted scratch claim {claim} and this Restore's pods: the restore and its check are over"),
        )
        .await;
    }
    Ok(())
}
