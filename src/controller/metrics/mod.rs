//! Prometheus metrics of the operator (served on /metrics): its own work
//! (`snapcrypt_operator_*`, counted as it happens) and each BackupJob's state
//! (`snapcrypt_backupjob_*`, `snapcrypt_snapshot_*`, computed at each scrape from the
//! operator's caches: see [`jobs`]).

pub mod jobs;

use std::time::Instant;

use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{BackupJob, KmipServer, Snapshot};

/// Every metric family the operator exports, as exported (counters with `_total`, histograms
/// by their base name): what alert rules may refer to.
pub fn metric_names() -> Vec<String> {
    let own = [
        "reconciliations_total",
        "reconcile_failures_total",
        "reconcile_duration_seconds",
        "snapshots_finished_total",
        "restores_finished_total",
        "member_lock_seconds",
    ];
    own.iter()
        .map(|n| format!("snapcrypt_operator_{n}"))
        .chain(jobs::FAMILIES.iter().map(|f| f.exported_name()))
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    /// The pipeline stage that failed (`Error::category`).
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabels {
    /// What the lock was for: `cut` (quiesce fsyncLock) or `copy` (mode fsyncLock).
    pub purpose: String,
}

/// The operator's metrics and their registry.
pub struct Metrics {
    pub registry: Registry,
    /// The caches the per-job series are computed from.
    pub caches: jobs::Caches,
    pub reconciliations: Family<ControllerLabels, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram>,
    pub snapshots_finished: Family<OutcomeLabels, Counter>,
    pub restores_finished: Family<OutcomeLabels, Counter>,
    pub member_lock: Family<LockLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let caches = jobs::Caches::default();
        root.register_collector(Box::new(jobs::JobCollector::new(caches.clone())));
        let registry = root.sub_registry_with_prefix("snapcrypt_operator");
        let reconciliations = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let snapshots_finished = Family::<OutcomeLabels, Counter>::default();
        let restores_finished = Family::<OutcomeLabels, Counter>::default();
        let member_lock = Family::<LockLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.25, 2.0, 14))
        });
        registry.register(
            "reconciliations",
            "Reconciliations started",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by stage",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconciliation took",
            duration.clone(),
        );
        registry.register(
            "snapshots_finished",
            "Snapshots that reached Succeeded or Failed",
            snapshots_finished.clone(),
        );
        registry.register(
            "restores_finished",
            "Restores that reached Succeeded or Failed",
            restores_finished.clone(),
        );
        registry.register(
            "member_lock_seconds",
            "How long the operator held a member's writes with fsyncLock, by purpose (cut, copy)",
            member_lock.clone(),
        );
        Metrics {
            registry: root,
            caches,
            member_lock,
            reconciliations,
            failures,
            duration,
            snapshots_finished,
            restores_finished,
        }
    }
}

impl Metrics {
    /// Count a reconciliation; the returned guard records its duration when dropped.
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer<'_> {
        let labels = ControllerLabels {
            controller: controller.into(),
        };
        self.reconciliations.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            labels,
            start: Instant::now(),
        }
    }

    pub fn failure(&self, controller: &str, stage: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                stage: stage.into(),
            })
            .inc();
    }

    /// A Snapshot reached `phase` (Succeeded or Failed).
    pub fn finished(&self, phase: &str) {
        count_outcome(&self.snapshots_finished, phase);
    }

    /// A Restore reached `phase` (Succeeded or Failed).
    pub fn restore_finished(&self, phase: &str) {
        count_outcome(&self.restores_finished, phase);
    }

    /// A member's writes were held for `seconds` for `purpose` (cut or copy).
    pub fn member_locked(&self, purpose: &str, seconds: f64) {
        self.member_lock
            .get_or_create(&LockLabels {
                purpose: purpose.into(),
            })
            .observe(seconds);
    }

    /// Compute the per-job series from this BackupJob cache (the BackupJob controller's).
    pub fn watch_jobs(&self, store: Store<BackupJob>) {
        self.caches.set_jobs(store);
    }

    /// Compute the per-Snapshot series from this cache (the Snapshot controller's).
    pub fn watch_snapshots(&self, store: Store<Snapshot>) {
        self.caches.set_snapshots(store);
    }

    /// Take master key facts from this cache (the KmipServer controller's).
    pub fn watch_kmip_servers(&self, store: Store<KmipServer>) {
        self.caches.set_kmip_servers(store);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: ControllerLabels,
    start: Instant,
}

fn count_outcome(family: &Family<OutcomeLabels, Counter>, phase: &str) {
    family
        .get_or_create(&OutcomeLabels {
            phase: phase.into(),
        })
        .inc();
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_by_label() {
        let m = Metrics::default();
        drop(m.reconcile("backupjob"));
        m.failure("snapshot", "apply_pod");
        m.finished("Succeeded");
        m.restore_finished("Failed");
        m.member_locked("cut", 1.5);
        let text = m.encode().expect("encode");
        assert!(
            text.contains("snapcrypt_operator_restores_finished_total{phase=\"Failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("snapcrypt_operator_reconciliations_total{controller=\"backupjob\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "snapcrypt_operator_reconcile_failures_total{controller=\"snapshot\",stage=\"apply_pod\"} 1"
        ));
        assert!(
            text.contains("snapcrypt_operator_snapshots_finished_total{phase=\"Succeeded\"} 1")
        );
        assert!(
            text.contains("snapcrypt_operator_member_lock_seconds_count{purpose=\"cut\"} 1"),
            "{text}"
        );
    }
}
