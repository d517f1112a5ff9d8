//! A BackupJob's retention runs under least privilege, planned purely from the [`World`]: for
//! the job's repository (spec.retention.credentialsSecret) and each copy's
//! (spec.copies[].retention.credentialsSecret). Their snapshot or copy pods then never prune;
//! a retention pod, the only pod given the retention Secret, applies the policy after each
//! successful Snapshot (for a copy: after each run that left it holding a newer one), and the
//! Snapshots a pass over the job's repository forgot are deleted. Pods judged and held to their
//! deadlines, the newest finished run recorded in status (status.retention,
//! status.copies[].retention), older pods deleted, a failed run retried with back-off; never
//! while the repository is in use by the job (a Snapshot under way, a copy run), never two at
//! once per repository. The outcome is the job's RetentionApplied condition.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::Error;
use super::build::retention_pod::{
    RetentionPlan, after_retention, retention_copy_of, retention_pod, retention_run_of,
};
use super::checks::{Pass, SeriesKind, earliest, judge_series};
use super::copies::retry_at;
use super::dereference::newest_successful;
use crate::api::agent::RetentionResult;
use crate::api::copy::{CopySpec, CopyStatus};
use crate::api::retention::RetentionRun;
use crate::api::snapshot::RunPhase;
use crate::api::verification::CheckResult;
use crate::api::{KmipServer, Snapshot};
use crate::controller::agent::identity::identity_changes;
use crate::controller::agent::run::RunStep;
use crate::controller::conditions::{Cond, CondType};
use crate::controller::execute::Change;
use crate::controller::job_spec::retention::{
    any_retention_pods, copy_retention_secret, forgotten_snapshots, retention_secret,
};
use crate::controller::reason::Reason;
use crate::engine::progress::human_bytes;

/// What the retention runs came to in one reconcile.
#[derive(Debug, Default)]
pub struct RetentionOutcome {
    /// status.retention (none without the job's retention credentials).
    pub status: Option<RetentionRun>,
    /// RetentionApplied, once a run has ended.
    pub condition: Option<Cond>,
    pub changes: Vec<Change>,
    pub next: Option<jiff::Timestamp>,
}

/// One repository whose retention runs in retention pods.
struct Target<'a> {
    /// The copy (None: the job's own repository).
    copy: Option<&'a CopySpec>,
    /// The Snapshot the next run comes after, and its repository id (none yet: no run).
    after: Option<(String, Option<String>)>,
    /// The job uses the repository now (a Snapshot under way, a copy run): no run starts.
    busy: bool,
    /// The repository's KmipServer and key (Some(None): a local key; None: not usable now).
    kmip: Option<Option<(&'a KmipServer, &'a str)>>,
}

impl Target<'_> {
    fn what(&self) -> String {
        match self.copy {
            Some(c) => format!("copy {}", c.name),
            None => "the job's repository".to_string(),
        }
    }
}

/// Whether a Snapshot of the job is under way (its pod may hold the repository's lock).
fn under_way(s: &Snapshot) -> bool {
    !matches!(
        s.status.as_ref().map(|st| st.phase),
        Some(RunPhase::Succeeded | RunPhase::Failed)
    )
}

fn kmip_of(
    k: Option<&Result<Option<(KmipServer, String)>, crate::controller::agent::job::Blocked>>,
) -> Option<Option<(&KmipServer, &str)>> {
    match k {
        Some(Ok(k)) => Some(k.as_ref().map(|(ks, key)| (ks, key.as_str()))),
        _ => None,
    }
}

