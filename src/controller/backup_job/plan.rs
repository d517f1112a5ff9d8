//! Plan, pure: from the job and its [`World`], validate the spec and its references, decide
//! whether a run is due, build its Snapshot, plan the scheduled checks, and the next status;
//! the changes to carry out (before the status write) and when to look again.

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::Error;
use super::build::status::{Observed, job_status, scheduled_time};
use super::catalog::plan_catalog;
use super::checks::{Pass, plan_checks};
use super::copies::plan_copies;
use super::dereference::World;
use super::retention::plan_retention;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, BackupJobStatus, Snapshot};
use crate::controller::context::OperatorConfig;
use crate::controller::execute::Change;
use crate::controller::job_spec::schedule::{self, due};
use crate::controller::job_spec::validate::{Problem, check_references, check_spec, references};
use crate::controller::reason::Reason;

/// How soon a job that waits for a referenced object (a Secret, a claim, a KmipServer) looks
/// again: it starts within seconds of the object's creation (#29). A watch of every Secret in
/// the namespace would need list and watch on Secrets, which the operator is not given.
const RECHECK_MISSING: Duration = Duration::from_secs(5);
/// Longest wait between reconciles of a healthy job.
const MAX_IDLE: Duration = Duration::from_secs(3600);

/// What a reconcile of a BackupJob decided.
#[derive(Debug)]
pub struct Outcome {
    /// Carried out in order, before the status is written.
    pub changes: Vec<Change>,
    pub status: BackupJobStatus,
    pub requeue: Action,
}

/// Validate, decide, build and plan the checks. Pure.
pub fn plan(
    job: &BackupJob,
    world: &World,
    config: &OperatorConfig,
    now: jiff::Timestamp,
) -> Result<Outcome, Error> {
    let ns = job.namespace().unwrap_or_default();
    // Validate: the spec and its references.
    let (schedule, mut problems) = check_spec(&job.spec);
    problems.extend(check_references(&references(&job.spec), &world.found, &ns));

    // The catalog: the snapshots the repository already holds for the job, and who writes
    // them; a job whose snapshots another cluster writes only reads.
    let catalog = plan_catalog(job, world, config, problems.is_empty(), now);
    if let Some(owner) = &catalog.owned_elsewhere {
        problems.push(Problem::new(
            Reason::RepositoryOwnedElsewhere,
            format!(
                "spec.destination: the snapshots of this job in the repository are written by cluster {owner}; this cluster ({}) only reads them (imported Snapshots, restores), and neither backs up nor applies retention, so two clusters never prune each other's snapshots. If cluster {owner} is gone for good, set spec.takeOverFrom: {owner}",
                config.cluster_id
            ),
        ));
    }

    // Decide: is a run due? Build its Snapshot.
    let decision = decide(job, schedule.as_ref(), &world.snapshots, &problems, now);
    let mut changes = catalog.changes;
    let mut snapshots = world.snapshots.clone();
    if let Some(run) = &decision.create {
        let snap =
            super::build::snapshot::scheduled_snapshot(job, run.scheduled).ok_or_else(|| {
                Error::BuildSnapshot {
                    job: job.name_any(),
                    scheduled: run.scheduled.to_string(),
                }
            })?;
        let skipped = if run.skipped > 0 {
            format!(
                "; {} earlier scheduled run(s) were missed and skipped (at most one run catches up)",
                run.skipped
            )
        } else {
            String::new()
        };
        changes.push(Change::apply("apply_snapshot", &snap));
        changes.push(Change::event(
            Reason::SnapshotCreated,
            format!(
                "created Snapshot {} for the run scheduled at {}{skipped}",
                snap.name_any(),
                run.scheduled
            ),
        ));
        snapshots.retain(|s| s.name_any() != snap.name_any());
        snapshots.push(snap);
    }

    // The scheduled checks and the copies: judge their runs, start what is due, tidy.
    let pass = Pass {
        job,
        world,
        snapshots: &snapshots,
        config,
        healthy: problems.is_empty(),
        now,
    };
    let checked = plan_checks(&pass)?;
    changes.extend(checked.changes);
    let copies = plan_copies(&pass)?;
    changes.extend(copies.changes);
    let mut copy_statuses = copies.statuses;
    let retention = plan_retention(&pass, &mut copy_statuses)?;
    changes.extend(retention.changes);

    let mut status = job_status(&Observed {
        job,
        snapshots: &snapshots,
        problems: &problems,
        next_schedule: decision.next,
        checks: &checked.checks,
        copies: copies.condition.as_ref(),
        retention: retention.condition.as_ref(),
        now,
    });
    status.catalog = catalog.status;
    status.copies = copy_statuses;
    status.retention = retention.status;
    let missing = problems.iter().any(Problem::is_missing_reference);
    let next = [
        decision.next,
        checked.next,
        catalog.next,
        copies.next,
        retention.next,
    ]
    .into_iter()
    .flatten()
    .min();
    Ok(Outcome {
        changes,
        status,
        requeue: requeue_after(next, missing, now),
    })
}

