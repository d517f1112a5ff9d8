//! The operator's ways of talking to the API server, shared by every controller: its field
//! managers, which objects it made, the lean controller every kind is built on, and the error
//! back-off. The writes themselves are `controller::execute`'s.

use std::time::Duration;

use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::names;

/// The one field manager the operator applies with.
pub const FIELD_MANAGER: &str = "snapcrypt-operator";
/// The field manager the snapshot agent reports progress with.
pub const AGENT_FIELD_MANAGER: &str = "snapcrypt-agent";
/// The field manager the snapshot agent reports its result with (status.agentResult): not the
/// progress one, whose next apply would remove a field it no longer sends.
pub const AGENT_RESULT_FIELD_MANAGER: &str = "snapcrypt-agent-result";

/// What every controller does with each item of its reconcile stream: failures are already
/// counted and logged by its error policy, so only a debug line.
pub fn log_stream_error<T, E: std::fmt::Display>(
    controller: &'static str,
) -> impl Fn(Result<T, E>) {
    move |r| {
        if let Err(e) = r {
            tracing::debug!(controller, error = %e, "reconcile stream");
        }
    }
}

/// `Api` for a namespaced kind: one namespace, or all.
pub fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Whether `obj` is one the operator made for the object with uid `owner_uid`: its
/// controller owner reference is that object, and it carries the managed-by label. Pure.
pub fn made_for<K: Resource>(obj: &K, owner_uid: &str) -> bool {
    let labelled = obj
        .meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(names::MANAGED_BY.0))
        .is_some_and(|v| v == names::MANAGED_BY.1);
    let owned = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == owner_uid);
    labelled && owned
}

/// The annotation in which `kubectl apply` keeps a whole copy of the object it applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Reconciles one controller runs at once. Unbounded (kube's default), 1,000 BackupJobs
/// reconciled at start-up opened about as many HTTP connections to the API server, each with
/// its own buffers: most of the operator's memory (a heap profile in bench/RESULTS.md,
/// "Operator at scale").
pub const MAX_CONCURRENT_RECONCILES: u16 = 8;

/// A Controller of `K` (in `api`'s scope) that runs at most [`MAX_CONCURRENT_RECONCILES`]
/// reconciles at once, and whose cache keeps each object without what no reconcile reads:
/// its managedFields and kubectl's last-applied copy of it.
pub fn lean_controller<K>(api: Api<K>) -> kube::runtime::Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
{
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (reader, writer) = reflector::store();
    let objects = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|o: &mut K| {
            o.managed_fields_mut().clear();
            o.annotations_mut().remove(LAST_APPLIED);
        })
        .reflect(writer)
        .applied_objects();
    kube::runtime::Controller::for_stream(objects, reader).with_config(
        kube::runtime::controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES),
    )
}

/// Requeue delay after an error: exponential in the number of consecutive failures of one
/// object, 1 s to 5 min. The first retry is quick: most failures are passing (the API server
/// asks for one second while it creates a new ServiceAccount's token, on servers before 1.24;
/// a first retry after 5 s made that the p99 of a Snapshot's start in bench/RESULTS.md).
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.min(9);
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(7), Duration::from_secs(128));
        assert_eq!(backoff(8), Duration::from_secs(256));
        assert_eq!(backoff(9), Duration::from_secs(300));
        assert_eq!(backoff(60), Duration::from_secs(300));
    }
}
