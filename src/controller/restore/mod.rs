//! The Restore controller: brings a Snapshot back into a PersistentVolumeClaim. It waits for the
//! Snapshot to succeed, checks the repository, key and target it needs, starts one restore pod
//! (`snapcrypt agent restore`, which verifies every chunk as it writes), and turns the pod's
//! phases into status. A restore is not retried: a failed one says why, and a new Restore runs
//! it again (the spec is immutable).
//!
//! dereference (the restore pod) -> [no pod yet: dereference Snapshot, BackupJob, target claim,
//! references; validate; build the pod (pure); apply the agent's identity and the pod] ->
//! update status (pure next_status), with Events.

mod after;
pub mod build;
pub mod check;
mod start;

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use self::build::{Step, next_status, pod_selector};
use self::start::start;
use super::agent::deadline::{Deadline, deadline};
use super::agent::node::{needs_stopping, node_of, stop_pod};
use super::agent::owning_agent_pods;
use super::agent::run::{RunStep, run_step};
use super::context::Context;
use super::kube_api::apply_status;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, Restore, Snapshot};
use crate::controller::names::CHECK_RESTORE_UID_LABEL;
use crate::controller::reason::Reason;
use crate::engine::restore::RestoreStats;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "restore";

/// How often a waiting Restore looks again at what it waits for.
const RECHECK: Duration = Duration::from_secs(15);

/// A reconcile failure, by stage. A Restore that cannot start (missing Snapshot, job, claim,
/// Secret or KmipServer) is not an error: that becomes its status.
#[derive(Debug, thiserror::Error, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Error {
    #[error("Restore {restore}: reading {what}: {source}")]
    Dereference {
        restore: String,
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("Restore {restore}: applying the agent's {object}: {source}")]
    ApplyRbac {
        restore: String,
        object: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("Restore {restore}: creating pod {pod}: {source}")]
    ApplyPod {
        restore: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("Restore {restore}: deleting pod {pod}, whose run is over: {source}")]
    StopPod {
        restore: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("Restore {restore}: building {reason}")]
    Build { restore: String, reason: String },
    #[error("Restore {restore}: creating the scratch claim: {source}")]
    ApplyScratch {
        restore: String,
        #[source]
        source: kube::Error,
    },
    #[error("Restore {restore}: deleting the scratch claim: {source}")]
    DeleteScratch {
        restore: String,
        #[source]
        source: kube::Error,
    },
    #[error("Restore {restore}: updating status: {source}")]
    UpdateStatus {
        restore: String,
        #[source]
        source: kube::Error,
    },
}

/// An error for a failed read of `what` while reconciling Restore `restore`.
fn dereference_error(restore: &str, what: &'static str) -> impl FnOnce(kube::Error) -> Error {
    let restore = restore.to_string();
    move |source| Error::Dereference {
        restore,
        what,
        source,
    }
}

impl Error {
    /// The stage, as a metrics label: the variant's name in snake case.
    pub fn category(&self) -> &'static str {
        self.into()
    }
}

/// The Restore controller's stream; it also wakes for every change of a restore pod.
pub fn controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    use futures::StreamExt;
    // Also its check pods and scratch claims.
    let checks = watcher::Config::default()
        .labels(CHECK_RESTORE_UID_LABEL)
        .any_semantic();
    owning_agent_pods::<Restore>(&ctx.client, namespace.as_deref(), "restore")
        .owns(
            super::kube_api::scoped_api::<Pod>(&ctx.client, namespace.as_deref()),
            checks.clone(),
        )
        .owns(
            super::kube_api::scoped_api::<PersistentVolumeClaim>(&ctx.client, namespace.as_deref()),
            checks,
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .map(super::kube_api::log_stream_error(CONTROLLER))
}

fn error_policy(r: Arc<Restore>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_failure(CONTROLLER, r.as_ref(), err.category(), err)
}