/// What the job should do now. Pure.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub create: Option<Run>,
    pub next: Option<jiff::Timestamp>,
}

/// A run to create.
#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    pub scheduled: jiff::Timestamp,
    /// Scheduled times missed and skipped before this one.
    pub skipped: u32,
}

/// Decide whether a Snapshot is due: never with problems or when suspended; with a schedule at
/// its latest due time (one catch-up after downtime); without one, exactly once. A run is not
/// created while another Snapshot of the job waits to start (it would only queue behind it).
pub fn decide(
    job: &BackupJob,
    schedule: Option<&schedule::CronSchedule>,
    snapshots: &[Snapshot],
    problems: &[Problem],
    now: jiff::Timestamp,
) -> Decision {
    if !problems.is_empty() || job.spec.suspend {
        return Decision {
            create: None,
            next: None,
        };
    }
    let created = job
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let waiting = snapshots.iter().any(|s| {
        s.status
            .as_ref()
            .is_none_or(|st| st.phase == RunPhase::Pending)
            && !s.has_started()
    });
    match schedule {
        Some(sched) => {
            // The newest run already created: from the Snapshots, or from status (which
            // survives their deletion).
            let last = snapshots
                .iter()
                .filter_map(scheduled_time)
                .chain(
                    job.status
                        .as_ref()
                        .and_then(|s| s.last_snapshot_time.as_ref())
                        .map(|t| t.0),
                )
                .max();
            let d = due(sched, created, last, now);
            Decision {
                create: d.run.filter(|_| !waiting).map(|t| Run {
                    scheduled: t,
                    skipped: d.skipped,
                }),
                next: d.next,
            }
        }
        None => {
            let done = !snapshots.is_empty()
                || job
                    .status
                    .as_ref()
                    .is_some_and(|s| s.last_snapshot.is_some());
            Decision {
                create: (!done).then_some(Run {
                    scheduled: created,
                    skipped: 0,
                }),
                next: None,
            }
        }
    }
}

