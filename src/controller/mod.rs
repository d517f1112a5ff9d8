//! The operator: one process running a kube-runtime Controller per kind (BackupJob, Snapshot,
//! KmipServer, Restore), sharing one [`Context`]. Each reconciler is a straight pipeline
//! (dereference -> validate -> build -> apply -> update status); see `backup_job/`,
//! `snapshot/` and `restore/`.

// Shared layers, below every controller.
pub mod agent;
pub mod conditions;
#[cfg(test)]
pub mod fixtures;
pub mod http;
pub mod job_spec;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod reason;

// The controllers, one per kind: siblings that import nothing from each other.
pub mod backup_job;
pub mod kmip_server;
pub mod restore;
pub mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use metrics::Metrics;
use reason::{Reason, Severity};

/// The one field manager the operator applies with.
pub const FIELD_MANAGER: &str = "snapcrypt-operator";
/// The field manager the snapshot agent reports progress with.
pub const AGENT_FIELD_MANAGER: &str = "snapcrypt-agent";
/// The field manager the snapshot agent reports its result with (status.agentResult): not the
/// progress one, whose next apply would remove a field it no longer sends.
pub const AGENT_RESULT_FIELD_MANAGER: &str = "snapcrypt-agent-result";

/// Settings of the operator process that reconcilers need.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Image of the snapshot pods (it must contain the `snapcrypt` binary as its entrypoint).
    pub agent_image: String,
    /// Cluster DNS domain, for the members' stable host names.
    pub cluster_domain: String,
    /// Time each member gets to answer `hello`.
    pub mongo_timeout: Duration,
    /// Seconds between the snapshot agents' progress reports.
    pub agent_progress_interval: f64,
    /// Extra environment of every agent pod (the operator's --agent-env).
    pub agent_env: Vec<(String, String)>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            agent_image: "snapcrypt:latest".into(),
            cluster_domain: "cluster.local".into(),
            mongo_timeout: Duration::from_secs(5),
            agent_progress_interval: 2.0,
            agent_env: Vec::new(),
        }
    }
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: OperatorConfig,
    /// Consecutive reconcile failures per object, for the error back-off.
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// The fsync locks this process holds on members (Snapshots in mode fsyncLock, or
    /// cutting a VolumeSnapshot under quiesce fsyncLock).
    pub holds: snapshot::hold::Holds,
}

/// The key under which `controller` counts reconcile failures of `obj`.
fn failure_key<K: ResourceExt>(controller: &str, obj: &K) -> String {
    format!(
        "{controller}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

impl Context {
    /// Every controller's `error_policy`: count the failure by stage in metrics, log it, and
    /// requeue with a back-off that grows with the failures of `obj` in a row.
    pub fn retry_after_failure<K: ResourceExt>(
        &self,
        controller: &'static str,
        obj: &K,
        stage: &'static str,
        err: &dyn std::fmt::Display,
    ) -> kube::runtime::controller::Action {
        self.metrics.failure(controller, stage);
        let n = self.failed(&failure_key(controller, obj));
        tracing::warn!(
            controller,
            namespace = obj.namespace().unwrap_or_default(),
            name = obj.name_any(),
            stage,
            error = %err,
            attempt = n,
            "reconcile failed"
        );
        kube::runtime::controller::Action::requeue(backoff(n))
    }

    /// A reconcile of `obj` went through: its back-off starts again.
    pub fn reconciled<K: ResourceExt>(&self, controller: &'static str, obj: &K) {
        self.succeeded(&failure_key(controller, obj));
    }

    /// Count a failure of `key`; returns how many in a row (0 for the first).
    fn failed(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }

    /// Forget the failures of `key` after a reconcile that went through.
    fn succeeded(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(key);
    }

    pub fn new(client: Client, metrics: Arc<Metrics>, config: OperatorConfig) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            config,
            failures: Default::default(),
            holds: Default::default(),
        }
    }

    /// Publish an Event about `obj`, Warning or Normal by the reason's severity; failures are
    /// logged, never fatal (events are best effort).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: Reason,
        note: String,
    ) {
        let ev = Event {
            type_: match reason.severity() {
                Severity::Warning => EventType::Warning,
                Severity::Normal | Severity::Quiet => EventType::Normal,
            },
            reason: reason.to_string(),
            note: Some(truncate(&note, 1000)),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, %reason, "cannot publish event");
        }
    }

    /// The one Event policy of every controller: announce the condition transitions from `old`
    /// to `new` that [`reason::announcements`] says deserve an Event.
    pub async fn announce<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        old: &[Condition],
        new: &[Condition],
    ) {
        for (reason, message) in reason::announcements(old, new) {
            self.event(obj, reason, message.to_string()).await;
        }
    }
}

/// Cut `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    // Room for the ellipsis (3 bytes), cut on a character boundary.
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

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

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        let t = truncate(&"é".repeat(100), 11);
        assert!(t.len() <= 11, "{t}");
        assert!(t.ends_with('…'));
    }
}
