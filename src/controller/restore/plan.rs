//! Plan, pure: what a Restore's state and its [`World`] mean, as the step for status, the
//! check's status, the changes to carry out (before the status write) and when to look again.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::Error;
use super::after::plan_check;
use super::build::{Outcome, Step, next_status};
use super::dereference::World;
use super::start::plan_start;
use crate::api::Restore;
use crate::api::restore::RestoreStatus;
use crate::controller::agent::deadline::{Deadline, deadline};
use crate::controller::agent::node::{needs_stopping, stop};
use crate::controller::agent::run::{RunStep, run_step};
use crate::controller::context::OperatorConfig;
use crate::controller::execute::Change;
use crate::controller::reason::Reason;
use crate::engine::restore::RestoreStats;

/// What the Restore's pod (or its absence) means, and what to do. Pure.
pub fn plan(
    r: &Restore,
    prev: &RestoreStatus,
    w: &World,
    config: &OperatorConfig,
    now: jiff::Timestamp,
) -> Result<Outcome, Error> {
    match &w.pod {
        Some(pod) => {
            let (step, requeue, mut changes) = judge_pod(pod, w, now);
            let checked = plan_check(r, w, step, now)?;
            changes.extend(checked.changes);
            Ok(Outcome {
                step: checked.step,
                check: checked.check,
                changes,
                requeue: requeue.or(checked.requeue),
            })
        }
        None if prev.pod_name.is_some() => Ok(Outcome {
            step: Step::failed(
                Reason::PodLost,
                format!(
                    "restore pod {} disappeared before it finished (deleted, or its node was lost); the target may hold a partial restore (marked by .snapcrypt-restore-incomplete)",
                    prev.pod_name.clone().unwrap_or_default()
                ),
            ),
            check: None,
            changes: Vec::new(),
            requeue: None,
        }),
        None => plan_start(r, w, config),
    }
}

/// The status `outcome` leads to from `prev`. Pure.
pub fn status_after(
    r: &Restore,
    prev: &RestoreStatus,
    outcome: &Outcome,
    now: jiff::Timestamp,
) -> RestoreStatus {
    let target = match &r.spec.one_target().path {
        Some(p) => format!("{}/{p}", r.spec.one_target().claim_name),
        None => r.spec.one_target().claim_name.clone(),
    };
    let mut status = next_status(prev, &outcome.step, &target, r.metadata.generation, now);
    if let Some(c) = &outcome.check {
        if let (Step::Succeeded { .. }, Some(said)) = (&outcome.step, &c.message) {
            status.message = status.message.map(|m| format!("{m}; check passed: {said}"));
        }
        status.check = Some(c.clone());
    }
    status
}

/// What the restore pod's state means, held to its deadlines (the pendingTimeout and
/// nodeLostTimeout of the Snapshot's BackupJob, or their defaults if it is gone): an overrun
/// stops the pod and fails the Restore. Also when to look again. Pure.
fn judge_pod(pod: &Pod, w: &World, now: jiff::Timestamp) -> (Step, Option<Duration>, Vec<Change>) {
    let step = run_step::<RestoreStats>(pod, "restore");
    if !matches!(step, RunStep::Pending { .. } | RunStep::Running { .. }) {
        return (step_of(step), None, Vec::new());
    }
    match deadline(pod, &step, w.job.as_ref(), w.node.as_ref(), now, "restore") {
        Deadline::Within(recheck) => (step_of(step), recheck, Vec::new()),
        Deadline::Overrun(why) => {
            let mut changes = Vec::new();
            if needs_stopping(pod, w.node.as_ref()) {
                changes.push(stop("stop_pod", pod, w.node.as_ref()));
            }
            let message = format!(
                "{why}; the target may hold a partial restore (marked by .snapcrypt-restore-incomplete)"
            );
            (Step::failed(Reason::RestoreFailed, message), None, changes)
        }
    }
}

