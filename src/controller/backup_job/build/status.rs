//! A BackupJob's status, from its spec, its Snapshots and what validation found. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::restore_test::check_conditions;
use crate::api::backup_job::{BackupJobPhase, BackupJobStatus};
use crate::api::snapshot::RunPhase;
use crate::api::verification::{RestoreTestRun, VerificationRun};
use crate::api::{BackupJob, Snapshot};
use crate::controller::conditions::CondType;
use crate::controller::conditions::{Cond, merge};
use crate::controller::job_spec::validate::Problem;
use crate::controller::names::SCHEDULED_TIME;
use crate::controller::reason::Reason;

/// What one reconcile saw and decided.
pub struct Observed<'a> {
    pub job: &'a BackupJob,
    /// The job's Snapshots (any order), including one created in this reconcile.
    pub snapshots: &'a [Snapshot],
    pub problems: &'a [Problem],
    /// The schedule's next time (None: no schedule, suspended, or invalid).
    pub next_schedule: Option<jiff::Timestamp>,
    /// What the scheduled checks (spec.verification) found.
    pub checks: &'a Checks,
    /// CopiesHealthy, with spec.copies.
    pub copies: Option<&'a Cond>,
    /// RetentionApplied, with spec.retention.credentialsSecret once a run has ended.
    pub retention: Option<&'a Cond>,
    pub now: jiff::Timestamp,
}

/// What a job's scheduled checks found in one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checks {
    /// The last data read that ended.
    pub last_verification: Option<VerificationRun>,
    /// Data reads started so far.
    pub verification_runs: u64,
    /// The newest restore test that ended.
    pub last_restore_test: Option<RestoreTestRun>,
    /// Whether it was seen this reconcile (else it is only remembered: no condition).
    pub restore_tests_seen: bool,
    /// The restore test running now.
    pub running_restore_test: Option<String>,
    /// Why a due restore test could not be started.
    pub not_started: Option<String>,
}

fn phase_of(s: &Snapshot) -> RunPhase {
    s.status.as_ref().map(|st| st.phase).unwrap_or_default()
}

/// When a snapshot was scheduled for (its annotation), else when it was created.
pub fn scheduled_time(s: &Snapshot) -> Option<jiff::Timestamp> {
    s.annotations()
        .get(SCHEDULED_TIME)
        .and_then(|t| t.parse().ok())
        .or_else(|| s.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Snapshots newest first (by creation, then name).
fn newest_first(snaps: &[Snapshot]) -> Vec<&Snapshot> {
    let mut v: Vec<&Snapshot> = snaps.iter().collect();
    v.sort_by(|a, b| {
        (
            b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            b.name_any(),
        )
            .cmp(&(
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                a.name_any(),
            ))
    });
    v
}

/// The Snapshot that ended last (Succeeded or Failed).
fn last_finished<'a>(snaps: &[&'a Snapshot]) -> Option<&'a Snapshot> {
    snaps
        .iter()
        .copied()
        .filter(|s| matches!(phase_of(s), RunPhase::Succeeded | RunPhase::Failed))
        .max_by_key(|s| {
            (
                s.status
                    .as_ref()
                    .and_then(|st| st.completion_time.as_ref())
                    .map(|t| t.0),
                s.name_any(),
            )
        })
}

