//! A BackupJob's scheduled checks (spec.verification), planned purely from the [`World`]: the
//! data read runs as a verify pod the job owns, the restore test as a Restore the job owns
//! (the Restore controller runs it). Each reconcile judges what runs, starts what is due
//! (never two of a kind at once), and deletes what is no longer needed: finished verify pods
//! but the newest (kept for its logs), and restore-test Restores beyond `keep`.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use super::Error;
use super::build::restore_test::{
    is_finished, last_verdict, newest_tests, restore_test, surplus_tests, test_scheduled_time,
};
use super::build::status::Checks;
use super::build::verify_pod::{VerifyPlan, finished_run, next_subset, verify_pod};
use super::dereference::{World, newest_successful};
use crate::api::agent::VerifyResult;
use crate::api::copy::CopySpec;
use crate::api::restore::ScratchClaim;
use crate::api::verification::{RestoreTest, VerificationRun};
use crate::api::{BackupJob, Snapshot};
use crate::controller::agent::deadline::{Deadline, deadline};
use crate::controller::agent::identity::identity_changes;
use crate::controller::agent::node::{needs_stopping, stop};
use crate::controller::agent::run::{RunStep, run_step};
use crate::controller::context::OperatorConfig;
use crate::controller::execute::Change;
use crate::controller::job_spec::checks::check_schedules;
use crate::controller::job_spec::schedule::{CronSchedule, due};
use crate::controller::names::SCHEDULED_TIME;
use crate::controller::reason::Reason;

/// What the checks found, what to change, and when one is next due.
#[derive(Debug, Default)]
pub struct CheckOutcome {
    pub checks: Checks,
    pub next: Option<jiff::Timestamp>,
    pub changes: Vec<Change>,
}

/// What both checks look at in one reconcile.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    pub job: &'a BackupJob,
    pub world: &'a World,
    /// The job's Snapshots, with the one this reconcile creates.
    pub snapshots: &'a [Snapshot],
    pub config: &'a OperatorConfig,
    /// The job has no problems: something new may start.
    pub healthy: bool,
    pub now: jiff::Timestamp,
}

/// Judge, start and tidy the job's checks. Pure.
pub fn plan_checks(pass: &Pass<'_>) -> Result<CheckOutcome, Error> {
    let job = pass.job;
    let prev = job.status.clone().unwrap_or_default();
    let mut out = CheckOutcome {
        checks: Checks {
            last_verification: prev.last_verification.clone(),
            verification_runs: prev.verification_runs,
            last_restore_test: prev.last_restore_test.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    if job.uid().is_none() {
        return Ok(out);
    }
    let (read_sched, test_sched) = check_schedules(job.spec.verification.as_ref());
    let v = job.spec.verification.as_ref();
    if v.is_some_and(|v| v.read_data.is_some()) {
        read_data(pass, read_sched.as_ref(), &mut out)?;
    }
    if let Some(rt) = v.and_then(|v| v.restore_test.as_ref()) {
        let due_test = test_sched.as_ref().map(|s| (s, rt));
        restore_tests(pass, due_test, &mut out)?;
    }
    Ok(out)
}

pub(super) fn earliest(
    a: Option<jiff::Timestamp>,
    b: Option<jiff::Timestamp>,
) -> Option<jiff::Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// When the job was created (its checks' schedules start there).
pub(super) fn created(job: &BackupJob, now: jiff::Timestamp) -> jiff::Timestamp {
    job.metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0)
}

/// The data read: its pods judged (and held to their deadlines), the newest result recorded,
/// older pods deleted, and a new pod when one is due.
fn read_data(
    pass: &Pass<'_>,
    sched: Option<&CronSchedule>,
    out: &mut CheckOutcome,
) -> Result<(), Error> {
    let Pass {
        job,
        world,
        healthy,
        now,
        ..
    } = *pass;
    let mut busy = false;
    let mut finished: Vec<(&Pod, VerificationRun)> = Vec::new();
    let mut last_scheduled = out
        .checks
        .last_verification
        .as_ref()
        .and_then(|l| l.scheduled_time.as_ref())
        .map(|t| t.0);
    for (pod, node) in &world.verify_pods {
        let scheduled = pod
            .annotations()
            .get(SCHEDULED_TIME)
            .and_then(|t| t.parse().ok());
        last_scheduled = last_scheduled.max(scheduled);
        let step = held_to_deadline::<VerifyResult>(
            RunOf {
                job,
                pod,
                node: node.as_ref(),
                what: "verify",
                stage: "delete_check",
            },
            now,
            &mut out.changes,
        );
        match finished_run(pod, &step) {
            Some(run) => finished.push((pod, run)),
            None => busy = true,
        }
    }
    finished.sort_by_key(|(p, _)| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.name_any(),
        )
    });
    if let Some((_, newest)) = finished.last() {
        let before = out.checks.last_verification.as_ref();
        if before.and_then(|b| b.pod.as_ref()) != newest.pod.as_ref() {
            out.changes.extend(damage_again(before, newest));
        }
        out.checks.last_verification = Some(newest.clone());
    }
    for (pod, _) in finished.iter().rev().skip(1) {
        out.changes.push(Change::delete("delete_check", *pod));
    }
    let Some(sched) = sched else { return Ok(()) };
    let d = due(sched, created(job, now), last_scheduled, now);
    out.next = earliest(out.next, d.next);
    // The repository read exists once a snapshot is in it (the copy's, with one named).
    let has_repository = match checked_copy(pass).and_then(|i| job.spec.copies.get(i)) {
        Some(c) => copied_snapshot(pass, c).is_some(),
        None => job
            .status
            .as_ref()
            .is_some_and(|s| s.last_successful_snapshot.is_some()),
    };
    match d.run {
        Some(run) if healthy && !busy && has_repository => start_verify(pass, run, out),
        _ => Ok(()),
    }
}