/// A restore pod's [`RunStep`] as the Restore's step. Pure.
fn step_of(step: RunStep<RestoreStats>) -> Step {
    match step {
        RunStep::Pending { message } => Step::PodPending { message },
        RunStep::Running { started } => Step::PodRunning { started },
        RunStep::Succeeded { result, finished } => Step::Succeeded {
            stats: result,
            finished,
        },
        RunStep::ResultUnreadable { message, finished } => Step::Failed {
            reason: Reason::ResultUnreadable,
            message,
            finished,
        },
        RunStep::Failed { message, finished } => Step::Failed {
            reason: Reason::RestoreFailed,
            // The agent names spec.target's fields itself (--fixes-as-restore-spec).
            message,
            finished,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::start::{spec_problem, target_is_repository};
    use super::*;
    use crate::controller::fixtures::{agent_pod, terminated};

    fn pod_step(pod: &Pod) -> Step {
        step_of(run_step::<RestoreStats>(pod, "restore"))
    }

    fn pod(status: &str) -> Pod {
        agent_pod(1, status)
    }

    /// deleteExtra without force is named by field; a target with extra entries is answered
    /// in the Restore's own words.
    #[test]
    fn delete_extra_needs_force_and_is_named_by_field() {
        use crate::controller::fixtures::restore;
        let bad = restore("{claimName: data, deleteExtra: true}");
        let problem = spec_problem(&bad).expect("a problem");
        assert!(
            problem.starts_with("spec.target.deleteExtra: true needs spec.target.force: true"),
            "{problem}"
        );
        assert_eq!(
            spec_problem(&restore(
                "{claimName: data, force: true, deleteExtra: true}"
            )),
            None
        );
        // The agent's refusal is its own words, which name spec.target's fields (the
        // agent is run with --fixes-as-restore-spec; tests/engine_cli.rs checks its words).
        let said = "target /target: holds 1 entry the snapshot does not have (stale.wt): nothing was written; remove them, or set spec.target.deleteExtra (with force) to have the restore remove them";
        let extra = pod(&terminated(
            "Failed",
            1,
            &format!("snapcrypt: error: {said}"),
        ));
        match pod_step(&extra) {
            Step::Failed { message, .. } => assert_eq!(message, said),
            other => panic!("{other:?}"),
        }
    }

    /// A target claim that holds the repository is refused before any pod, naming the field;
    /// another claim, or a job with an object-store repository, is not.
    #[test]
    fn a_target_claim_holding_the_repository_is_refused() {
        use crate::controller::fixtures::{job, restore};
        let pvc_job = job("");
        let whose = "BackupJob rs0 (its spec.destination.pvc.claimName)";
        let d = &pvc_job.spec.destination;
        let problem = target_is_repository(&restore("{claimName: backups, force: true}"), d, whose)
            .expect("refused");
        assert!(
            problem.starts_with(
                "spec.target.claimName: backups holds the repository of BackupJob rs0"
            ),
            "{problem}"
        );
        assert_eq!(
            target_is_repository(&restore("{claimName: data}"), d, whose),
            None
        );
        let s3_job = job("destination: {s3: {bucket: b, credentialsSecret: c}}");
        assert_eq!(
            target_is_repository(
                &restore("{claimName: backups}"),
                &s3_job.spec.destination,
                whose
            ),
            None
        );
    }

    #[test]
    fn pod_phases_become_steps() {
        let ok = pod(&terminated(
            "Succeeded",
            0,
            r#"{"snapshot":"3f2a","files":9,"bytes":2048}"#,
        ));
        assert!(matches!(
            pod_step(&ok),
            Step::Succeeded { stats, .. } if stats.files == 9 && stats.snapshot == "3f2a"
        ));
        let bad = pod(&terminated(
            "Failed",
            1,
            "snapcrypt: error: target /target/db: is not empty: nothing was written (set spec.target.force to restore into it anyway)",
        ));
        match pod_step(&bad) {
            Step::Failed {
                reason, message, ..
            } => {
                assert_eq!(reason, Reason::RestoreFailed);
                assert_eq!(
                    message,
                    "target /target/db: is not empty: nothing was written (set spec.target.force to restore into it anyway)"
                );
            }
            other => panic!("{other:?}"),
        }
        // A failure without the agent's words says which kind of pod failed.
        let killed = pod(
            "  phase: Failed\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 137, reason: OOMKilled}}}",
        );
        assert!(matches!(
            pod_step(&killed),
            Step::Failed { message, .. } if message.starts_with("the restore pod was killed at its memory limit (OOMKilled): raise the BackupJob's spec.resources.limits.memory")
        ));
        assert!(matches!(
            pod_step(&pod(&terminated("Succeeded", 0, "hello"))),
            Step::Failed {
                reason: Reason::ResultUnreadable,
                ..
            }
        ));
        assert!(matches!(
            pod_step(&pod("  phase: Running")),
            Step::PodRunning { .. }
        ));
    }
}