fn requeue_after(next: Option<jiff::Timestamp>, missing: bool, now: jiff::Timestamp) -> Action {
    let mut wait = MAX_IDLE;
    if let Some(next) = next {
        let secs = next.duration_since(now).as_secs().max(0) as u64 + 1;
        wait = wait.min(Duration::from_secs(secs));
    }
    if missing {
        wait = wait.min(RECHECK_MISSING);
    }
    Action::requeue(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{self, job};
    use kube::runtime::controller::Action;

    fn snap(name: &str, scheduled: &str, phase: Option<RunPhase>, pod: Option<&str>) -> Snapshot {
        fixtures::scheduled_snapshot(name, scheduled, phase, pod)
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("time")
    }

    fn decide_at(job: &BackupJob, snaps: &[Snapshot], now: &str) -> Decision {
        let (sched, problems) = check_spec(&job.spec);
        decide(job, sched.as_ref(), snaps, &problems, ts(now))
    }

    #[test]
    fn decision_table() {
        let hourly = job("schedule: {cron: \"0 * * * *\"}");
        let done = snap(
            "rs0-202611271000",
            "2026-11-27T10:00:00Z",
            Some(RunPhase::Succeeded),
            Some("p"),
        );
        let waiting = snap(
            "rs0-202611271000",
            "2026-11-27T10:00:00Z",
            Some(RunPhase::Pending),
            None,
        );
        let running = snap(
            "rs0-202611271000",
            "2026-11-27T10:00:00Z",
            Some(RunPhase::Running),
            Some("p"),
        );
        let run = |t: &str, skipped| {
            Some(Run {
                scheduled: ts(t),
                skipped,
            })
        };
        type Case<'a> = (&'a str, &'a BackupJob, Vec<Snapshot>, &'a str, Option<Run>);
        let cases: Vec<Case> = vec![
            (
                "first tick",
                &hourly,
                vec![],
                "2026-11-27T10:00:30Z",
                run("2026-11-27T10:00:00Z", 0),
            ),
            (
                "before the first tick",
                &hourly,
                vec![],
                "2026-11-27T09:59:00Z",
                None,
            ),
            (
                "tick done",
                &hourly,
                vec![done.clone()],
                "2026-11-27T10:30:00Z",
                None,
            ),
            (
                "next tick",
                &hourly,
                vec![done.clone()],
                "2026-11-27T11:00:01Z",
                run("2026-11-27T11:00:00Z", 0),
            ),
            (
                "catch up once",
                &hourly,
                vec![done.clone()],
                "2026-11-27T14:20:00Z",
                run("2026-11-27T14:00:00Z", 3),
            ),
            (
                "a running snapshot does not stop the next run (it waits)",
                &hourly,
                vec![running],
                "2026-11-27T11:00:01Z",
                run("2026-11-27T11:00:00Z", 0),
            ),
            (
                "one already waiting: no pile-up",
                &hourly,
                vec![waiting],
                "2026-11-27T11:00:01Z",
                None,
            ),
        ];
        for (what, j, snaps, now, want) in cases {
            assert_eq!(decide_at(j, &snaps, now).create, want, "{what}");
        }
    }

    #[test]
    fn no_schedule_runs_exactly_once() {
        let once = job("");
        let d = decide_at(&once, &[], "2026-11-27T09:30:05Z");
        assert_eq!(
            d.create,
            Some(Run {
                scheduled: ts("2026-11-27T09:30:00Z"),
                skipped: 0
            })
        );
        assert_eq!(d.next, None);
        let s = snap(
            "rs0-202611270930",
            "2026-11-27T09:30:00Z",
            Some(RunPhase::Failed),
            Some("p"),
        );
        assert_eq!(decide_at(&once, &[s], "2026-11-27T09:40:00Z").create, None);
        // Deleting the Snapshot does not bring the run back: status remembers it.
        let mut remembered = once.clone();
        remembered.status = Some(crate::api::BackupJobStatus {
            last_snapshot: Some("rs0-202611270930".into()),
            ..Default::default()
        });
        assert_eq!(
            decide_at(&remembered, &[], "2026-11-27T09:40:00Z").create,
            None
        );
    }

    #[test]
    fn status_remembers_the_last_run_when_snapshots_are_deleted() {
        let mut hourly = job("schedule: {cron: \"0 * * * *\"}");
        hourly.status = Some(crate::api::BackupJobStatus {
            last_snapshot_time: Some(Time(ts("2026-11-27T10:00:00Z"))),
            ..Default::default()
        });
        assert_eq!(decide_at(&hourly, &[], "2026-11-27T10:30:00Z").create, None);
    }

    #[test]
    fn suspended_or_invalid_jobs_create_nothing() {
        let suspended = job("schedule: {cron: \"0 * * * *\"}\nsuspend: true");
        assert_eq!(
            decide_at(&suspended, &[], "2026-11-27T11:00:01Z"),
            Decision {
                create: None,
                next: None
            }
        );
        let bad = job("schedule: {cron: \"61 * * * *\"}");
        assert_eq!(decide_at(&bad, &[], "2026-11-27T11:00:01Z").create, None);
    }

    #[test]
    fn requeue_until_the_next_run_or_sooner_when_references_are_missing() {
        let now = ts("2026-11-27T10:00:00Z");
        assert_eq!(
            requeue_after(Some(ts("2026-11-27T10:10:00Z")), false, now),
            Action::requeue(Duration::from_secs(601))
        );
        assert_eq!(
            requeue_after(Some(ts("2026-11-27T10:10:00Z")), true, now),
            Action::requeue(RECHECK_MISSING)
        );
        assert_eq!(requeue_after(None, false, now), Action::requeue(MAX_IDLE));
    }
}
