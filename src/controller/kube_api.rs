//! The operator's ways of talking to the API server, shared by every controller: its field
//! managers, which objects it made, the lean controller every kind is built on, and the error
//! back-off. The writes themselves are `controller::execute`'s.

use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::{reflector::ObjectRef, watcher};
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
/// its managedFields and kubectl's last-applied copy of it. Its watch passes on no error
/// ([`quiet`]); its triggers are added with [`owns`] and [`watches`], which pass on none either.
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
    kube::runtime::Controller::for_stream(quiet(objects, K::kind(&()).into_owned()), reader)
        .with_config(
            kube::runtime::controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES),
        )
}

/// `stream` (a watch that backs off on its own) with its errors logged here instead of passed
/// on. A kube Controller pauses all its watches together for a back-off after any error one of
/// them passes on, growing to a minute: after an API server restart, the errors of a few pod
/// watches held a Snapshot controller's own watch for minutes, and a new Snapshot went unseen
/// (operator_faults failed on it). Each watch already retries on its own back-off.
pub fn quiet<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    watch: String,
) -> impl Stream<Item = Result<T, watcher::Error>> + Send + 'static {
    stream.filter_map(move |item| {
        let out = match item {
            Ok(obj) => Some(Ok(obj)),
            Err(error) => {
                tracing::warn!(watch = %watch, %error, "watch failed; it retries after a back-off");
                None
            }
        };
        std::future::ready(out)
    })
}

/// `ctl`, also woken by every change of the `Child` objects it owns (in `namespace`, or all)
/// that match `wc`, through a watch of their metadata alone, of its own back-off, that passes
/// on no error ([`quiet`]).
pub fn owns<K, Child>(
    ctl: kube::runtime::Controller<K>,
    client: &Client,
    namespace: Option<&str>,
    wc: watcher::Config,
) -> kube::runtime::Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
    Child: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    Child: Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use kube::core::PartialObjectMeta;
    use kube::runtime::WatchStreamExt;
    let api = scoped_api::<PartialObjectMeta<Child>>(client, namespace);
    let children = watcher(api, wc).default_backoff().touched_objects();
    ctl.owns_stream(quiet(children, format!("owned {}", Child::kind(&()))))
}

/// `ctl`, also woken for the objects `mapper` names for every change of an `Other` in `api`,
/// through a watch of its own back-off that passes on no error ([`quiet`]).
pub fn watches<K, Other, I>(
    ctl: kube::runtime::Controller<K>,
    api: Api<Other>,
    mapper: impl Fn(Other) -> I + Sync + Send + 'static,
) -> kube::runtime::Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
    Other: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send,
    Other: 'static,
    I: 'static + IntoIterator<Item = ObjectRef<K>>,
    I::IntoIter: Send,
{
    use kube::runtime::WatchStreamExt;
    let others = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .touched_objects();
    ctl.watches_stream(quiet(others, Other::kind(&()).into_owned()), mapper)
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

    /// A trigger watch that fails does not hold the controller's other watches: the main
    /// watch's next object, which comes only after the trigger's error has been taken, is
    /// reconciled at once (in tokio's paused time), not after the controller's back-off of
    /// 0.8 s or more. Without [`quiet`] it came 0.8 to 1.6 s later, and after a run of errors
    /// (an API server restart) a minute later each.
    #[tokio::test(start_paused = true)]
    async fn a_failed_trigger_watch_does_not_hold_the_controller() {
        use futures::channel::mpsc;
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::runtime::controller::Action;
        use kube::runtime::{Controller, WatchStreamExt, reflector, watcher::Event};
        use std::sync::Arc;

        let named = |name: &str| {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(name.into());
            cm.metadata.namespace = Some("ns".into());
            cm
        };
        let (reader, writer) = reflector::store::<ConfigMap>();
        let (main_tx, main_rx) = mpsc::unbounded::<watcher::Result<Event<ConfigMap>>>();
        for event in [Event::Init, Event::InitDone] {
            main_tx.unbounded_send(Ok(event)).expect("send");
        }
        let objects = main_rx.reflect(writer).applied_objects();
        // The trigger fails, and only once its error has been taken does the main watch see
        // ConfigMap "a".
        let release = futures::stream::once(async move {
            main_tx
                .unbounded_send(Ok(Event::Apply(named("a"))))
                .expect("send");
            None
        })
        .filter_map(std::future::ready)
        .chain(futures::stream::pending());
        let trigger =
            futures::stream::once(async { Err(watcher::Error::NoResourceVersion) }).chain(release);
        let (done_tx, mut done_rx) = mpsc::unbounded::<String>();
        let started = tokio::time::Instant::now();
        let run = Controller::for_stream(objects, reader)
            .owns_stream::<ConfigMap>(quiet(trigger, "test".into()))
            .run(
                move |cm: Arc<ConfigMap>, _: Arc<()>| {
                    let done = done_tx.clone();
                    async move {
                        done.unbounded_send(cm.name_any()).expect("send");
                        Ok::<_, kube::Error>(Action::await_change())
                    }
                },
                |_, _, _| Action::await_change(),
                Arc::new(()),
            )
            .for_each(|_| std::future::ready(()));
        let run = tokio::spawn(run);
        assert_eq!(done_rx.next().await.as_deref(), Some("a"));
        let waited = started.elapsed();
        run.abort();
        assert!(
            waited < Duration::from_millis(100),
            "the controller saw ConfigMap a {waited:?} after the trigger's error"
        );
    }

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