/// Plan the retention runs of the job's repository and of its copies' (`copies`: this
/// reconcile's status.copies, whose `retention` is written here). Pure.
pub fn plan_retention(
    pass: &Pass<'_>,
    copies: &mut [CopyStatus],
) -> Result<RetentionOutcome, Error> {
    let job = pass.job;
    let mut out = RetentionOutcome::default();
    if !any_retention_pods(&job.spec) || job.uid().is_none() {
        return Ok(out);
    }
    let mut said = Vec::new();
    let mut identity = false;
    if retention_secret(&job.spec).is_some() {
        let prev = job.status.as_ref().and_then(|s| s.retention.clone());
        let target = Target {
            copy: None,
            after: newest_successful(pass.snapshots).map(|s| (s.name_any(), id_of(s))),
            busy: pass.snapshots.iter().any(under_way),
            kmip: kmip_of(pass.world.kmip.as_ref()),
        };
        let status = plan_one(
            pass,
            &target,
            prev.unwrap_or_default(),
            &mut identity,
            &mut out,
        )?;
        said.extend(summary(&target, &status));
        out.status = Some(status);
    }
    for (i, c) in job.spec.copies.iter().enumerate() {
        let Some(cs) = copies.iter_mut().find(|s| s.name == c.name) else {
            continue;
        };
        if copy_retention_secret(c).is_none() {
            continue;
        }
        let held = cs.last_copied_snapshot.clone();
        let id = held
            .as_ref()
            .and_then(|n| pass.snapshots.iter().find(|s| &s.name_any() == n))
            .and_then(id_of);
        let target = Target {
            copy: Some(c),
            after: held.map(|n| (n, id)),
            busy: cs.running_pod.is_some() || cs.blocked.is_some(),
            kmip: kmip_of(pass.world.copy_access.get(i)),
        };
        let prev = cs.retention.clone().unwrap_or_default();
        let status = plan_one(pass, &target, prev, &mut identity, &mut out)?;
        said.extend(summary(&target, &status));
        cs.retention = Some(status);
    }
    out.condition = condition(&said);
    Ok(out)
}

fn id_of(s: &Snapshot) -> Option<String> {
    s.status.as_ref()?.repository_snapshot_id.clone()
}

/// One repository's runs: its pods judged, its status, its next run when due.
fn plan_one(
    pass: &Pass<'_>,
    target: &Target<'_>,
    mut status: RetentionRun,
    identity: &mut bool,
    out: &mut RetentionOutcome,
) -> Result<RetentionRun, Error> {
    let running = judge_pods(pass, target, &mut status, out);
    status.running_pod = running.map(|p| p.name_any());
    if running.is_none() && pass.healthy && !target.busy {
        start_if_due(pass, target, &mut status, identity, out)?;
    }
    Ok(status)
}