pub fn job_status(o: &Observed) -> BackupJobStatus {
    let job = o.job;
    let prev = job.status.clone().unwrap_or_default();
    let snaps = newest_first(o.snapshots);
    let newest = snaps.first().copied();
    let running = snaps.iter().copied().find(|s| s.has_started());
    let waiting = snaps
        .iter()
        .copied()
        .filter(|s| phase_of(s) == RunPhase::Pending && !s.has_started())
        .count();
    let succeeded: Vec<&Snapshot> = snaps
        .iter()
        .copied()
        .filter(|s| phase_of(s) == RunPhase::Succeeded)
        .collect();
    let last_ok = succeeded.iter().copied().max_by_key(|s| {
        s.status
            .as_ref()
            .and_then(|st| st.completion_time.as_ref())
            .map(|t| t.0)
    });
    let last_finished = last_finished(&snaps);
    let one_off_done =
        job.spec.schedule.is_none() && running.is_none() && waiting == 0 && last_finished.is_some();

    let (phase, mut conds) = health(o, last_finished, running.is_some(), one_off_done);
    conds.push(progressing(running, waiting));
    conds.push(suspended(job));
    let checks = o.checks;
    conds.extend(checks_conditions(checks));
    conds.extend(o.copies.cloned());
    conds.extend(o.retention.cloned());

    let generation = job.metadata.generation;
    let now = Time(o.now);
    let running_status = running.and_then(|r| r.status.as_ref());
    BackupJobStatus {
        phase,
        observed_generation: generation,
        conditions: merge(&prev.conditions, &conds, generation, &now),
        last_snapshot: newest.map(|s| s.name_any()).or(prev.last_snapshot),
        last_snapshot_time: newest
            .and_then(scheduled_time)
            .map(Time)
            .or(prev.last_snapshot_time),
        last_successful_snapshot: last_ok
            .map(|s| s.name_any())
            .or(prev.last_successful_snapshot),
        last_successful_time: last_ok
            .and_then(|s| s.status.as_ref().and_then(|st| st.completion_time.clone()))
            .or(prev.last_successful_time),
        next_schedule_time: o.next_schedule.map(Time),
        running_snapshot: running.map(|s| s.name_any()),
        progress: running_status.and_then(|st| st.progress.clone()),
        progress_summary: running_status.and_then(|st| st.progress_summary.clone()),
        snapshot_count: succeeded.len() as u64,
        stored_bytes: succeeded
            .iter()
            .filter_map(|s| s.status.as_ref().and_then(|st| st.stats.as_ref()))
            .map(|st| st.stored_bytes)
            .sum(),
        key_id: last_ok
            .and_then(|s| s.status.as_ref().and_then(|st| st.key_id.clone()))
            .or(prev.key_id),
        last_verification: checks.last_verification.clone(),
        verification_runs: checks.verification_runs,
        last_restore_test: checks.last_restore_test.clone(),
        running_restore_test: checks.running_restore_test.clone(),
        catalog: prev.catalog,
        copies: Vec::new(),
        retention: None,
    }
}

/// The job's phase, and its Ready and Degraded conditions: its problems, else how its last
/// finished Snapshot ended.
fn health(
    o: &Observed,
    last_finished: Option<&Snapshot>,
    running: bool,
    one_off_done: bool,
) -> (BackupJobPhase, Vec<Cond>) {
    let mut conds = Vec::new();
    let phase;
    let job = o.job;
    if let Some(first) = o.problems.first() {
        let message = o
            .problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        conds.push(Cond::new(
            CondType::Ready,
            false,
            first.reason,
            message.clone(),
        ));
        // Waiting for objects that do not exist yet is not a failure (#29).
        let waiting = o.problems.iter().all(Problem::is_missing_reference);
        conds.push(Cond::new(
            CondType::Degraded,
            !waiting,
            first.reason,
            message,
        ));
        phase = if waiting {
            BackupJobPhase::Waiting
        } else {
            BackupJobPhase::Failed
        };
    } else {
        let ready_msg = ready_message(job, o.next_schedule);
        conds.push(Cond::new(CondType::Ready, true, Reason::Valid, ready_msg));
        match last_finished {
            Some(s) if phase_of(s) == RunPhase::Failed => conds.push(Cond::new(
                CondType::Degraded,
                true,
                Reason::LastSnapshotFailed,
                format!(
                    "Snapshot {} failed: {}",
                    s.name_any(),
                    s.status
                        .as_ref()
                        .and_then(|st| st.message.clone())
                        .unwrap_or_default()
                ),
            )),
            _ => conds.push(Cond::new(CondType::Degraded, false, Reason::AsExpected, "")),
        }
        phase = if running {
            BackupJobPhase::Running
        } else if job.spec.suspend {
            BackupJobPhase::Suspended
        } else if one_off_done {
            match last_finished.map(phase_of) {
                Some(RunPhase::Failed) => BackupJobPhase::Failed,
                _ => BackupJobPhase::Completed,
            }
        } else {
            BackupJobPhase::Ready
        };
    }
    (phase, conds)
}

/// DataVerified and RestoreTested from what the checks found.
fn checks_conditions(checks: &Checks) -> Vec<Cond> {
    let mut conds = check_conditions(
        checks.last_verification.as_ref(),
        checks
            .last_restore_test
            .as_ref()
            .filter(|_| checks.restore_tests_seen),
    );
    if let Some(why) = &checks.not_started {
        conds.retain(|c| c.type_ != CondType::RestoreTested);
        conds.push(Cond::new(
            CondType::RestoreTested,
            false,
            Reason::RestoreTestNotStarted,
            why.clone(),
        ));
    }
    conds
}