/// A second Event for damage found again (the condition's transition announced the first).
fn damage_again(before: Option<&VerificationRun>, run: &VerificationRun) -> Option<Change> {
    (run.problem_count > 0 && before.is_some_and(|b| b.problem_count > 0)).then(|| {
        Change::event(
            Reason::DataDamaged,
            format!(
                "reading pack group {} found {} damaged or missing object(s): {}",
                run.subset,
                run.problem_count,
                run.problems.join("; ")
            ),
        )
    })
}

/// One of the job's run pods (a verify or a copy pod) and its node.
pub(super) struct RunOf<'a> {
    pub job: &'a BackupJob,
    pub pod: &'a Pod,
    pub node: Option<&'a Node>,
    /// The run, as its messages name it.
    pub what: &'a str,
    /// The stage a stop is carried out as.
    pub stage: &'static str,
}

/// A run pod's step, stopped (a change) and failed when it overran pendingTimeout or
/// nodeLostTimeout (runTimeout is the kubelet's, through activeDeadlineSeconds).
pub(super) fn held_to_deadline<R: serde::de::DeserializeOwned>(
    run: RunOf<'_>,
    now: jiff::Timestamp,
    changes: &mut Vec<Change>,
) -> RunStep<R> {
    let RunOf {
        job,
        pod,
        node,
        what,
        stage,
    } = run;
    let step = run_step::<R>(pod, what);
    if !matches!(step, RunStep::Pending { .. } | RunStep::Running { .. }) {
        return step;
    }
    match deadline(pod, &step, Some(job), node, now, what) {
        Deadline::Within(_) => step,
        Deadline::Overrun(message) => {
            if needs_stopping(pod, node) {
                changes.push(stop(stage, pod, node));
            }
            RunStep::Failed {
                message,
                finished: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
            }
        }
    }
}

/// One kind of run pod that comes in numbered series (a copy's runs, a repository's
/// retention runs): how messages name it, the stage its deletions are carried out as, and
/// its run number.
pub(super) struct SeriesKind {
    pub what: &'static str,
    pub stage: &'static str,
    pub run_of: fn(&Pod) -> Option<u64>,
}