/// A repository's retention pods, judged: the running one returned, the newest finished one
/// recorded in `status` (for the job's repository, its forgotten Snapshots deleted once),
/// older finished ones deleted.
fn judge_pods<'a>(
    pass: &Pass<'a>,
    target: &Target<'_>,
    status: &mut RetentionRun,
    out: &mut RetentionOutcome,
) -> Option<&'a Pod> {
    let copy = target.copy.map(|c| c.name.as_str());
    let pods = pass
        .world
        .retention_pods
        .iter()
        .filter(|(p, _)| retention_copy_of(p) == copy);
    let series = judge_series::<RetentionResult>(
        pass.job,
        &RETENTION_RUNS,
        pods,
        &mut status.runs,
        pass.now,
        &mut out.changes,
    );
    if let Some((pod, step)) = &series.newest
        && status.last_run_pod.as_deref() != Some(pod.name_any().as_str())
    {
        if let (RunStep::Succeeded { result, .. }, None) = (step, copy) {
            delete_forgotten(pass, pod, result, out);
        }
        let failed_again = status.result == CheckResult::Failed;
        *status = after_retention(status.clone(), pod, step);
        if failed_again && status.result == CheckResult::Failed {
            // The condition's transition announced the first failure.
            out.changes.push(Change::event(
                Reason::PruneFailed,
                format!(
                    "retention of {} failed again ({} run(s) in a row): {}",
                    target.what(),
                    status.consecutive_failures,
                    status.message.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    series.running
}

/// A repository's retention pods.
const RETENTION_RUNS: SeriesKind = SeriesKind {
    what: "retention",
    stage: "delete_retention",
    run_of: retention_run_of,
};

/// Delete the Snapshots of the job whose repository snapshot a pass over the job's
/// repository forgot.
fn delete_forgotten(
    pass: &Pass<'_>,
    pod: &Pod,
    result: &RetentionResult,
    out: &mut RetentionOutcome,
) {
    let doomed = forgotten_snapshots(pass.snapshots, pass.job, result);
    if doomed.is_empty() {
        return;
    }
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

/// Start a retention pod when the Snapshot the repository's next run comes after has not had
/// a successful pass (a failed pass is retried with back-off).
fn start_if_due(
    pass: &Pass<'_>,
    target: &Target<'_>,
    status: &mut RetentionRun,
    identity: &mut bool,
    out: &mut RetentionOutcome,
) -> Result<(), Error> {
    let Pass {
        job, config, now, ..
    } = *pass;
    let Some((after, id)) = &target.after else {
        return Ok(());
    };
    let done = status.last_run_snapshot.as_deref() == Some(after.as_str());
    if done && status.result == CheckResult::Succeeded {
        return Ok(());
    }
    if done && status.result == CheckResult::Failed {
        let at = retry_at(status.last_run_time.as_ref(), status.consecutive_failures);
        if at.is_some_and(|at| at > now) {
            out.next = earliest(out.next, at);
            return Ok(());
        }
    }
    // A missing KmipServer or key is the job's (or the copy's) own condition already.
    let Some(kmip) = target.kmip else {
        return Ok(());
    };
    let pod = retention_pod(&RetentionPlan {
        job,
        copy: target.copy,
        run: status.runs + 1,
        after: (after, id.as_deref()),
        image: &config.agent_image,
        agent_env: &config.agent_env,
        kmip,
        cluster: &config.cluster_id,
    })
    .map_err(|e| Error::BuildCheck {
        job: job.name_any(),
        reason: format!("retention: {e}"),
    })?;
    if !*identity {
        out.changes
            .extend(identity_changes("apply_retention", job, None));
        *identity = true;
    }
    out.changes.push(Change::apply("apply_retention", &pod));
    out.changes.push(Change::event(
        Reason::RetentionStarted,
        format!(
            "retention pod {} applies the retention of {} with its credentialsSecret (after Snapshot {after})",
            pod.name_any(),
            target.what()
        ),
    ));
    status.runs += 1;
    status.running_pod = Some(pod.name_any());
    Ok(())
}

/// What the last run that ended of a repository says: (failed, words); none before the first.
fn summary(target: &Target<'_>, status: &RetentionRun) -> Option<(bool, String)> {
    let pod = status.last_run_pod.as_deref()?;
    let what = target.what();
    Some(match status.result {
        CheckResult::Failed => (
            true,
            format!(
                "{what}: retention pod {pod} failed ({} run(s) in a row; retried with back-off): {}",
                status.consecutive_failures,
                status.message.as_deref().unwrap_or_default()
            ),
        ),
        _ => (
            false,
            format!(
                "{what}: retention pod {pod} kept {} snapshot(s) of the job, forgot {}, freed {}",
                status.kept,
                status.forgotten,
                human_bytes(status.bytes_freed)
            ),
        ),
    })
}

/// RetentionApplied: False naming every repository whose last run failed, else True.
fn condition(said: &[(bool, String)]) -> Option<Cond> {
    if said.is_empty() {
        return None;
    }
    let failed: Vec<&str> = said
        .iter()
        .filter(|(f, _)| *f)
        .map(|(_, w)| w.as_str())
        .collect();
    Some(if failed.is_empty() {
        let all: Vec<&str> = said.iter().map(|(_, w)| w.as_str()).collect();
        Cond::new(
            CondType::RetentionApplied,
            true,
            Reason::Pruned,
            all.join("; "),
        )
    } else {
        Cond::new(
            CondType::RetentionApplied,
            false,
            Reason::PruneFailed,
            failed.join("; "),
        )
    })
}
