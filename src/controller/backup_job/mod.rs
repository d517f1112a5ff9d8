//! The BackupJob controller: checks the job, creates a Snapshot when the schedule says so (or
//! once, without a schedule), and mirrors its Snapshots into status.
//!
//! dereference (`dereference.rs`: the only reads, into a [`World`]) -> plan (`plan.rs`, pure:
//! validate, decide whether a run is due, build its Snapshot, the scheduled checks in
//! `checks.rs`, the copies in `copies.rs`, the next status) -> execute (`controller::execute`, the only writes) ->
//! announce every condition transition.

pub mod build;
mod catalog;
mod checks;
mod copies;
#[cfg(test)]
mod copies_tests;
mod dereference;
mod plan;
mod retention;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod tests;

use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use std::sync::Arc;

use self::dereference::dereference;
use self::plan::plan;
use super::context::Context;
use super::execute::{Change, ExecuteError, execute};
use super::kube_api::{lean_controller, owns, scoped_api, watches};
use crate::api::{BackupJob, Restore, Snapshot};
use crate::controller::names::{
    CATALOG_JOB_UID_LABEL, COPY_JOB_UID_LABEL, RESTORE_TEST_JOB_UID_LABEL, RETENTION_JOB_UID_LABEL,
    VERIFY_JOB_UID_LABEL,
};

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "backupjob";

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
    #[error("BackupJob {job}: building a check's pod: {reason}")]
    BuildCheck { job: String, reason: String },
    /// A change the plan asked for failed (its stage is the metrics label).
    #[error("BackupJob {job}: {source}")]
    Execute {
        job: String,
        #[source]
        source: ExecuteError,
    },
}

impl Error {
    /// The stage, as a metrics label: the variant's name in snake case.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Execute { source, .. } => source.stage,
            other => other.into(),
        }
    }
}

/// The BackupJob controller's stream; it also wakes for every Snapshot naming a job.
pub fn controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    use futures::StreamExt;
    let (client, ns) = (&ctx.client, namespace.as_deref());
    let ctl = lean_controller(scoped_api::<BackupJob>(client, ns));
    ctx.metrics.watch_jobs(ctl.store());
    let ctl = watches(ctl, scoped_api::<Snapshot>(client, ns), |s: Snapshot| {
        let ns = s.namespace()?;
        Some(ObjectRef::<BackupJob>::new(&s.spec.backup_job_ref.name).within(&ns))
    });
    // The job's checks, catalog, copies and retention: its verify, catalog, copy and
    // retention pods and restore-test Restores.
    let own = |label: &str| watcher::Config::default().any_semantic().labels(label);
    let ctl = owns::<_, Pod>(ctl, client, ns, own(VERIFY_JOB_UID_LABEL));
    let ctl = owns::<_, Pod>(ctl, client, ns, own(COPY_JOB_UID_LABEL));
    let ctl = owns::<_, Pod>(ctl, client, ns, own(RETENTION_JOB_UID_LABEL));
    let ctl = owns::<_, Pod>(ctl, client, ns, own(CATALOG_JOB_UID_LABEL));
    owns::<_, Restore>(ctl, client, ns, own(RESTORE_TEST_JOB_UID_LABEL))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .map(super::kube_api::log_stream_error(CONTROLLER))
}

fn error_policy(job: Arc<BackupJob>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_failure(CONTROLLER, job.as_ref(), err.category(), err)
}

#[tracing::instrument(name = "reconcile", skip_all, fields(
    controller = CONTROLLER,
    namespace = %job.namespace().unwrap_or_default(),
    name = %job.name_any(),
))]
async fn reconcile(job: Arc<BackupJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = jiff::Timestamp::now();

    // 1. Dereference: the job's Snapshots, its checks and every object the spec names.
    let world = dereference(&job, &ctx.client).await?;

    // 2. Plan (pure): validate, decide, build, the checks, the next status.
    let outcome = plan(&job, &world, &ctx.config, now)?;
    let old = job.status.clone().unwrap_or_default();
    let mut changes = outcome.changes;
    if old != outcome.status {
        changes.push(Change::status(job.as_ref(), &outcome.status));
    }

    // 3. Execute (the only writes), then announce every condition transition.
    execute(&ctx, job.as_ref(), changes)
        .await
        .map_err(|source| Error::Execute {
            job: job.name_any(),
            source,
        })?;
    ctx.announce(job.as_ref(), &old.conditions, &outcome.status.conditions)
        .await;
    ctx.reconciled(CONTROLLER, job.as_ref());
    Ok(outcome.requeue)
}
