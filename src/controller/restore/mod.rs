//! The Restore controller: brings a Snapshot back into a PersistentVolumeClaim. It waits for the
//! Snapshot to succeed, checks the repository, key and target it needs, starts one restore pod
//! (`snapcrypt agent restore`, which verifies every chunk as it writes), and turns the pod's
//! phases into status. A restore is not retried: a failed one says why, and a new Restore runs
//! it again (the spec is immutable).
//!
//! dereference (`dereference.rs`: the only reads, into a [`World`]) -> plan (`plan.rs`, pure:
//! the step, the changes, the next status; `start.rs` and `after.rs` for the pod, the scratch
//! claim and the check) -> execute (`controller::execute`, the only writes) -> announce.

mod after;
pub mod build;
pub mod check;
mod dereference;
pub mod members;
#[cfg(test)]
mod members_tests;
mod plan;
mod start;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::watcher;

use self::dereference::dereference;
use self::plan::{plan, status_after};
use super::agent::owning_agent_pods;
use super::context::Context;
use super::execute::{Change, ExecuteError, execute};
use crate::api::Restore;
use crate::api::snapshot::RunPhase;
use crate::controller::names::{CHECK_RESTORE_UID_LABEL, PARENT_RESTORE_UID_LABEL};

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
    #[error("Restore {restore}: building {reason}")]
    Build { restore: String, reason: String },
    /// A change the plan asked for failed (its stage is the metrics label).
    #[error("Restore {restore}: {source}")]
    Execute {
        restore: String,
        #[source]
        source: ExecuteError,
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
        match self {
            Error::Execute { source, .. } => source.stage,
            other => other.into(),
        }
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
    use super::kube_api::owns;
    let (client, ns) = (&ctx.client, namespace.as_deref());
    let ctl = owning_agent_pods::<Restore>(client, ns, "restore");
    let ctl = owns::<_, Pod>(ctl, client, ns, checks.clone());
    let ctl = owns::<_, PersistentVolumeClaim>(ctl, client, ns, checks);
    // The Restores of a Restore's claims (spec.targets) wake it.
    let parents = watcher::Config::default().labels(PARENT_RESTORE_UID_LABEL);
    owns::<_, Restore>(ctl, client, ns, parents)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .map(super::kube_api::log_stream_error(CONTROLLER))
}

/// A Restore with spec.targets: dereference its claims and Restores, plan (pure), execute.
async fn reconcile_members(
    r: &Restore,
    ctx: &Context,
    prev: &crate::api::restore::RestoreStatus,
) -> Result<Action, Error> {
    if matches!(prev.phase, RunPhase::Succeeded | RunPhase::Failed) {
        return Ok(Action::await_change());
    }
    let world = members::dereference_members(r, &ctx.client).await?;
    let (status, mut changes, requeue) =
        members::plan_members(r, prev, &world, jiff::Timestamp::now());
    if &status != prev {
        changes.push(Change::status(r, &status));
    }
    execute(ctx, r, changes)
        .await
        .map_err(|source| Error::Execute {
            restore: r.name_any(),
            source,
        })?;
    ctx.announce(r, &prev.conditions, &status.conditions).await;
    if matches!(status.phase, RunPhase::Succeeded | RunPhase::Failed) {
        ctx.metrics.restore_finished(&format!("{:?}", status.phase));
    }
    ctx.reconciled(CONTROLLER, r);
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
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
    let written = |source| Error::Execute {
        restore: r.name_any(),
        source,
    };

    // A Restore of several claims: the Restores of its claims.
    if r.spec.targets.is_some() {
        return reconcile_members(&r, &ctx, &prev).await;
    }

    // 1. Dereference: the only reads.
    let world = dereference(&r, &ctx.client).await?;

    // A finished Restore: only its scratch claim to delete.
    if matches!(prev.phase, RunPhase::Succeeded | RunPhase::Failed) {
        let changes = after::plan_finished(&r, &prev, &world);
        execute(&ctx, r.as_ref(), changes).await.map_err(written)?;
        return Ok(Action::await_change());
    }

    // 2. Plan (pure): the step, the changes, the next status.
    let now = jiff::Timestamp::now();
    let outcome = plan(&r, &prev, &world, &ctx.config, now)?;
    let status = status_after(&r, &prev, &outcome, now);
    let mut changes = outcome.changes;
    if status != prev {
        changes.push(Change::status(r.as_ref(), &status));
    }

    // 3. Execute (the only writes), then announce transitions.
    execute(&ctx, r.as_ref(), changes).await.map_err(written)?;
    ctx.announce(r.as_ref(), &prev.conditions, &status.conditions)
        .await;
    if matches!(status.phase, RunPhase::Succeeded | RunPhase::Failed) {
        ctx.metrics.restore_finished(&format!("{:?}", status.phase));
    }
    ctx.reconciled(CONTROLLER, r.as_ref());
    Ok(match outcome.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}