/// A series of run pods judged: the one pending or running, and the newest finished one with
/// its step (to be recorded in status once); every older finished pod is deleted (a change).
pub(super) struct Series<'a, R> {
    pub running: Option<&'a Pod>,
    pub newest: Option<(&'a Pod, RunStep<R>)>,
}

/// Judge `pods` of one series of `job`'s runs; `runs` rises to the highest run number a pod
/// carries (a reconcile may read the job before its own last status write).
pub(super) fn judge_series<'a, R: serde::de::DeserializeOwned>(
    job: &'a BackupJob,
    kind: &SeriesKind,
    pods: impl Iterator<Item = &'a (Pod, Option<Node>)>,
    runs: &mut u64,
    now: jiff::Timestamp,
    changes: &mut Vec<Change>,
) -> Series<'a, R> {
    let mut running = None;
    let mut finished: Vec<(&Pod, RunStep<R>)> = Vec::new();
    for (pod, node) in pods {
        *runs = (*runs).max((kind.run_of)(pod).unwrap_or(0));
        let run = RunOf {
            job,
            pod,
            node: node.as_ref(),
            what: kind.what,
            stage: kind.stage,
        };
        match held_to_deadline::<R>(run, now, changes) {
            RunStep::Pending { .. } | RunStep::Running { .. } => running = Some(pod),
            step => finished.push((pod, step)),
        }
    }
    finished.sort_by_key(|(p, _)| {
        (
            (kind.run_of)(p),
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.name_any(),
        )
    });
    let newest = finished.pop();
    changes.extend(
        finished
            .iter()
            .map(|(pod, _)| Change::delete(kind.stage, *pod)),
    );
    Series { running, newest }
}

/// The verify pod of the run scheduled at `scheduled`, after the agent's identity.
fn start_verify(
    pass: &Pass<'_>,
    scheduled: jiff::Timestamp,
    out: &mut CheckOutcome,
) -> Result<(), Error> {
    let Pass {
        job, world, config, ..
    } = *pass;
    let Some(rd) = job
        .spec
        .verification
        .as_ref()
        .and_then(|v| v.read_data.as_ref())
    else {
        return Ok(());
    };
    // A missing KmipServer or key is the job's own condition already (or the copy's).
    let (copy, kmip) = match checked_copy(pass) {
        Some(i) => (job.spec.copies.get(i), world.copy_access.get(i)),
        None => (None, world.kmip.as_ref()),
    };
    let Some(Ok(kmip)) = kmip else {
        return Ok(());
    };
    let subset = next_subset(rd.percent, out.checks.verification_runs);
    let pod = verify_pod(&VerifyPlan {
        job,
        scheduled,
        subset,
        image: &config.agent_image,
        agent_env: &config.agent_env,
        kmip: kmip.as_ref().map(|(ks, key)| (ks, key.as_str())),
        copy,
    })
    .map_err(|e| Error::BuildCheck {
        job: job.name_any(),
        reason: e.to_string(),
    })?;
    out.changes
        .extend(identity_changes("apply_check", job, None));
    out.changes.push(Change::apply("apply_check", &pod));
    out.changes.push(Change::event(
        Reason::VerificationStarted,
        format!(
            "verify pod {} reads pack group {subset} (the run scheduled at {scheduled})",
            pod.name_any()
        ),
    ));
    out.checks.verification_runs += 1;
    Ok(())
}

