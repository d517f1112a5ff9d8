//! What every reconcile gets: the client, the Event recorder, metrics, the operator's
//! settings, the per-object failure counts of the error back-off, and the member locks this
//! process holds.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use super::conditions::announcements;
use super::hold::Holds;
use super::kube_api::{FIELD_MANAGER, backoff};
use super::metrics::Metrics;
use super::reason::{Reason, Severity};
use super::text::truncate;

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
    /// This cluster's name in repositories (the operator's --cluster-id, by default the uid
    /// of namespace kube-system): the BackupJobs' snapshots are claimed for it.
    pub cluster_id: String,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            agent_image: "snapcrypt:latest".into(),
            cluster_domain: "cluster.local".into(),
            mongo_timeout: Duration::from_secs(5),
            agent_progress_interval: 2.0,
            agent_env: Vec::new(),
            cluster_id: String::new(),
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
    pub holds: Holds,
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
    /// to `new` that [`announcements`] says deserve an Event.
    pub async fn announce<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        old: &[Condition],
        new: &[Condition],
    ) {
        for (reason, message) in announcements(old, new) {
            self.event(obj, reason, message.to_string()).await;
        }
    }
}
