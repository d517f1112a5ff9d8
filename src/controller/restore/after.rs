//! The Restore's steps around its restore pod, pure: the scratch claim created before it
//! (spec.target.scratch), the check pod run after it (spec.check), and the scratch claim
//! deleted once the Restore is over, whatever happened.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;

use super::Error;
use super::build::{Outcome, Step};
use super::check::{
    check_network_policy, check_pod, check_result, check_step, is_own_claim, scratch_claim,
};
use super::dereference::World;
use crate::api::Restore;
use crate::api::restore::{CheckStatus, RestoreStatus};
use crate::api::verification::CheckResult;
use crate::controller::agent::deadline::{Deadline, deadline};
use crate::controller::agent::node::{needs_stopping, stop};
use crate::controller::execute::Change;
use crate::controller::kube_api::made_for;
use crate::controller::reason::Reason;

/// How often a running check is looked at besides its pod's changes (its deadlines).
const CHECK_RECHECK: Duration = Duration::from_secs(30);

/// The scratch claim spec.target.scratch asks for: the changes that create it (none if there
/// is no scratch claim, or this Restore's exists), or the step that ends the Restore (a claim
/// of that name exists and is not this Restore's).
pub fn plan_scratch(
    r: &Restore,
    existing: Option<&PersistentVolumeClaim>,
) -> Result<Result<Vec<Change>, Step>, Error> {
    let Some(scratch) = &r.spec.one_target().scratch else {
        return Ok(Ok(Vec::new()));
    };
    let claim = &r.spec.one_target().claim_name;
    if let Some(existing) = existing {
        if is_own_claim(r, existing) {
            return Ok(Ok(Vec::new()));
        }
        return Ok(Err(Step::failed(
            Reason::ScratchClaimExists,
            format!(
                "spec.target.scratch: claim {claim} already exists and was not created by this Restore; nothing was written to it"
            ),
        )));
    }
    let pvc = scratch_claim(r, scratch).map_err(|e| Error::Build {
        restore: r.name_any(),
        reason: e.to_string(),
    })?;
    Ok(Ok(vec![
        Change::apply("apply_scratch", &pvc),
        Change::event(
            Reason::ScratchClaimCreated,
            format!("created scratch claim {claim} ({:?})", scratch.size.0),
        ),
    ]))
}

/// After a successful restore pod: the check pod's run (started if there is none yet), as the
/// Restore's step; the step as it was without spec.check. Pure.
pub fn plan_check(
    r: &Restore,
    w: &World,
    restored: Step,
    now: jiff::Timestamp,
) -> Result<Outcome, Error> {
    let (Some(check), Step::Succeeded { stats, .. }) = (&r.spec.check, &restored) else {
        return Ok(Outcome {
            step: restored,
            requeue: None,
            check: None,
            changes: Vec::new(),
        });
    };
    let checking = |pod: String, changes| Outcome {
        step: Step::Checking { pod: pod.clone() },
        requeue: Some(CHECK_RECHECK),
        check: Some(CheckStatus {
            pod,
            ..Default::default()
        }),
        changes,
    };
    let Some(pod) = &w.check_pod else {
        let build = |e: crate::controller::agent::pod::PodError| Error::Build {
            restore: r.name_any(),
            reason: e.to_string(),
        };
        let pod = check_pod(r, check).map_err(build)?;
        // Its NetworkPolicy first, so the pod never runs without it.
        let policy = check_network_policy(r, check).map_err(build)?;
        let changes = vec![
            Change::apply("apply_pod", &policy),
            Change::apply("apply_pod", &pod),
        ];
        return Ok(checking(pod.name_any(), changes));
    };
    let step = check_step(pod);
    let mut changes = Vec::new();
    let (verdict, finished) = match check_result(pod, &step) {
        Some(judged) => judged,
        // Not ended: held to pendingTimeout and nodeLostTimeout at their defaults (its run
        // time is bounded by activeDeadlineSeconds).
        None => match deadline(pod, &step, None, w.check_node.as_ref(), now, "check") {
            Deadline::Within(_) => return Ok(checking(pod.name_any(), changes)),
            Deadline::Overrun(why) => {
                if needs_stopping(pod, w.check_node.as_ref()) {
                    changes.push(stop("stop_pod", pod, w.check_node.as_ref()));
                }
                let status = CheckStatus {
                    pod: pod.name_any(),
                    result: CheckResult::Failed,
                    message: Some(why),
                };
                (status, None)
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
    Ok(Outcome {
        step,
        requeue: None,
        check: Some(verdict),
        changes,
    })
}

/// A finished Restore's scratch claim deleted (once): its pods first (a finished pod still
/// holds the claim, so it would stay until the Restore itself is deleted; their verdicts are
/// in status), then the claim, then status says so, with an Event. A claim of that name this
/// Restore did not create is never touched. Pure.
pub fn plan_finished(r: &Restore, prev: &RestoreStatus, w: &World) -> Vec<Change> {
    if r.spec.one_target().scratch.is_none() || prev.scratch_claim_deleted {
        return Vec::new();
    }
    if w.target.as_ref().is_some_and(|c| !is_own_claim(r, c)) {
        return Vec::new();
    }
    let uid = r.uid().unwrap_or_default();
    let mut changes = Vec::new();
    if let Some(claim) = &w.target {
        // A pod name read from status never makes the operator delete a pod it did not make.
        for pod in w.own_pods.iter().filter(|p| made_for(*p, &uid)) {
            changes.push(Change::delete("delete_scratch", pod));
        }
        changes.push(Change::delete("delete_scratch", claim));
    }
    let status = RestoreStatus {
        scratch_claim_deleted: true,
        ..prev.clone()
    };
    changes.push(Change::status(r, &status));
    if w.target.is_some() {
        changes.push(Change::event(
            Reason::ScratchClaimDeleted,
            format!(
                "deleted scratch claim {} and this Restore's pods: the restore and its check are over",
                r.spec.one_target().claim_name
            ),
        ));
    }
    changes
}