/// What Ready says of a valid job: when it next runs.
fn ready_message(job: &BackupJob, next: Option<jiff::Timestamp>) -> String {
    match (&job.spec.schedule, next) {
        _ if job.spec.suspend => {
            "suspended by spec.suspend: no new snapshots are created".to_string()
        }
        (Some(s), Some(next)) => format!("next run at {next} ({} in {})", s.cron, s.time_zone),
        (Some(_), None) => "the schedule has no further runs".to_string(),
        (None, _) => "no schedule: one snapshot is taken".to_string(),
    }
}

/// Progressing: the running Snapshot (with its progress), or how many wait.
fn progressing(running: Option<&Snapshot>, waiting: usize) -> Cond {
    match (running, waiting) {
        (Some(r), _) => Cond::new(
            CondType::Progressing,
            true,
            Reason::SnapshotRunning,
            format!(
                "Snapshot {} is running{}",
                r.name_any(),
                r.status
                    .as_ref()
                    .and_then(|st| st.progress_summary.as_ref())
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default()
            ),
        ),
        (None, n) if n > 0 => Cond::new(
            CondType::Progressing,
            true,
            Reason::SnapshotPending,
            format!("{n} Snapshot(s) waiting to start"),
        ),
        _ => Cond::new(
            CondType::Progressing,
            false,
            Reason::Idle,
            "no Snapshot is running",
        ),
    }
}