#[tracing::instrument(name = "reconcile", skip_all, fields(
    controller = CONTROLLER,
    namespace = %r.namespace().unwrap_or_default(),
    name = %r.name_any(),
))]
async fn reconcile(r: Arc<Restore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let prev = r.status.clone().unwrap_or_default();
    if r.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if matches!(prev.phase, RunPhase::Succeeded | RunPhase::Failed) {
        after::finish_scratch(&r, &ctx).await?;
        return Ok(Action::await_change());
    }
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let deref = |what: &'static str| dereference_error(&name, what);

    // 1. Dereference the restore pod, if one was started.
    let pod = match r.uid() {
        Some(uid) => Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default().labels(&pod_selector(&uid)))
            .await
            .map_err(deref("restore pod"))?
            .items
            .into_iter()
            .next(),
        None => None,
    };

    // 2. What the pod's state means, or start one.
    let mut check = None;
    let (step, requeue) = match pod {
        Some(pod) => {
            let (step, requeue) = judge_pod(&r, &pod, &ctx).await?;
            let (step, after, judged) = after::run_check(&r, &ctx, step).await?;
            check = judged;
            (step, requeue.or(after))
        }
        None if prev.pod_name.is_some() => (
            Step::Failed {
                reason: Reason::PodLost,
                message: format!(
                    "restore pod {} disappeared before it finished (deleted, or its node was lost); the target may hold a partial restore (marked by .snapcrypt-restore-incomplete)",
                    prev.pod_name.clone().unwrap_or_default()
                ),
                finished: None,
            },
            None,
        ),
        None => start(&r, &ctx).await?,
    };

    // 3. Update status, and announce transitions.
    let target = match &r.spec.target.path {
        Some(p) => format!("{}/{p}", r.spec.target.claim_name),
        None => r.spec.target.claim_name.clone(),
    };
    let mut status = next_status(
        &prev,
        &step,
        &target,
        r.metadata.generation,
        jiff::Timestamp::now(),
    );
    if let Some(c) = check {
        if let (Step::Succeeded { .. }, Some(said)) = (&step, &c.message) {
            status.message = status.message.map(|m| format!("{m}; check passed: {said}"));
        }
        status.check = Some(c);
    }
    if status != prev {
        let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &ns);
        apply_status(&api, &name, &status)
            .await
            .map_err(|source| Error::UpdateStatus {
                restore: name.clone(),
                source,
            })?;
    }
    ctx.announce(r.as_ref(), &prev.conditions, &status.conditions)
        .await;
    if matches!(status.phase, RunPhase::Succeeded | RunPhase::Failed) {
        ctx.metrics.restore_finished(&format!("{:?}", status.phase));
    }
    ctx.reconciled(CONTROLLER, r.as_ref());
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// What the restore pod's state means, held to its deadlines (the pendingTimeout and
/// nodeLostTimeout of the Snapshot's BackupJob, or their defaults if it is gone): an overrun
/// stops the pod and fails the Restore. Also when to look again.
async fn judge_pod(
    r: &Restore,
    pod: &Pod,
    ctx: &Context,
) -> Result<(Step, Option<Duration>), Error> {
    let name = r.name_any();
    let step = run_step::<RestoreStats>(pod, "restore");
    if !matches!(step, RunStep::Pending { .. } | RunStep::Running { .. }) {
        return Ok((step_of(step), None));
    }
    let ns = r.namespace().unwrap_or_default();
    let job = match Api::<Snapshot>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&r.spec.snapshot_ref.name)
        .await
        .map_err(dereference_error(&name, "Snapshot"))?
    {
        Some(snap) => Api::<BackupJob>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&snap.spec.backup_job_ref.name)
            .await
            .map_err(dereference_error(&name, "BackupJob"))?,
        None => None,
    };
    let node = node_of(&ctx.client, pod)
        .await
        .map_err(dereference_error(&name, "the restore pod's Node"))?;
    let now = jiff::Timestamp::now();
    match deadline(pod, &step, job.as_ref(), node.as_ref(), now, "restore") {
        Deadline::Within(recheck) => Ok((step_of(step), recheck)),
        Deadline::Overrun(why) => {
            if needs_stopping(pod, node.as_ref()) {
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                stop_pod(&api, pod, node.as_ref())
                    .await
                    .map_err(|source| Error::StopPod {
                        restore: name.clone(),
                        pod: pod.name_any(),
                        source,
                    })?;
            }
            let message = format!(
                "{why}; the target may hold a partial restore (marked by .snapcrypt-restore-incomplete)"
            );
            let reason = Reason::RestoreFailed;
            Ok((
                Step::Failed {
                    reason,
                    message,
                    finished: None,
                },
                None,
            ))
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
            message: in_spec_words(&message),
            finished,
        },
    }
}

/// The agent's message, with the command-line flags it suggests named as the fields of a
/// Restore that set them.
fn in_spec_words(message: &str) -> String {
    message
        .replace(
            "use --force to restore into it anyway",
            "set spec.target.force to restore into it anyway",
        )
        .replace(
            "pass --delete-extra to have the restore remove them",
            "set spec.target.deleteExtra (with force) to have the restore remove them",
        )
}

#[cfg(test)]
mod tests {
    use super::start::{spec_problem, target_is_repository};
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
        let extra = pod(&terminated(
            "Failed",
            1,
            "snapcrypt: error: target /target: holds 1 entry the snapshot does not have (stale.wt): nothing was written; remove them, or pass --delete-extra to have the restore remove them",
        ));
        match pod_step(&extra) {
            Step::Failed { message, .. } => assert!(
                message.ends_with(
                    "set spec.target.deleteExtra (with force) to have the restore remove them"
                ),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// A target claim that holds the repository is refused before any pod, naming the field;
    /// another claim, or a job with an object-store repository, is not.
    #[test]
    fn a_target_claim_holding_the_repository_is_refused() {
        use crate::controller::fixtures::{job, restore};
        let pvc_job = job("");
        let problem = target_is_repository(&restore("{claimName: backups, force: true}"), &pvc_job)
            .expect("refused");
        assert!(
            problem.starts_with(
                "spec.target.claimName: backups holds the repository of BackupJob rs0"
            ),
            "{problem}"
        );
        assert_eq!(
            target_is_repository(&restore("{claimName: data}"), &pvc_job),
            None
        );
        let s3_job = job("destination: {s3: {bucket: b, credentialsSecret: c}}");
        assert_eq!(
            target_is_repository(&restore("{claimName: backups}"), &s3_job),
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
            "snapcrypt: error: target /target/db: is not empty: nothing was written (use --force to restore into it anyway)",
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
