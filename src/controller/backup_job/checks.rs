//! A BackupJob's scheduled checks (spec.verification): the data read runs as a verify pod the
//! job owns, the restore test as a Restore the job owns (the Restore controller runs it). Each
//! reconcile judges what runs, starts what is due (never two of a kind at once), and deletes
//! what is no longer needed: finished verify pods but the newest (kept for its logs), and
//! restore-test Restores beyond `keep`.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};

use super::Error;
use super::build::restore_test::{
    is_finished, last_verdict, newest_tests, restore_test, surplus_tests, test_scheduled_time,
};
use super::build::status::{Checks, scheduled_time};
use super::build::verify_pod::{VerifyPlan, finished_run, next_subset, verify_pod};
use crate::api::agent::VerifyResult;
use crate::api::restore::ScratchClaim;
use crate::api::snapshot::RunPhase;
use crate::api::verification::{RestoreTest, VerificationRun};
use crate::api::{BackupJob, Restore, Snapshot};
use crate::controller::agent::deadline::{Deadline, deadline};
use crate::controller::agent::identity::apply_agent_identity;
use crate::controller::agent::job::job_kmip;
use crate::controller::agent::node::{needs_stopping, node_of, stop_pod};
use crate::controller::agent::run::{RunStep, run_step};
use crate::controller::context::Context;
use crate::controller::job_spec::checks::check_schedules;
use crate::controller::job_spec::schedule::{CronSchedule, due};
use crate::controller::kube_api::{apply, delete_named};
use crate::controller::names::{RESTORE_TEST_JOB_UID_LABEL, SCHEDULED_TIME, VERIFY_JOB_UID_LABEL};
use crate::controller::reason::Reason;

/// What the checks found, and when one is next due.
pub struct CheckOutcome {
    pub checks: Checks,
    pub next: Option<jiff::Timestamp>,
}

/// Judge, start and tidy the job's checks. `healthy`: the job has no problems (nothing new
/// starts otherwise).
pub async fn run_checks(
    job: &BackupJob,
    ctx: &Context,
    snapshots: &[Snapshot],
    healthy: bool,
    now: jiff::Timestamp,
) -> Result<CheckOutcome, Error> {
    let prev = job.status.clone().unwrap_or_default();
    let mut out = CheckOutcome {
        checks: Checks {
            last_verification: prev.last_verification.clone(),
            verification_runs: prev.verification_runs,
            last_restore_test: prev.last_restore_test.clone(),
            ..Default::default()
        },
        next: None,
    };
    let Some(uid) = job.uid() else {
        return Ok(out);
    };
    let (read_sched, test_sched) = check_schedules(job.spec.verification.as_ref());
    let v = job.spec.verification.as_ref();
    let pass = Pass {
        job,
        ctx,
        uid: &uid,
        healthy,
        now,
    };
    if v.is_some_and(|v| v.read_data.is_some()) {
        read_data(&pass, read_sched.as_ref(), &mut out).await?;
    }
    if let Some(rt) = v.and_then(|v| v.restore_test.as_ref()) {
        let due_test = test_sched.as_ref().map(|s| (s, rt));
        restore_tests(&pass, due_test, snapshots, &mut out).await?;
    }
    Ok(out)
}

/// What both checks look at in one reconcile.
#[derive(Clone, Copy)]
struct Pass<'a> {
    job: &'a BackupJob,
    ctx: &'a Context,
    uid: &'a str,
    /// The job has no problems: something new may start.
    healthy: bool,
    now: jiff::Timestamp,
}

impl Pass<'_> {
    /// The objects of kind K in the job's namespace whose `label` carries the job's uid (what
    /// it started for its checks), and the API they were read through.
    async fn owned<K>(&self, label: &str, what: &str) -> Result<(Api<K>, Vec<K>), Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let ns = self.job.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &ns);
        let items = api
            .list(&ListParams::default().labels(&format!("{label}={}", self.uid)))
            .await
            .map_err(dereference(self.job, what))?
            .items;
        Ok((api, items))
    }
}

