//! KmipServer reconciler: connect with the referenced TLS Secret, ensure the master key
//! (an existing id, or found or created by name), poll its state, rotate it on the policy's
//! period (never revoking the old key), and report server identity, keys, dependants and
//! rewrap progress in status.
//!
//! dereference (`dereference.rs`: the Secret, BackupJobs, Snapshots, into a [`World`]) ->
//! the KMIP side (`keys.rs`: the only code that talks to the KMIP server, and its writes there:
//! a key created, rotated or replaced) -> plan (`plan.rs` and `build.rs`, pure: the status, a
//! rotation's Event) -> execute (`controller::execute`) -> announce.

pub mod build;
mod dereference;
mod keys;
mod plan;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use futures::Stream;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use self::dereference::dereference;
use self::keys::reconcile_keys;
use self::plan::plan;
use super::context::Context;
use super::execute::{ExecuteError, execute};
use super::kube_api::scoped_api;
use crate::api::{BackupJob, KmipServer};

pub const CONTROLLER: &str = "kmipserver";

#[derive(Debug, thiserror::Error, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Error {
    #[error("reading {what}: {source}")]
    Dereference { what: String, source: kube::Error },
    /// A change the plan asked for failed (its stage is the metrics label).
    #[error("{0}")]
    Execute(ExecuteError),
}

impl Error {
    /// The stage, as a metrics label: the variant's name in snake case.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Execute(e) => e.stage,
            other => other.into(),
        }
    }
}

/// The KmipServer controller; BackupJobs that reference a server trigger its reconcile.
pub fn controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    use futures::StreamExt;
    let servers: Api<KmipServer> = scoped_api(&ctx.client, namespace.as_deref());
    let jobs: Api<BackupJob> = scoped_api(&ctx.client, namespace.as_deref());
    let ctl = super::kube_api::lean_controller(servers);
    ctx.metrics.watch_kmip_servers(ctl.store());
    super::kube_api::watches(ctl, jobs, |j: BackupJob| {
        let r = j.spec.encryption.kmip_server_ref.as_ref()?;
        Some(ObjectRef::<KmipServer>::new(&r.name).within(&j.namespace()?))
    })
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .map(super::kube_api::log_stream_error(CONTROLLER))
}

fn error_policy(ks: Arc<KmipServer>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_failure(CONTROLLER, ks.as_ref(), err.category(), err)
}

#[tracing::instrument(name = "reconcile", skip_all, fields(
    controller = CONTROLLER,
    namespace = %ks.namespace().unwrap_or_default(),
    name = %ks.name_any(),
))]
async fn reconcile(ks: Arc<KmipServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let now = jiff::Timestamp::now();

    // 1. Dereference: the TLS Secret and the BackupJobs (and their Snapshots) that use this
    //    server.
    let world = dereference(&ks, &ctx.client).await?;

    // 2. The KMIP side: connect, ensure, rotate, read states.
    let obs = reconcile_keys(&ks, world.tls, &world.users, now).await;

    // 3. Plan (pure), 4. execute, 5. announce.
    let outcome = plan(&ks, &obs, now);
    execute(&ctx, ks.as_ref(), outcome.changes)
        .await
        .map_err(Error::Execute)?;
    let prev = ks.status.clone().unwrap_or_default();
    ctx.announce(ks.as_ref(), &prev.conditions, &outcome.status.conditions)
        .await;
    ctx.reconciled(CONTROLLER, ks.as_ref());
    Ok(outcome.requeue)
}
