//! A BackupJob's copies (spec.copies[]), planned purely from the [`World`]: each copy's pods
//! judged (and held to their deadlines), the newest finished run recorded in status.copies,
//! older pods deleted, and a new copy pod started when one is due: after each successful
//! Snapshot the copy does not hold yet (retried with back-off after a failure), or on the
//! copy's schedule. Never two runs of one copy at once. What each copy's status says becomes
//! the job's CopiesHealthy condition.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::Error;
use super::build::copy_pod::{CopyPlan, after_run, copy_of, copy_pod, run_of};
use super::checks::{Pass, SeriesKind, created, earliest, judge_series};
use super::dereference::{newest_successful, succeeded};
use crate::api::Snapshot;
use crate::api::agent::CopyResult;
use crate::api::copy::{CopySpec, CopyStatus};
use crate::api::verification::CheckResult;
use crate::controller::agent::identity::identity_changes;
use crate::controller::conditions::{Cond, CondType};
use crate::controller::execute::Change;
use crate::controller::job_spec::schedule::{CronSchedule, due};
use crate::controller::names::{COPY_SNAPSHOT, SCHEDULED_TIME};
use crate::controller::reason::Reason;

/// The first retry of a failed copy; each further failure doubles it, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// What the copies came to in one reconcile.
#[derive(Debug, Default)]
pub struct CopiesOutcome {
    /// One entry per copy of the spec, in its order.
    pub statuses: Vec<CopyStatus>,
    /// CopiesHealthy (none without copies).
    pub condition: Option<Cond>,
    pub changes: Vec<Change>,
    pub next: Option<jiff::Timestamp>,
}

/// When a Snapshot completed.
fn completed(s: &Snapshot) -> Option<jiff::Timestamp> {
    s.status
        .as_ref()
        .and_then(|st| st.completion_time.as_ref())
        .map(|t| t.0)
}