fn dereference(job: &BackupJob, what: &str) -> impl FnOnce(kube::Error) -> Error {
    let (job, what) = (job.name_any(), what.to_string());
    move |source| Error::Dereference { job, what, source }
}

fn earliest(a: Option<jiff::Timestamp>, b: Option<jiff::Timestamp>) -> Option<jiff::Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The data read: its pods judged (and held to their deadlines), the newest result recorded,
/// older pods deleted, and a new pod when one is due.
async fn read_data(
    pass: &Pass<'_>,
    sched: Option<&CronSchedule>,
    out: &mut CheckOutcome,
) -> Result<(), Error> {
    let Pass {
        job,
        ctx,
        healthy,
        now,
        ..
    } = *pass;
    let (api, pods) = pass
        .owned::<Pod>(VERIFY_JOB_UID_LABEL, "verify pods")
        .await?;
    let mut busy = false;
    let mut finished: Vec<(Pod, VerificationRun)> = Vec::new();
    let mut last_scheduled = out
        .checks
        .last_verification
        .as_ref()
        .and_then(|l| l.scheduled_time.as_ref())
        .map(|t| t.0);
    for pod in pods {
        let scheduled = pod
            .annotations()
            .get(SCHEDULED_TIME)
            .and_then(|t| t.parse().ok());
        last_scheduled = last_scheduled.max(scheduled);
        let step = held_to_deadline(job, ctx, &api, &pod, now).await?;
        match finished_run(&pod, &step) {
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
            announce_damage(job, ctx, before, newest).await;
        }
        out.checks.last_verification = Some(newest.clone());
    }
    for (pod, _) in finished.iter().rev().skip(1) {
        delete_named(&api, &pod.name_any())
            .await
            .map_err(|source| Error::DeleteCheck {
                job: job.name_any(),
                object: format!("verify pod {}", pod.name_any()),
                source,
            })?;
    }
    let Some(sched) = sched else { return Ok(()) };
    let created = job
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let d = due(sched, created, last_scheduled, now);
    out.next = earliest(out.next, d.next);
    let has_repository = job
        .status
        .as_ref()
        .is_some_and(|s| s.last_successful_snapshot.is_some());
    match d.run {
        Some(run) if healthy && !busy && has_repository => start_verify(job, ctx, run, out).await,
        _ => Ok(()),
    }
}

/// A second Event for damage found again (the condition's transition announced the first).
async fn announce_damage(
    job: &BackupJob,
    ctx: &Context,
    before: Option<&VerificationRun>,
    run: &VerificationRun,
) {
    if run.problem_count > 0 && before.is_some_and(|b| b.problem_count > 0) {
        ctx.event(
            job,
            Reason::DataDamaged,
            format!(
                "reading pack group {} found {} damaged or missing object(s): {}",
                run.subset,
                run.problem_count,
                run.problems.join("; ")
            ),
        )
        .await;
    }
}

/// A verify pod's step, stopped and failed when it overran pendingTimeout or nodeLostTimeout
/// (runTimeout is the kubelet's, through activeDeadlineSeconds).
async fn held_to_deadline(
    job: &BackupJob,
    ctx: &Context,
    api: &Api<Pod>,
    pod: &Pod,
    now: jiff::Timestamp,
) -> Result<RunStep<VerifyResult>, Error> {
    let step = run_step::<VerifyResult>(pod, "verify");
    if !matches!(step, RunStep::Pending { .. } | RunStep::Running { .. }) {
        return Ok(step);
    }
    let node = node_of(&ctx.client, pod)
        .await
        .map_err(dereference(job, "the verify pod's Node"))?;
    match deadline(pod, &step, Some(job), node.as_ref(), now, "verify") {
        Deadline::Within(_) => Ok(step),
        Deadline::Overrun(message) => {
            if needs_stopping(pod, node.as_ref()) {
                stop_pod(api, pod, node.as_ref())
                    .await
                    .map_err(|source| Error::DeleteCheck {
                        job: job.name_any(),
                        object: format!("verify pod {}", pod.name_any()),
                        source,
                    })?;
            }
            Ok(RunStep::Failed {
                message,
                finished: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
            })
        }
    }
}

