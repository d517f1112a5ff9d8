//! The operator: one process running a kube-runtime Controller per kind (BackupJob, Snapshot,
//! KmipServer, Restore), sharing one [`Context`]. Each reconciler is the same pipeline:
//! dereference (the only reads, into a typed World) -> plan (pure: the changes and the next
//! status) -> [`execute`] (the only writes) -> announce; see docs/ARCHITECTURE.md.

// Shared layers, below every controller.
pub mod agent;
pub mod conditions;
pub mod context;
pub mod execute;
#[cfg(test)]
pub mod fixtures;
pub mod hold;
pub mod http;
pub mod job_spec;
pub mod kube_api;
pub mod leader;
#[cfg(test)]
pub mod memory_api;
pub mod metrics;
pub mod names;
pub mod reason;
pub mod text;

// The controllers, one per kind: siblings that import nothing from each other.
pub mod backup_job;
pub mod kmip_server;
pub mod restore;
pub mod snapshot;

use std::sync::Arc;

use futures::StreamExt;
use kube::Client;

use self::context::{Context, OperatorConfig};
use self::metrics::Metrics;

/// Run the BackupJob, Snapshot, KmipServer and Restore controllers until `shutdown` resolves. Watches every namespace, or only
/// `namespace`.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    config: OperatorConfig,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Context::new(client, metrics, config));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let jobs = backup_job::controller(ctx.clone(), namespace.clone(), wait(rx.clone()));
    let snaps = snapshot::controller(ctx.clone(), namespace.clone(), wait(rx.clone()));
    let kmips = kmip_server::controller(ctx.clone(), namespace.clone(), wait(rx.clone()));
    let restores = restore::controller(ctx.clone(), namespace, wait(rx));
    let stop = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    tokio::join!(
        jobs.for_each(|_| async {}),
        snaps.for_each(|_| async {}),
        kmips.for_each(|_| async {}),
        restores.for_each(|_| async {}),
        stop
    );
    // Members this process holds locked are unlocked now, not when the next operator finds
    // their locks lost (their attempts fail then, as their copies lost the lock).
    ctx.holds.release_all().await;
}
