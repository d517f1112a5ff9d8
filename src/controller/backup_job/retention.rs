//! A BackupJob's retention runs under least privilege (spec.retention.credentialsSecret),
//! planned purely from the [`World`]: the snapshot pods then never prune; after each
//! successful Snapshot a retention pod (the only pod given the retention Secret) applies the
//! policy, and the Snapshots it forgot are deleted. Its pods judged and held to their
//! deadlines, the newest finished run recorded in status.retention, older pods deleted, a
//! failed run retried with back-off, never while a Snapshot of the job runs (its backup holds
//! the repository's shared lock) nor two at once. The outcome is the job's RetentionApplied
//! condition.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::Error;
use super::build::retention_pod::{
    RetentionPlan, after_retention, retention_pod, retention_run_of,
};
use super::checks::{Pass, RunOf, earliest, held_to_deadline};
use super::copies::retry_at;
use super::dereference::newest_successful;
use crate::api::Snapshot;
use crate::api::agent::RetentionResult;
use crate::api::retention::RetentionRun;
use crate::api::snapshot::RunPhase;
use crate::api::verification::CheckResult;
use crate::controller::agent::identity::identity_changes;
use crate::controller::agent::run::RunStep;
use crate::controller::conditions::{Cond, CondType};
use crate::controller::execute::Change;
use crate::controller::job_spec::retention::{forgotten_snapshots, retention_secret};
use crate::controller::reason::Reason;
use crate::engine::progress::human_bytes;

/// What the retention runs came to in one reconcile.
#[derive(Debug, Default)]
pub struct RetentionOutcome {
    /// status.retention (none without retention credentials).
    pub status: Option<RetentionRun>,
    /// RetentionApplied, once a run has ended.
    pub condition: Option<Cond>,
    pub changes: Vec<Change>,
    pub next: Option<jiff::Timestamp>,
}

/// Whether a Snapshot of the job is under way (its pod may hold the repository's lock).
fn under_way(s: &Snapshot) -> bool {
    !matches!(
        s.status.as_ref().map(|st| st.phase),
        Some(RunPhase::Succeeded | RunPhase::Failed)
    )
}

/// Plan the job's retention runs. Pure.
pub fn plan_retention(pass: &Pass<'_>) -> Result<RetentionOutcome, Error> {
    let job = pass.job;
    let mut out = RetentionOutcome::default();
    if retention_secret(&job.spec).is_none() || job.uid().is_none() {
        return Ok(out);
    }
    let mut status = job
        .status
        .as_ref()
        .and_then(|s| s.retention.clone())
        .unwrap_or_default();
    let running = judge_pods(pass, &mut status, &mut out);
    status.running_pod = running.map(|p| p.name_any());
    out.condition = condition(&status);
    if running.is_none() && pass.healthy && !pass.snapshots.iter().any(under_way) {
        start_if_due(pass, &mut status, &mut out)?;
    }
    out.status = Some(status);
    Ok(out)
}

