//! The BackupJob controller: checks the job, creates a Snapshot when the schedule says so (or
//! once, without a schedule), and mirrors its Snapshots into status.
//!
//! dereference (the job's Snapshots and the objects it names) -> validate (pure) -> decide
//! (pure: is a run due?) -> build (pure: the Snapshot) -> apply -> update status, with an Event
//! for every condition transition.

pub mod build;
mod checks;

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use self::build::status::{Observed, job_status, scheduled_time};
use super::context::Context;
use super::job_spec::references::find_references;
use super::job_spec::schedule::{self, due};
use super::job_spec::validate::{Found, Problem, check_references, check_spec, references};
use super::kube_api::{apply, apply_status, scoped_api};
use super::reason::Reason;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, Restore, Snapshot};
use crate::controller::names::{RESTORE_TEST_JOB_UID_LABEL, VERIFY_JOB_UID_LABEL};
use k8s_openapi::api::core::v1::Pod;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "backupjob";

/// How often a job whose references are missing looks again (Secrets are not watched).
/// How soon a job that waits for a referenced object (a Secret, a claim, a KmipServer) looks
/// again: it starts within seconds of the object's creation (#29). A watch of every Secret in
/// the namespace would need list and watch on Secrets, which the operator is not given.
const RECHECK_MISSING: Duration = Duration::from_secs(5);
/// Longest wait between reconciles of a healthy job.
const MAX_IDLE: Duration = Duration::from_secs(3600);

/// A reconcile failure, by stage. Problems with the spec are not errors: they become
/// conditions and the job waits for a change.
#[derive(Debug, thiserror::Error, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Error {
    #[error("BackupJob {job}: reading {what}: {source}")]
    Dereference {
        job: String,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("BackupJob {job}: building the Snapshot for {scheduled}: the job has no uid")]
    BuildSnapshot { job: String, scheduled: String },
    #[error("BackupJob {job}: creating Snapshot {snapshot}: {source}")]
    ApplySnapshot {
        job: String,
        snapshot: String,
        #[source]
        source: kube::Error,
    },
    #[error("BackupJob {job}: building a check's pod: {reason}")]
    BuildCheck { job: String, reason: String },
    #[error("BackupJob {job}: creating {object}: {source}")]
    ApplyCheck {
        job: String,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("BackupJob {job}: deleting {object}: {source}")]
    DeleteCheck {
        job: String,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("BackupJob {job}: updating status: {source}")]
    UpdateStatus {
        job: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The stage, as a metrics label: the variant's name in snake case.
    pub fn category(&self) -> &'static str {
        self.into()
    }
}

/// The BackupJob controller's stream; it also wakes for every Snapshot naming a job.
pub fn controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    use futures::StreamExt;
    let jobs: Api<BackupJob> = scoped_api(&ctx.client, namespace.as_deref());
    let snaps: Api<Snapshot> = scoped_api(&ctx.client, namespace.as_deref());
    // The job's checks: its verify pods and restore-test Restores, by their owner.
    let pods: Api<Pod> = scoped_api(&ctx.client, namespace.as_deref());
    let tests: Api<Restore> = scoped_api(&ctx.client, namespace.as_deref());
    let own = |label: &str| watcher::Config::default().any_semantic().labels(label);
    let ctl = super::kube_api::lean_controller(jobs);
    ctx.metrics.watch_jobs(ctl.store());
    ctl.watches(snaps, watcher::Config::default().any_semantic(), |s| {
        let ns = s.namespace()?;
        Some(ObjectRef::<BackupJob>::new(&s.spec.backup_job_ref.name).within(&ns))
    })
    .owns(pods, own(VERIFY_JOB_UID_LABEL))
    .owns(tests, own(RESTORE_TEST_JOB_UID_LABEL))
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .map(super::kube_api::log_stream_error(CONTROLLER))
}

fn error_policy(job: Arc<BackupJob>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_failure(CONTROLLER, job.as_ref(), err.category(), err)
}

/// What the job refers to and its Snapshots, as read from the API.
struct World {
    snapshots: Vec<Snapshot>,
    found: Found,
}

#[tracing::instrument(name = "reconcile", skip_all, fields(
    controller = CONTROLLER,
    namespace = %job.namespace().unwrap_or_default(),
    name = %job.name_any(),
))]
async fn reconcile(job: Arc<BackupJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = jiff::Timestamp::now();

    // 1. Dereference: the job's Snapshots and every object the spec names.
    let world = dereference(&job, &ctx.client).await?;

    // 2. Validate (pure): the spec and its references.
    let (schedule, mut problems) = check_spec(&job.spec);
    problems.extend(check_references(&references(&job.spec), &world.found, &ns));

    // 3. Decide (pure): is a run due?
    let decision = decide(&job, schedule.as_ref(), &world.snapshots, &problems, now);

    // 4. Build (pure) and 5. apply the Snapshot of a due run.
    let mut snapshots = world.snapshots;
    if let Some(run) = &decision.create {
        let snap = build::snapshot::scheduled_snapshot(&job, run.scheduled).ok_or_else(|| {
            Error::BuildSnapshot {
                job: name.clone(),
                scheduled: run.scheduled.to_string(),
            }
        })?;
        let api: Api<Snapshot> = Api::namespaced(ctx.client.clone(), &ns);
        let created = apply(&api, &snap)
            .await
            .map_err(|source| Error::ApplySnapshot {
                job: name.clone(),
                snapshot: snap.name_any(),
                source,
            })?;
        let skipped = if run.skipped > 0 {
            format!(
                "; {} earlier scheduled run(s) were missed and skipped (at most one run catches up)",
                run.skipped
            )
        } else {
            String::new()
        };
        ctx.event(
            job.as_ref(),
            Reason::SnapshotCreated,
            format!(
                "created Snapshot {} for the run scheduled at {}{skipped}",
                created.name_any(),
                run.scheduled
            ),
        )
        .await;
        snapshots.retain(|s| s.name_any() != created.name_any());
        snapshots.push(created);
    }

    // 6. The scheduled checks: judge, start what is due, tidy.
    let checked = checks::run_checks(&job, &ctx, &snapshots, problems.is_empty(), now).await?;

    // 7. Update status, and announce every condition transition.
    let status = job_status(&Observed {
        job: &job,
        snapshots: &snapshots,
        problems: &problems,
        next_schedule: decision.next,
        checks: &checked.checks,
        now,
    });
    let old = job.status.clone().unwrap_or_default();
    if old != status {
        let api: Api<BackupJob> = Api::namespaced(ctx.client.clone(), &ns);
        apply_status(&api, &name, &status)
            .await
            .map_err(|source| Error::UpdateStatus {
                job: name.clone(),
                source,
            })?;
    }
    ctx.announce(job.as_ref(), &old.conditions, &status.conditions)
        .await;
    ctx.reconciled(CONTROLLER, job.as_ref());

    // When to look again.
    let missing = problems.iter().any(Problem::is_missing_reference);
    let next = match (decision.next, checked.next) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(requeue_after(next, missing, now))
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

async fn dereference(job: &BackupJob, client: &Client) -> Result<World, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let err = |what: &str| {
        let job = name.clone();
        let what = what.to_string();
        move |source| Error::Dereference { job, what, source }
    };
    let snaps: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    let snapshots = snaps
        .list(&ListParams::default())
        .await
        .map_err(err("Snapshots"))?
        .items
        .into_iter()
        .filter(|s| s.spec.backup_job_ref.name == name)
        .collect();
    let found = find_references(client, &ns, &references(&job.spec))
        .await
        .map_err(err("referenced objects"))?;
    Ok(World { snapshots, found })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{self, job};

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