/// Successful Snapshots of the job completed after `since` (all of them without it).
fn lag(snapshots: &[Snapshot], since: Option<jiff::Timestamp>) -> u64 {
    snapshots
        .iter()
        .filter(|s| succeeded(s))
        .filter(|s| match (since, completed(s)) {
            (Some(since), Some(done)) => done > since,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .count() as u64
}

/// When a copy that failed `failures` times in a row, last at `last`, is tried again.
pub(super) fn retry_at(last: Option<&Time>, failures: u64) -> Option<jiff::Timestamp> {
    let last = last?.0;
    let doubling = u32::try_from(failures.saturating_sub(1).min(16)).unwrap_or(16);
    let wait = FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(doubling))
        .min(MAX_RETRY);
    last.checked_add(wait).ok()
}

/// Plan every copy of the job. Pure.
pub fn plan_copies(pass: &Pass<'_>) -> Result<CopiesOutcome, Error> {
    let job = pass.job;
    let mut out = CopiesOutcome::default();
    if job.spec.copies.is_empty() || job.uid().is_none() {
        return Ok(out);
    }
    let prev = job.status.clone().unwrap_or_default().copies;
    let mut identity = false;
    for (i, copy) in job.spec.copies.iter().enumerate() {
        let before = prev
            .iter()
            .find(|s| s.name == copy.name)
            .cloned()
            .unwrap_or_else(|| CopyStatus {
                name: copy.name.clone(),
                ..Default::default()
            });
        let status = plan_copy(pass, i, copy, before, &mut identity, &mut out)?;
        out.statuses.push(status);
    }
    out.condition = Some(condition(&out.statuses, pass));
    Ok(out)
}

/// A copy's pods, judged: the running one, and the newest finished one recorded in `status`
/// (older finished ones deleted). Returns the running pod and the newest scheduled time a pod
/// ran for.
fn judge_pods<'a>(
    pass: &Pass<'a>,
    copy: &CopySpec,
    status: &mut CopyStatus,
    out: &mut CopiesOutcome,
) -> (Option<&'a Pod>, Option<jiff::Timestamp>) {
    let mine = || {
        pass.world
            .copy_pods
            .iter()
            .filter(|(p, _)| copy_of(p) == Some(copy.name.as_str()))
    };
    let last_scheduled = mine()
        .filter_map(|(pod, _)| pod.annotations().get(SCHEDULED_TIME)?.parse().ok())
        .max();
    let series = judge_series::<CopyResult>(
        pass.job,
        &COPY_RUNS,
        mine(),
        &mut status.runs,
        pass.now,
        &mut out.changes,
    );
    if let Some((pod, step)) = &series.newest
        && status.last_run_pod.as_deref() != Some(pod.name_any().as_str())
    {
        let snapshot = pod.annotations().get(COPY_SNAPSHOT);
        let done = pass
            .snapshots
            .iter()
            .find(|s| Some(&s.name_any()) == snapshot)
            .and_then(completed)
            .map(Time);
        let failed_again = status.result == CheckResult::Failed;
        *status = after_run(status.clone(), pod, step, done);
        if failed_again && status.result == CheckResult::Failed {
            // The condition's transition announced the first failure.
            out.changes.push(Change::event(
                Reason::CopyFailed,
                format!(
                    "copy {} failed again ({} run(s) in a row): {}",
                    copy.name,
                    status.consecutive_failures,
                    status.message.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    (series.running, last_scheduled)
}

/// A copy's run pods.
const COPY_RUNS: SeriesKind = SeriesKind {
    what: "copy",
    stage: "delete_copy",
    run_of,
};

/// One copy: its pods judged, its status, and its next run when due.
fn plan_copy(
    pass: &Pass<'_>,
    i: usize,
    copy: &CopySpec,
    mut status: CopyStatus,
    identity: &mut bool,
    out: &mut CopiesOutcome,
) -> Result<CopyStatus, Error> {
    let Pass {
        job, world, now, ..
    } = *pass;
    let (running, last_scheduled) = judge_pods(pass, copy, &mut status, out);
    status.running_pod = running.map(|p| p.name_any());
    status.lag = lag(
        pass.snapshots,
        status.last_copied_snapshot_time.as_ref().map(|t| t.0),
    );
    let blocked = match world.copy_access.get(i) {
        Some(Err(b)) => Some(b.message.clone()),
        None => Some("its references were not read".to_string()),
        Some(Ok(_)) => None,
    };
    status.blocked = blocked;
    if status.blocked.is_some() {
        return Ok(status);
    }
    if running.is_some() || !pass.healthy {
        return Ok(status);
    }
    let Some(newest) = newest_successful(pass.snapshots) else {
        return Ok(status);
    };
    let held = status.last_copied_snapshot.as_deref() == Some(newest.name_any().as_str());
    let scheduled = match &copy.schedule {
        Some(s) => {
            let Ok(sched) = CronSchedule::parse(&s.cron, &s.time_zone) else {
                return Ok(status);
            };
            let last = last_scheduled.or(status.last_run_time.as_ref().map(|t| t.0));
            let d = due(&sched, created(job, now), last, now);
            out.next = earliest(out.next, d.next);
            match d.run {
                Some(t) if !held => Some(t),
                _ => return Ok(status),
            }
        }
        None => {
            if held {
                return Ok(status);
            }
            if status.result == CheckResult::Failed {
                let at = retry_at(status.last_run_time.as_ref(), status.consecutive_failures);
                if at.is_some_and(|at| at > now) {
                    out.next = earliest(out.next, at);
                    return Ok(status);
                }
            }
            None
        }
    };
    start(pass, i, copy, newest, scheduled, &mut status, identity, out)?;
    Ok(status)
}

/// The copy pod of the copy's next run, after the agent's identity (once per reconcile).
#[allow(clippy::too_many_arguments)]
fn start(
    pass: &Pass<'_>,
    i: usize,
    copy: &CopySpec,
    newest: &Snapshot,
    scheduled: Option<jiff::Timestamp>,
    status: &mut CopyStatus,
    identity: &mut bool,
    out: &mut CopiesOutcome,
) -> Result<(), Error> {
    let Pass {
        job, world, config, ..
    } = *pass;
    // A missing KmipServer or key of the job is the job's own condition already.
    let Some(Ok(kmip)) = &world.kmip else {
        return Ok(());
    };
    let Some(Ok(copy_kmip)) = world.copy_access.get(i) else {
        return Ok(());
    };
    let pod = copy_pod(&CopyPlan {
        job,
        copy,
        run: status.runs + 1,
        snapshot: newest,
        scheduled,
        image: &config.agent_image,
        agent_env: &config.agent_env,
        kmip: kmip.as_ref().map(|(ks, key)| (ks, key.as_str())),
        copy_kmip: copy_kmip.as_ref().map(|(ks, key)| (ks, key.as_str())),
    })
    .map_err(|e| Error::BuildCheck {
        job: job.name_any(),
        reason: format!("copy {}: {e}", copy.name),
    })?;
    if !*identity {
        out.changes
            .extend(identity_changes("apply_copy", job, None));
        *identity = true;
    }
    out.changes.push(Change::apply("apply_copy", &pod));
    out.changes.push(Change::event(
        Reason::CopyStarted,
        format!(
            "copy pod {} copies the job's snapshots into copy {} (it must end holding Snapshot {})",
            pod.name_any(),
            copy.name,
            newest.name_any()
        ),
    ));
    status.runs += 1;
    status.running_pod = Some(pod.name_any());
    Ok(())
}

/// CopiesHealthy: False for a copy that failed or cannot start (the first such copy named,
/// each one in the message); True otherwise, saying whether every copy is current.
fn condition(statuses: &[CopyStatus], pass: &Pass<'_>) -> Cond {
    let blocked: Vec<String> = statuses
        .iter()
        .filter_map(|s| {
            Some(format!(
                "copy {} cannot run: {}",
                s.name,
                s.blocked.as_ref()?
            ))
        })
        .collect();
    let failed: Vec<String> = statuses
        .iter()
        .filter(|s| s.result == CheckResult::Failed)
        .map(|s| {
            format!(
                "copy {} failed ({} run(s) in a row; {} snapshot(s) behind): {}",
                s.name,
                s.consecutive_failures,
                s.lag,
                s.message.as_deref().unwrap_or_default()
            )
        })
        .collect();
    if !failed.is_empty() {
        return Cond::new(
            CondType::CopiesHealthy,
            false,
            Reason::CopyFailed,
            failed.join("; "),
        );
    }
    if !blocked.is_empty() {
        return Cond::new(
            CondType::CopiesHealthy,
            false,
            Reason::CopyBlocked,
            blocked.join("; "),
        );
    }
    let behind: Vec<&CopyStatus> = statuses.iter().filter(|s| s.lag > 0).collect();
    if behind.is_empty() {
        let newest = newest_successful(pass.snapshots).map(|s| s.name_any());
        return Cond::new(
            CondType::CopiesHealthy,
            true,
            Reason::CopiesCurrent,
            match newest {
                Some(n) => format!("every copy holds the newest successful Snapshot, {n}"),
                None => "no Snapshot has succeeded yet: nothing to copy".to_string(),
            },
        );
    }
    let words: Vec<String> = behind
        .iter()
        .map(|s| match &s.running_pod {
            Some(p) => format!(
                "copy {} is {} snapshot(s) behind, copy pod {p} running",
                s.name, s.lag
            ),
            None => format!(
                "copy {} is {} snapshot(s) behind, waiting for its next run",
                s.name, s.lag
            ),
        })
        .collect();
    let running = behind.iter().any(|s| s.running_pod.is_some());
    Cond::new(
        CondType::CopiesHealthy,
        true,
        if running {
            Reason::CopyRunning
        } else {
            Reason::CopyScheduled
        },
        words.join("; "),
    )
}