/// Build and apply the verify pod of the run scheduled at `scheduled`.
async fn start_verify(
    job: &BackupJob,
    ctx: &Context,
    scheduled: jiff::Timestamp,
    out: &mut CheckOutcome,
) -> Result<(), Error> {
    let ns = job.namespace().unwrap_or_default();
    let Some(rd) = job
        .spec
        .verification
        .as_ref()
        .and_then(|v| v.read_data.as_ref())
    else {
        return Ok(());
    };
    // A missing KmipServer or key is the job's own condition already.
    let Ok(kmip) = job_kmip(&ctx.client, &ns, job)
        .await
        .map_err(dereference(job, "KmipServer"))?
    else {
        return Ok(());
    };
    let subset = next_subset(rd.percent, out.checks.verification_runs);
    let pod = verify_pod(&VerifyPlan {
        job,
        scheduled,
        subset,
        image: &ctx.config.agent_image,
        agent_env: &ctx.config.agent_env,
        kmip: kmip.as_ref().map(|(ks, key)| (ks, key.as_str())),
    })
    .map_err(|e| Error::BuildCheck {
        job: job.name_any(),
        reason: e.to_string(),
    })?;
    apply_agent_identity(ctx, &ns, job)
        .await
        .map_err(|(object, source)| Error::ApplyCheck {
            job: job.name_any(),
            object: format!("agent {object}"),
            source,
        })?;
    let created = apply(&Api::<Pod>::namespaced(ctx.client.clone(), &ns), &pod)
        .await
        .map_err(|source| Error::ApplyCheck {
            job: job.name_any(),
            object: format!("verify pod {}", pod.name_any()),
            source,
        })?;
    out.checks.verification_runs += 1;
    ctx.event(
        job,
        Reason::VerificationStarted,
        format!(
            "verify pod {} reads pack group {subset} (the run scheduled at {scheduled})",
            created.name_any()
        ),
    )
    .await;
    Ok(())
}

/// The restore tests: status from the newest, surplus ones deleted, a new one when due.
async fn restore_tests(
    pass: &Pass<'_>,
    due_test: Option<(&CronSchedule, &RestoreTest)>,
    snapshots: &[Snapshot],
    out: &mut CheckOutcome,
) -> Result<(), Error> {
    let Pass {
        job,
        ctx,
        healthy,
        now,
        ..
    } = *pass;
    let (api, tests) = pass
        .owned::<Restore>(RESTORE_TEST_JOB_UID_LABEL, "restore-test Restores")
        .await?;
    let newest = newest_tests(&tests).first().copied();
    if let Some(verdict) = last_verdict(&tests) {
        out.checks.last_restore_test = Some(verdict);
    }
    out.checks.restore_tests_seen = true;
    out.checks.running_restore_test = tests.iter().find(|r| !is_finished(r)).map(|r| r.name_any());
    let Some((sched, rt)) = due_test else {
        return Ok(());
    };
    for name in surplus_tests(&tests, rt.keep) {
        delete_named(&api, &name)
            .await
            .map_err(|source| Error::DeleteCheck {
                job: job.name_any(),
                object: format!("restore test {name}"),
                source,
            })?;
    }
    let busy = tests.iter().any(|r| !is_finished(r));
    let last = newest.and_then(test_scheduled_time).or(out
        .checks
        .last_restore_test
        .as_ref()
        .and_then(|t| t.time.as_ref())
        .map(|t| t.0));
    let created = job
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let d = due(sched, created, last, now);
    out.next = earliest(out.next, d.next);
    let Some(run) = d.run.filter(|_| healthy && !busy) else {
        return Ok(());
    };
    // The newest successful Snapshot; none yet: the run catches up once one exists.
    let Some(snap) = snapshots
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.phase == RunPhase::Succeeded)
        })
        .max_by_key(|s| (scheduled_time(s), s.name_any()))
    else {
        return Ok(());
    };
    let scratch = match scratch_claim(job, ctx, snap, rt).await? {
        Ok(s) => s,
        Err(why) => {
            out.checks.not_started = Some(why);
            return Ok(());
        }
    };
    let Some(restore) = restore_test(job, run, &snap.name_any(), scratch) else {
        return Ok(());
    };
    // Created, never patched: the operator does not change Restores (409: created already by
    // a reconcile whose status write was lost).
    let created = match api.create(&PostParams::default(), &restore).await {
        Ok(r) => r,
        Err(kube::Error::Api(e)) if e.code == 409 => restore,
        Err(source) => {
            return Err(Error::ApplyCheck {
                job: job.name_any(),
                object: format!("restore test {}", restore.name_any()),
                source,
            });
        }
    };
    out.checks.running_restore_test = Some(created.name_any());
    ctx.event(
        job,
        Reason::RestoreTestCreated,
        format!(
            "Restore {} restores Snapshot {} into a scratch claim to test it (the run scheduled at {run})",
            created.name_any(),
            snap.name_any()
        ),
    )
    .await;
    Ok(())
}