/// Suspended, from `spec.suspend`.
fn suspended(job: &BackupJob) -> Cond {
    if job.spec.suspend {
        Cond::new(
            CondType::Suspended,
            true,
            Reason::Suspended,
            "spec.suspend is true",
        )
    } else {
        Cond::new(CondType::Suspended, false, Reason::NotSuspended, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{self, job};

    fn snap(name: &str, created: &str, phase: RunPhase) -> Snapshot {
        fixtures::snapshot_in(name, created, phase, None)
    }
    use crate::api::common::Progress;
    use crate::api::snapshot::SnapshotStats;

    fn status(job: &BackupJob, snaps: &[Snapshot], problems: &[Problem]) -> BackupJobStatus {
        job_status(&Observed {
            job,
            snapshots: snaps,
            problems,
            next_schedule: Some("2026-11-28T03:00:00Z".parse().expect("t")),
            checks: &Checks::default(),
            copies: None,
            retention: None,
            now: "2026-11-27T12:00:00Z".parse().expect("t"),
        })
    }

    fn cond(st: &BackupJobStatus, t: &str) -> String {
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition");
        format!("{} {}", c.status, c.reason)
    }

    #[test]
    fn running_snapshot_is_mirrored() {
        let j = job("schedule: {cron: \"0 3 * * *\"}");
        let mut running = snap(
            "rs0-202611270300",
            "2026-11-27T03:00:00Z",
            RunPhase::Running,
        );
        if let Some(st) = running.status.as_mut() {
            st.progress = Some(Progress {
                bytes_done: 50,
                bytes_total: 100,
                percent: 50.0,
                ..Default::default()
            });
            st.progress_summary = Some("50% 50 B/100 B".into());
        }
        let mut ok = snap(
            "rs0-202611260300",
            "2026-11-26T03:00:00Z",
            RunPhase::Succeeded,
        );
        if let Some(st) = ok.status.as_mut() {
            st.completion_time = Some(Time("2026-11-26T03:05:00Z".parse().expect("t")));
            st.key_id = Some("local:abc".into());
            st.stats = Some(SnapshotStats {
                stored_bytes: 1234,
                ..Default::default()
            });
        }
        let st = status(&j, &[ok, running], &[]);
        assert_eq!(st.phase, BackupJobPhase::Running);
        assert_eq!(st.running_snapshot.as_deref(), Some("rs0-202611270300"));
        assert_eq!(st.last_snapshot.as_deref(), Some("rs0-202611270300"));
        assert_eq!(
            st.last_successful_snapshot.as_deref(),
            Some("rs0-202611260300")
        );
        assert_eq!(st.progress.as_ref().map(|p| p.percent), Some(50.0));
        assert_eq!(st.progress_summary.as_deref(), Some("50% 50 B/100 B"));
        assert_eq!((st.snapshot_count, st.stored_bytes), (1, 1234));
        assert_eq!(st.key_id.as_deref(), Some("local:abc"));
        assert_eq!(st.observed_generation, Some(3));
        assert_eq!(cond(&st, "Ready"), "True Valid");
        assert_eq!(cond(&st, "Progressing"), "True SnapshotRunning");
        assert_eq!(cond(&st, "Degraded"), "False AsExpected");
        assert_eq!(cond(&st, "Suspended"), "False NotSuspended");
    }

    #[test]
    fn problems_make_it_failed_and_degraded() {
        let j = job("schedule: {cron: \"61 * * * *\"}");
        let p = Problem {
            reason: Reason::InvalidSchedule,
            message: "spec.schedule.cron \"61 * * * *\": minute 61 is out of range 0-59".into(),
        };
        let st = status(&j, &[], &[p]);
        assert_eq!(st.phase, BackupJobPhase::Failed);
        assert_eq!(cond(&st, "Ready"), "False InvalidSchedule");
        assert_eq!(cond(&st, "Degraded"), "True InvalidSchedule");
        assert!(st.conditions[0].message.contains("minute 61"));
    }

    /// #29: a Secret that does not exist yet is a wait, not a failure; a spec problem beside
    /// it still fails the job.
    #[test]
    fn a_missing_secret_is_waiting_not_failed() {
        let j = job("schedule: {cron: \"0 3 * * *\"}");
        let missing = Problem {
            reason: Reason::SecretNotFound,
            message: "spec.encryption.localKeySecret \"k\": Secret not found in namespace db"
                .into(),
        };
        let st = status(&j, &[], std::slice::from_ref(&missing));
        assert_eq!(st.phase, BackupJobPhase::Waiting);
        assert_eq!(cond(&st, "Ready"), "False SecretNotFound");
        assert_eq!(cond(&st, "Degraded"), "False SecretNotFound");
        let bad = Problem {
            reason: Reason::InvalidSchedule,
            message: "spec.schedule.cron: out of range".into(),
        };
        let st = status(&j, &[], &[missing, bad]);
        assert_eq!(st.phase, BackupJobPhase::Failed);
    }

    /// #29: a run that failed (before any copy) is not reported as a success: no last
    /// successful snapshot, no key, nothing stored; the job says the run failed.
    #[test]
    fn a_failed_run_reports_no_success_and_no_key() {
        let j = job("schedule: {cron: \"0 3 * * *\"}");
        let mut failed = snap("rs0-202611270300", "2026-11-27T03:00:00Z", RunPhase::Failed);
        if let Some(st) = failed.status.as_mut() {
            st.message = Some("could not connect to mongod on member rs0-0".into());
        }
        let st = status(&j, &[failed], &[]);
        assert_eq!(st.last_successful_snapshot, None);
        assert_eq!(st.last_successful_time, None);
        assert_eq!(st.key_id, None);
        assert_eq!((st.snapshot_count, st.stored_bytes), (0, 0));
        assert_eq!(cond(&st, "Degraded"), "True LastSnapshotFailed");
    }

    #[test]
    fn one_off_completes_or_fails_with_its_snapshot() {
        let j = job("");
        let st = status(
            &j,
            &[snap("rs0-1", "2026-11-27T03:00:00Z", RunPhase::Succeeded)],
            &[],
        );
        assert_eq!(st.phase, BackupJobPhase::Completed);
        let st = status(
            &j,
            &[snap("rs0-1", "2026-11-27T03:00:00Z", RunPhase::Failed)],
            &[],
        );
        assert_eq!(st.phase, BackupJobPhase::Failed);
        assert_eq!(cond(&st, "Degraded"), "True LastSnapshotFailed");
        let st = status(
            &j,
            &[snap("rs0-1", "2026-11-27T03:00:00Z", RunPhase::Pending)],
            &[],
        );
        assert_eq!(st.phase, BackupJobPhase::Ready);
        assert_eq!(cond(&st, "Progressing"), "True SnapshotPending");
    }

    #[test]
    fn suspended() {
        let j = job("schedule: {cron: \"0 3 * * *\"}\nsuspend: true");
        let st = status(&j, &[], &[]);
        assert_eq!(st.phase, BackupJobPhase::Suspended);
        assert_eq!(cond(&st, "Suspended"), "True Suspended");
    }
}