/// The restore tests: status from the newest, surplus ones deleted, a new one when due.
fn restore_tests(
    pass: &Pass<'_>,
    due_test: Option<(&CronSchedule, &RestoreTest)>,
    out: &mut CheckOutcome,
) -> Result<(), Error> {
    let Pass {
        job,
        world,
        healthy,
        now,
        ..
    } = *pass;
    let tests = &world.restore_tests;
    let newest = newest_tests(tests).first().copied();
    if let Some(verdict) = last_verdict(tests) {
        out.checks.last_restore_test = Some(verdict);
    }
    out.checks.restore_tests_seen = true;
    out.checks.running_restore_test = tests.iter().find(|r| !is_finished(r)).map(|r| r.name_any());
    let Some((sched, rt)) = due_test else {
        return Ok(());
    };
    for name in surplus_tests(tests, rt.keep) {
        if let Some(t) = tests.iter().find(|t| t.name_any() == name) {
            out.changes.push(Change::delete("delete_check", t));
        }
    }
    let busy = tests.iter().any(|r| !is_finished(r));
    let last = newest.and_then(test_scheduled_time).or(out
        .checks
        .last_restore_test
        .as_ref()
        .and_then(|t| t.time.as_ref())
        .map(|t| t.0));
    let d = due(sched, created(job, now), last, now);
    out.next = earliest(out.next, d.next);
    let Some(run) = d.run.filter(|_| healthy && !busy) else {
        return Ok(());
    };
    // The newest successful Snapshot (of the copy, with one named); none yet: the run catches
    // up once one exists.
    let copy = checked_copy(pass).and_then(|i| job.spec.copies.get(i));
    let snap = match copy {
        Some(c) => copied_snapshot(pass, c),
        None => newest_successful(pass.snapshots),
    };
    let Some(snap) = snap else {
        return Ok(());
    };
    let copy_id = snap
        .status
        .as_ref()
        .and_then(|s| s.repository_snapshot_id.as_deref());
    let copy = match (copy, copy_id) {
        (Some(c), Some(id)) => Some((c, id)),
        (Some(_), None) => return Ok(()),
        (None, _) => None,
    };
    let scratch = match scratch_claim(pass, rt) {
        Ok(s) => s,
        Err(why) => {
            out.checks.not_started = Some(why);
            return Ok(());
        }
    };
    let Some(restore) = restore_test(job, run, &snap.name_any(), copy, scratch) else {
        return Ok(());
    };
    // Created, never patched: the operator does not change Restores.
    out.changes.push(Change::create("apply_check", &restore));
    out.checks.running_restore_test = Some(restore.name_any());
    out.changes.push(Change::event(
        Reason::RestoreTestCreated,
        format!(
            "Restore {} restores Snapshot {} into a scratch claim to test it (the run scheduled at {run})",
            restore.name_any(),
            snap.name_any()
        ),
    ));
    Ok(())
}

/// The index of the copy spec.verification.copy names, if it names one that exists.
fn checked_copy(pass: &Pass<'_>) -> Option<usize> {
    let name = pass.job.spec.verification.as_ref()?.copy.as_ref()?;
    pass.job.spec.copies.iter().position(|c| &c.name == name)
}

/// The newest Snapshot copy `c` is known to hold (status.copies), if it still exists.
fn copied_snapshot<'a>(pass: &Pass<'a>, c: &CopySpec) -> Option<&'a Snapshot> {
    let held = pass
        .job
        .status
        .as_ref()?
        .copies
        .iter()
        .find(|s| s.name == c.name)?
        .last_copied_snapshot
        .as_ref()?;
    pass.snapshots.iter().find(|s| &s.name_any() == held)
}

/// The scratch claim's class and size: the spec's, else those of the data claim of the member
/// the Snapshot copied. `Err`: why neither is known.
fn scratch_claim(pass: &Pass<'_>, rt: &RestoreTest) -> Result<ScratchClaim, String> {
    if let (Some(size), Some(_)) = (&rt.size, &rt.storage_class_name) {
        return Ok(ScratchClaim {
            storage_class_name: rt.storage_class_name.clone(),
            size: size.clone(),
        });
    }
    let source = pass.world.source_claim.as_ref();
    let spec = source.and_then(|c| c.spec.clone()).unwrap_or_default();
    let size = rt.size.clone().or_else(|| {
        spec.resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
    });
    let Some(size) = size else {
        let snap = newest_successful(pass.snapshots)
            .map(|s| s.name_any())
            .unwrap_or_default();
        return Err(format!(
            "spec.verification.restoreTest.size: not given, and the data claim of the member Snapshot {snap} copied {}; give size (and storageClassName)",
            if source.is_some() {
                "has no storage request"
            } else {
                "could not be found"
            }
        ));
    };
    Ok(ScratchClaim {
        storage_class_name: rt.storage_class_name.clone().or(spec.storage_class_name),
        size,
    })
}