/// The scratch claim's class and size: the spec's, else those of the data claim of the member
/// the Snapshot copied. `Err`: why neither is known.
async fn scratch_claim(
    job: &BackupJob,
    ctx: &Context,
    snap: &Snapshot,
    rt: &RestoreTest,
) -> Result<Result<ScratchClaim, String>, Error> {
    if let (Some(size), Some(_)) = (&rt.size, &rt.storage_class_name) {
        return Ok(Ok(ScratchClaim {
            storage_class_name: rt.storage_class_name.clone(),
            size: size.clone(),
        }));
    }
    let ns = job.namespace().unwrap_or_default();
    let source = source_claim(job, ctx, snap, &ns).await?;
    let spec = source
        .as_ref()
        .and_then(|c| c.spec.clone())
        .unwrap_or_default();
    let size = rt.size.clone().or_else(|| {
        spec.resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
    });
    let Some(size) = size else {
        return Ok(Err(format!(
            "spec.verification.restoreTest.size: not given, and the data claim of the member Snapshot {} copied {}; give size (and storageClassName)",
            snap.name_any(),
            if source.is_some() {
                "has no storage request"
            } else {
                "could not be found"
            }
        )));
    };
    Ok(Ok(ScratchClaim {
        storage_class_name: rt.storage_class_name.clone().or(spec.storage_class_name),
        size,
    }))
}

/// The data claim of the member pod a Snapshot copied, if it still exists.
async fn source_claim(
    job: &BackupJob,
    ctx: &Context,
    snap: &Snapshot,
    ns: &str,
) -> Result<Option<PersistentVolumeClaim>, Error> {
    let Some(member) = snap.status.as_ref().and_then(|s| s.member.as_ref()) else {
        return Ok(None);
    };
    let Some(pod) = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .get_opt(&member.pod)
        .await
        .map_err(dereference(job, "the member pod"))?
    else {
        return Ok(None);
    };
    let volume = &job.spec.source.data_volume_name;
    let claim = pod
        .spec
        .and_then(|s| s.volumes)
        .unwrap_or_default()
        .into_iter()
        .find(|v| &v.name == volume)
        .and_then(|v| v.persistent_volume_claim)
        .map(|c| c.claim_name);
    let Some(claim) = claim else { return Ok(None) };
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
        .get_opt(&claim)
        .await
        .map_err(dereference(job, "the member's data claim"))
}