/// The job's retention pods, judged: the running one returned, the newest finished one
/// recorded in `status` (its forgotten Snapshots deleted once), older finished ones deleted.
fn judge_pods<'a>(
    pass: &Pass<'a>,
    status: &mut RetentionRun,
    out: &mut RetentionOutcome,
) -> Option<&'a Pod> {
    let Pass {
        job, world, now, ..
    } = *pass;
    let mut running = None;
    let mut finished: Vec<(&Pod, RunStep<RetentionResult>)> = Vec::new();
    for (pod, node) in &world.retention_pods {
        // The pods say how many runs there were, whatever an older status said.
        status.runs = status.runs.max(retention_run_of(pod).unwrap_or(0));
        let run = RunOf {
            job,
            pod,
            node: node.as_ref(),
            what: "retention",
            stage: "delete_retention",
        };
        match held_to_deadline::<RetentionResult>(run, now, &mut out.changes) {
            RunStep::Pending { .. } | RunStep::Running { .. } => running = Some(pod),
            step => finished.push((pod, step)),
        }
    }
    finished.sort_by_key(|(p, _)| (retention_run_of(p), p.name_any()));
    if let Some((pod, step)) = finished.last()
        && status.last_run_pod.as_deref() != Some(pod.name_any().as_str())
    {
        if let RunStep::Succeeded { result, .. } = step {
            let doomed = forgotten_snapshots(pass.snapshots, job, result);
            if !doomed.is_empty() {
                let names: Vec<String> = doomed.iter().map(|s| s.name_any()).collect();
                out.changes.extend(
                    doomed
                        .iter()
                        .map(|s| Change::delete("delete_forgotten", *s)),
                );
                out.changes.push(Change::event(
                    Reason::ForgottenSnapshotsDeleted,
                    format!(
                        "deleted Snapshot {}: retention pod {} forgot them in the repository",
                        names.join(", "),
                        pod.name_any()
                    ),
                ));
            }
        }
        let failed_again = status.result == CheckResult::Failed;
        *status = after_retention(status.clone(), pod, step);
        if failed_again && status.result == CheckResult::Failed {
            // The condition's transition announced the first failure.
            out.changes.push(Change::event(
                Reason::PruneFailed,
                format!(
                    "retention failed again ({} run(s) in a row): {}",
                    status.consecutive_failures,
                    status.message.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    for (pod, _) in finished.iter().rev().skip(1) {
        out.changes.push(Change::delete("delete_retention", *pod));
    }
    running
}

/// Start a retention pod when the newest successful Snapshot has not had a successful pass
/// after it (a failed pass is retried with back-off).
fn start_if_due(
    pass: &Pass<'_>,
    status: &mut RetentionRun,
    out: &mut RetentionOutcome,
) -> Result<(), Error> {
    let Pass {
        job,
        world,
        config,
        now,
        ..
    } = *pass;
    let Some(newest) = newest_successful(pass.snapshots) else {
        return Ok(());
    };
    let after_newest = status.last_run_snapshot.as_deref() == Some(newest.name_any().as_str());
    if after_newest && status.result == CheckResult::Succeeded {
        return Ok(());
    }
    if after_newest && status.result == CheckResult::Failed {
        let at = retry_at(status.last_run_time.as_ref(), status.consecutive_failures);
        if at.is_some_and(|at| at > now) {
            out.next = earliest(out.next, at);
            return Ok(());
        }
    }
    // A missing KmipServer or key of the job is the job's own condition already.
    let Some(Ok(kmip)) = &world.kmip else {
        return Ok(());
    };
    let pod = retention_pod(&RetentionPlan {
        job,
        run: status.runs + 1,
        snapshot: newest,
        image: &config.agent_image,
        agent_env: &config.agent_env,
        kmip: kmip.as_ref().map(|(ks, key)| (ks, key.as_str())),
        cluster: &config.cluster_id,
    })
    .map_err(|e| Error::BuildCheck {
        job: job.name_any(),
        reason: format!("retention: {e}"),
    })?;
    out.changes
        .extend(identity_changes("apply_retention", job, None));
    out.changes.push(Change::apply("apply_retention", &pod));
    out.changes.push(Change::event(
        Reason::RetentionStarted,
        format!(
            "retention pod {} applies spec.retention with spec.retention.credentialsSecret (after Snapshot {})",
            pod.name_any(),
            newest.name_any()
        ),
    ));
    status.runs += 1;
    status.running_pod = Some(pod.name_any());
    Ok(())
}

/// RetentionApplied from the last run that ended (none before the first).
fn condition(status: &RetentionRun) -> Option<Cond> {
    let pod = status.last_run_pod.as_deref()?;
    Some(match status.result {
        CheckResult::Failed => Cond::new(
            CondType::RetentionApplied,
            false,
            Reason::PruneFailed,
            format!(
                "retention pod {pod} failed ({} run(s) in a row; retried with back-off): {}",
                status.consecutive_failures,
                status.message.as_deref().unwrap_or_default()
            ),
        ),
        _ => Cond::new(
            CondType::RetentionApplied,
            true,
            Reason::Pruned,
            format!(
                "retention pod {pod} kept {} snapshot(s) of the job, forgot {}, freed {}",
                status.kept,
                status.forgotten,
                human_bytes(status.bytes_freed)
            ),
        ),
    })
}
