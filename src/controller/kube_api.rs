//! The operator's ways of talking to the API server, shared by every controller: server-side
//! apply with the operator's field manager, deletions by uid, the lean controller every kind
//! is built on, and the error back-off.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::names;

/// The one field manager the operator applies with.
pub const FIELD_MANAGER: &str = "snapcrypt-operator";
/// The field manager the snapshot agent reports progress with.
pub const AGENT_FIELD_MANAGER: &str = "snapcrypt-agent";
/// The field manager the snapshot agent reports its result with (status.agentResult): not the
/// progress one, whose next apply would remove a field it no longer sends.
pub const AGENT_RESULT_FIELD_MANAGER: &str = "snapcrypt-agent-result";

/// Server-side apply `obj` (create or update) with the operator's field manager.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> kube::Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Server-side apply the status subresource of `name`.
pub async fn apply_status<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name},
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
}

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

/// Delete `obj` exactly: by its uid, so that an object which took its name since stays.
/// Returns whether this deleted it (false: it was already gone, or replaced).
pub async fn delete_exactly<K>(api: &Api<K>, obj: &K) -> kube::Result<bool>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    delete_exactly_with(api, obj, None).await
}

/// Delete the object called `name`, if there is one.
pub async fn delete_named<K>(api: &Api<K>, name: &str) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api
        .delete(name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
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

/// Delete pod `name` only if the operator made it for the object with uid `owner_uid`
/// ([`made_for`]): a name read from status, which agents may write, never makes the operator
/// delete another pod (a member's mongod, say). Returns whether it deleted one.
pub async fn delete_own_pod(api: &Api<Pod>, name: &str, owner_uid: &str) -> kube::Result<bool> {
    let Some(pod) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !made_for(&pod, owner_uid) {
        tracing::warn!(
            pod = name,
            "not deleting a pod named in status that this object's operator did not create"
        );
        return Ok(false);
    }
    delete_exactly(api, &pod).await
}

/// [`delete_exactly`] with no grace period: the object goes from the API at once, without its
/// kubelet's confirmation (for a pod on a node that is lost, whose kubelet cannot give it).
pub async fn force_delete_exactly<K>(api: &Api<K>, obj: &K) -> kube::Result<bool>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    delete_exactly_with(api, obj, Some(0)).await
}

async fn delete_exactly_with<K>(api: &Api<K>, obj: &K, grace: Option<u32>) -> kube::Result<bool>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    use kube::api::{DeleteParams, Preconditions};
    let exactly = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.uid(),
            resource_version: None,
        }),
        grace_period_seconds: grace,
        ..DeleteParams::background()
    };
    match api.delete(&obj.name_any(), &exactly).await {
        Ok(_) => Ok(true),
        // 404: gone already; 409: the uid precondition failed, a new object has the name.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
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
