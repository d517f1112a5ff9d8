//! Per-BackupJob series, computed at each scrape from the operator's own caches (the
//! controllers' reflector stores) rather than kept up to date by reconciles: a deleted job's
//! series go with it, ages are as of the scrape, and every value is what the objects' status
//! says at that moment. Labels: `namespace` and `job` (plus `snapshot` and `phase` for
//! unfinished Snapshots).

use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::api::copy::CopyStatus;
use crate::api::retention::RetentionRun;
use crate::api::snapshot::RunPhase;
use crate::api::verification::CheckResult;
use crate::api::{BackupJob, KmipServer, Snapshot};
use crate::controller::job_spec::schedule::CronSchedule;
use crate::controller::job_spec::schedule::parse_period;

/// One metric family: its name (without `_total` for a counter), help and type.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub counter: bool,
}

impl Family {
    /// The name as exported.
    pub fn exported_name(&self) -> String {
        if self.counter {
            format!("{}_total", self.name)
        } else {
            self.name.to_string()
        }
    }
}

macro_rules! families {
    ($($id:ident = $name:literal $kind:ident $help:literal;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        pub enum Id { $($id,)* }
        /// Every per-job family, in [`Id`] order.
        pub const FAMILIES: &[Family] = &[$(Family {
            name: $name,
            help: $help,
            counter: families!(@counter $kind),
        },)*];
    };
    (@counter counter) => { true };
    (@counter gauge) => { false };
}

families! {
    Created = "snapcrypt_backupjob_created_timestamp_seconds" gauge
        "When the BackupJob was created";
    LastSuccess = "snapcrypt_backupjob_last_success_timestamp_seconds" gauge
        "When the newest successful Snapshot of the job completed (status.lastSuccessfulTime)";
    SchedulePeriod = "snapcrypt_backupjob_schedule_period_seconds" gauge
        "Shortest interval between two runs of spec.schedule.cron";
    LastDuration = "snapcrypt_backupjob_last_snapshot_duration_seconds" gauge
        "How long the newest successful Snapshot ran, start to completion";
    LastRead = "snapcrypt_backupjob_last_snapshot_read_bytes" gauge
        "Bytes the newest successful Snapshot read from the dbPath (stats.logicalBytes)";
    LastAdded = "snapcrypt_backupjob_last_snapshot_added_bytes" gauge
        "Bytes the newest successful Snapshot added to the repository (stats.storedBytes)";
    LastFiles = "snapcrypt_backupjob_last_snapshot_files" gauge
        "Files in the newest successful Snapshot (stats.files)";
    LastLock = "snapcrypt_backupjob_last_fsync_lock_seconds" gauge
        "How long the member's writes were held with fsyncLock for the newest successful Snapshot";
    StoredBytes = "snapcrypt_backupjob_repository_stored_bytes" gauge
        "Bytes the job's snapshots store in the repository (status.storedBytes)";
    Snapshots = "snapcrypt_backupjob_repository_snapshots" gauge
        "Successful snapshots of the job kept (status.snapshotCount)";
    VerifiedAt = "snapcrypt_backupjob_last_verification_timestamp_seconds" gauge
        "When the last data read (spec.verification.readData) started";
    VerifiedOk = "snapcrypt_backupjob_last_verification_success" gauge
        "1 if the last data read found no damage, else 0";
    VerifyProblems = "snapcrypt_backupjob_last_verification_problems" gauge
        "Damaged or missing objects the last data read found";
    TestedAt = "snapcrypt_backupjob_last_restore_test_timestamp_seconds" gauge
        "When the last finished restore test was created";
    TestedOk = "snapcrypt_backupjob_last_restore_test_success" gauge
        "1 if the last finished restore test passed, else 0";
    TestDuration = "snapcrypt_backupjob_last_restore_test_duration_seconds" gauge
        "How long the last finished restore test took, restore and check";
    KeyAge = "snapcrypt_backupjob_master_key_age_seconds" gauge
        "Age of the master key the job's new data keys are wrapped under (KMIP jobs)";
    KeyPeriod = "snapcrypt_backupjob_master_key_rotation_period_seconds" gauge
        "The job's KmipServer's spec.rotation.period";
    Rotations = "snapcrypt_backupjob_master_key_rotations" counter
        "Rotations the job's KmipServer has made (keys it superseded)";
    CopyLag = "snapcrypt_backupjob_copy_lag_snapshots" gauge
        "Successful Snapshots of the job newer than the newest its copy holds (status.copies[].lag)";
    CopyLastSuccess = "snapcrypt_backupjob_copy_last_success_timestamp_seconds" gauge
        "When the copy's last successful run ended (status.copies[].lastCopyTime)";
    CopyRunOk = "snapcrypt_backupjob_copy_last_run_success" gauge
        "1 if the copy's last finished run succeeded, else 0";
    CopyBytes = "snapcrypt_backupjob_copy_last_run_bytes" gauge
        "Bytes the copy's last finished run sent (status.copies[].bytesCopied)";
    RetentionRunOk = "snapcrypt_backupjob_retention_last_run_success" gauge
        "1 if the last finished retention pod run of the job's repository (spec.retention.credentialsSecret), or of its copy (label copy), succeeded, else 0";
    PhaseStart = "snapcrypt_snapshot_phase_start_timestamp_seconds" gauge
        "When an unfinished Snapshot entered its phase (Pending: created; others: started)";
}

/// One value of one family.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub family: Id,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The caches the series are computed from, filled as the controllers start.
#[derive(Clone, Default)]
pub struct Caches(Arc<Mutex<Stores>>);

#[derive(Default)]
struct Stores {
    jobs: Option<Store<BackupJob>>,
    snapshots: Option<Store<Snapshot>>,
    kmip_servers: Option<Store<KmipServer>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Caches")
    }
}

impl Caches {
    fn with<R>(&self, f: impl FnOnce(&mut Stores) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
    pub fn set_jobs(&self, s: Store<BackupJob>) {
        self.with(|c| c.jobs = Some(s));
    }
    pub fn set_snapshots(&self, s: Store<Snapshot>) {
        self.with(|c| c.snapshots = Some(s));
    }
    pub fn set_kmip_servers(&self, s: Store<KmipServer>) {
        self.with(|c| c.kmip_servers = Some(s));
    }

    /// Every sample, as of `now`.
    pub fn samples(&self, now: jiff::Timestamp) -> Vec<Sample> {
        let (jobs, snaps, servers) = self.with(|c| {
            (
                c.jobs.as_ref().map(Store::state).unwrap_or_default(),
                c.snapshots.as_ref().map(Store::state).unwrap_or_default(),
                c.kmip_servers
                    .as_ref()
                    .map(Store::state)
                    .unwrap_or_default(),
            )
        });
        samples(&jobs, &snaps, &servers, now)
    }
}

/// The per-job series of the registry.
#[derive(Debug)]
pub struct JobCollector {
    caches: Caches,
}

impl JobCollector {
    pub fn new(caches: Caches) -> Self {
        JobCollector { caches }
    }
}

impl Collector for JobCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.caches.samples(jiff::Timestamp::now());
        for (i, family) in FAMILIES.iter().enumerate() {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.family as usize == i).collect();
            if mine.is_empty() {
                continue;
            }
            let kind = if family.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for s in mine {
                let labeled = metric.encode_family(&s.labels)?;
                if family.counter {
                    ConstCounter::new(s.value as u64).encode(labeled)?;
                } else {
                    ConstGauge::new(s.value).encode(labeled)?;
                }
            }
        }
        Ok(())
    }
}

fn seconds(t: &jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// Every sample from these objects, as of `now`. Pure.
pub fn samples(
    jobs: &[Arc<BackupJob>],
    snaps: &[Arc<Snapshot>],
    servers: &[Arc<KmipServer>],
    now: jiff::Timestamp,
) -> Vec<Sample> {
    let mut out = Vec::new();
    for job in jobs {
        job_samples(job, snaps, servers, now, &mut out);
    }
    for s in snaps {
        let phase = s.status.as_ref().map(|st| st.phase).unwrap_or_default();
        // Pending since creation; Quiescing, SnapshottingVolume and Running since the run
        // started (or, before the pod's start is known, creation).
        let since = match phase {
            RunPhase::Succeeded | RunPhase::Failed => None,
            RunPhase::Pending => s.metadata.creation_timestamp.as_ref(),
            _ => s
                .status
                .as_ref()
                .and_then(|st| st.start_time.as_ref())
                .or(s.metadata.creation_timestamp.as_ref()),
        };
        if let Some(t) = since {
            let labels = vec![
                ("namespace".into(), s.namespace().unwrap_or_default()),
                ("job".into(), s.spec.backup_job_ref.name.clone()),
                ("snapshot".into(), s.name_any()),
                ("phase".into(), format!("{phase:?}")),
            ];
            out.push(Sample {
                family: Id::PhaseStart,
                labels,
                value: seconds(&t.0),
            });
        }
    }
    out
}

fn job_samples(
    job: &BackupJob,
    snaps: &[Arc<Snapshot>],
    servers: &[Arc<KmipServer>],
    now: jiff::Timestamp,
    out: &mut Vec<Sample>,
) {
    let ns = job.namespace().unwrap_or_default();
    let labels = vec![
        ("namespace".to_string(), ns.clone()),
        ("job".to_string(), job.name_any()),
    ];
    let mut put = |family: Id, value: Option<f64>| {
        if let Some(value) = value {
            out.push(Sample {
                family,
                labels: labels.clone(),
                value,
            });
        }
    };
    let st = job.status.clone().unwrap_or_default();
    put(
        Id::Created,
        job.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| seconds(&t.0)),
    );
    put(
        Id::LastSuccess,
        st.last_successful_time.as_ref().map(|t| seconds(&t.0)),
    );
    put(
        Id::SchedulePeriod,
        job.spec
            .schedule
            .as_ref()
            .and_then(|s| period(&s.cron, &s.time_zone, now)),
    );
    put(Id::StoredBytes, Some(st.stored_bytes as f64));
    put(Id::Snapshots, Some(st.snapshot_count as f64));
    let last = st.last_successful_snapshot.as_ref().and_then(|name| {
        snaps
            .iter()
            .find(|s| s.name_any() == *name && s.namespace().as_deref() == Some(&ns))
    });
    if let Some(ss) = last.and_then(|s| s.status.as_ref()) {
        put(
            Id::LastDuration,
            match (&ss.start_time, &ss.completion_time) {
                (Some(a), Some(b)) => Some(b.0.duration_since(a.0).as_secs_f64()),
                _ => None,
            },
        );
        put(
            Id::LastRead,
            ss.stats.as_ref().map(|x| x.logical_bytes as f64),
        );
        put(
            Id::LastAdded,
            ss.stats.as_ref().map(|x| x.stored_bytes as f64),
        );
        put(Id::LastFiles, ss.stats.as_ref().map(|x| x.files as f64));
        put(
            Id::LastLock,
            ss.capture
                .as_ref()
                .and_then(|c| c.lock.as_ref())
                .and_then(|l| l.held_seconds),
        );
    }
    if let Some(v) = &st.last_verification {
        put(Id::VerifiedAt, v.time.as_ref().map(|t| seconds(&t.0)));
        put(
            Id::VerifiedOk,
            Some(f64::from(u8::from(v.result == CheckResult::Succeeded))),
        );
        put(Id::VerifyProblems, Some(v.problem_count as f64));
    }
    if let Some(t) = &st.last_restore_test {
        put(Id::TestedAt, t.time.as_ref().map(|t| seconds(&t.0)));
        put(
            Id::TestedOk,
            Some(f64::from(u8::from(t.result == CheckResult::Succeeded))),
        );
        put(Id::TestDuration, t.duration_seconds);
    }
    let server = job.spec.encryption.kmip_server_ref.as_ref().and_then(|r| {
        servers
            .iter()
            .find(|k| k.name_any() == r.name && k.namespace().as_deref() == Some(&ns))
    });
    if let Some(ks) = server {
        key_samples(ks, st.key_id.as_ref(), now, &mut put);
    }
    if let Some(r) = &st.retention {
        retention_samples(r, labels.clone(), out);
    }
    for c in &st.copies {
        copy_samples(c, &labels, out);
        if let Some(r) = &c.retention {
            let mut with_copy = labels.clone();
            with_copy.push(("copy".into(), c.name.clone()));
            retention_samples(r, with_copy, out);
        }
    }
}

/// A repository's retention pod runs (least privilege), once one has ended.
fn retention_samples(r: &RetentionRun, labels: Vec<(String, String)>, out: &mut Vec<Sample>) {
    if r.last_run_pod.is_none() {
        return;
    }
    out.push(Sample {
        family: Id::RetentionRunOk,
        labels,
        value: f64::from(u8::from(r.result == CheckResult::Succeeded)),
    });
}

/// A copy's series (status.copies[]), labelled with the copy's name besides the job's.
fn copy_samples(c: &CopyStatus, job: &[(String, String)], out: &mut Vec<Sample>) {
    let mut labels = job.to_vec();
    labels.push(("copy".into(), c.name.clone()));
    let finished = c.result != CheckResult::Running;
    for (family, value) in [
        (Id::CopyLag, Some(c.lag as f64)),
        (
            Id::CopyLastSuccess,
            c.last_copy_time.as_ref().map(|t| seconds(&t.0)),
        ),
        (
            Id::CopyRunOk,
            finished.then(|| f64::from(u8::from(c.result == CheckResult::Succeeded))),
        ),
        (Id::CopyBytes, finished.then_some(c.bytes_copied as f64)),
    ] {
        if let Some(value) = value {
            out.push(Sample {
                family,
                labels: labels.clone(),
                value,
            });
        }
    }
}

/// The master key's age, rotation period and rotations, from the job's KmipServer.
fn key_samples(
    ks: &KmipServer,
    job_key: Option<&String>,
    now: jiff::Timestamp,
    put: &mut impl FnMut(Id, Option<f64>),
) {
    let kst = ks.status.clone().unwrap_or_default();
    let key = job_key.or(kst.active_key_id.as_ref());
    let created = kst
        .keys
        .iter()
        .find(|k| Some(&k.id) == key)
        .and_then(|k| k.created_at.as_ref());
    put(
        Id::KeyAge,
        created.map(|c| now.duration_since(c.0).as_secs_f64().max(0.0)),
    );
    put(
        Id::KeyPeriod,
        ks.spec
            .rotation
            .as_ref()
            .and_then(|r| parse_period(&r.period).ok())
            .map(|p| p.as_secs_f64()),
    );
    put(
        Id::Rotations,
        Some(
            kst.keys
                .iter()
                .filter(|k| k.superseded_at.is_some())
                .count() as f64,
        ),
    );
}

/// The shortest interval between the schedule's next runs (a week of them at most).
fn period(cron: &str, tz: &str, now: jiff::Timestamp) -> Option<f64> {
    let runs = CronSchedule::parse(cron, tz).ok()?.next_runs(now, 64);
    runs.windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .fold(None, |min: Option<f64>, d| {
            Some(min.map_or(d, |m| m.min(d)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{job, snapshot_in};

    fn get(samples: &[Sample], family: Id, extra: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.family == family
                    && extra
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn series_say_what_the_objects_status_says() {
        let mut j =
            job("schedule: {cron: \"0 */6 * * *\"}\nencryption: {kmipServerRef: {name: kms}}");
        j.status = serde_yaml::from_str(
            "{lastSuccessfulSnapshot: done, lastSuccessfulTime: \"2026-11-27T10:00:10Z\", storedBytes: 900, snapshotCount: 2, keyId: k2,
              lastVerification: {time: \"2026-11-27T11:00:00Z\", result: Failed, subset: 1/4, problemCount: 2, problems: [a, b]},
              lastRestoreTest: {time: \"2026-11-27T12:00:00Z\", snapshot: done, restore: rs0-rt-1, result: Succeeded, durationSeconds: 42.5}}",
        )
        .expect("status");
        let mut done = snapshot_in("done", "2026-11-27T10:00:00Z", RunPhase::Succeeded, None);
        done.status = serde_yaml::from_str(
            "{phase: Succeeded, startTime: \"2026-11-27T10:00:01Z\", completionTime: \"2026-11-27T10:00:10Z\",
              stats: {files: 7, logicalBytes: 5000, storedBytes: 300, dedupRatio: 1.0},
              capture: {mode: fsyncLock, attempt: 1, lock: {member: rs0-1, state: Released, heldSeconds: 3.25}}}",
        )
        .expect("snapshot status");
        let mut running = snapshot_in("now", "2026-11-27T13:00:00Z", RunPhase::Running, Some("p"));
        running.status.as_mut().expect("status").start_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-27T13:00:05Z".parse().expect("t"),
            ));
        let ks: KmipServer = serde_yaml::from_str(
            "apiVersion: snapcrypt.dev/v1alpha1
kind: KmipServer
metadata: {name: kms, namespace: db}
spec: {endpoints: [\"kmip:5696\"], tls: {secretName: t}, masterKey: {create: {name: m}}, rotation: {period: 30d}}
status: {activeKeyId: k2, keys: [{id: k1, state: Active, dependentSnapshots: 1, createdAt: \"2026-10-01T00:00:00Z\", supersededAt: \"2026-11-01T00:00:00Z\"}, {id: k2, state: Active, dependentSnapshots: 2, createdAt: \"2026-11-01T00:00:00Z\"}]}",
        )
        .expect("KmipServer");
        let now: jiff::Timestamp = "2026-11-27T14:00:00Z".parse().expect("now");
        let s = samples(
            &[Arc::new(j)],
            &[Arc::new(done), Arc::new(running)],
            &[Arc::new(ks)],
            now,
        );
        let at = |t: &str| seconds(&t.parse::<jiff::Timestamp>().expect("t"));
        let rs0 = [("namespace", "db"), ("job", "rs0")];
        assert_eq!(get(&s, Id::Created, &rs0), Some(at("2026-11-27T09:30:00Z")));
        assert_eq!(
            get(&s, Id::LastSuccess, &rs0),
            Some(at("2026-11-27T10:00:10Z"))
        );
        assert_eq!(get(&s, Id::SchedulePeriod, &rs0), Some(6.0 * 3600.0));
        assert_eq!(get(&s, Id::LastDuration, &rs0), Some(9.0));
        assert_eq!(get(&s, Id::LastRead, &rs0), Some(5000.0));
        assert_eq!(get(&s, Id::LastAdded, &rs0), Some(300.0));
        assert_eq!(get(&s, Id::LastFiles, &rs0), Some(7.0));
        assert_eq!(get(&s, Id::LastLock, &rs0), Some(3.25));
        assert_eq!(get(&s, Id::StoredBytes, &rs0), Some(900.0));
        assert_eq!(get(&s, Id::Snapshots, &rs0), Some(2.0));
        assert_eq!(get(&s, Id::VerifiedOk, &rs0), Some(0.0));
        assert_eq!(get(&s, Id::VerifyProblems, &rs0), Some(2.0));
        assert_eq!(get(&s, Id::TestedOk, &rs0), Some(1.0));
        assert_eq!(get(&s, Id::TestDuration, &rs0), Some(42.5));
        assert_eq!(
            get(&s, Id::KeyAge, &rs0),
            Some(26.0 * 86400.0 + 14.0 * 3600.0)
        );
        assert_eq!(get(&s, Id::KeyPeriod, &rs0), Some(30.0 * 86400.0));
        assert_eq!(get(&s, Id::Rotations, &rs0), Some(1.0));
        let phase = [("snapshot", "now"), ("phase", "Running")];
        assert_eq!(
            get(&s, Id::PhaseStart, &phase),
            Some(at("2026-11-27T13:00:05Z"))
        );
        assert_eq!(get(&s, Id::PhaseStart, &[("snapshot", "done")]), None);

        // Encoded as Prometheus text with help, the counter with `_total`.
        let caches = Caches::default();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(JobCollector::new(caches)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            !text.contains("snapcrypt_backupjob"),
            "no caches, no series: {text}"
        );
    }

    #[test]
    fn every_family_is_exported_once_with_conventional_names() {
        let names: Vec<String> = FAMILIES.iter().map(Family::exported_name).collect();
        for n in &names {
            assert!(
                n.ends_with("_seconds")
                    || n.ends_with("_bytes")
                    || n.ends_with("_total")
                    || n.ends_with("_files")
                    || n.ends_with("_snapshots")
                    || n.ends_with("_success")
                    || n.ends_with("_problems"),
                "{n}"
            );
            assert_eq!(names.iter().filter(|m| *m == n).count(), 1, "{n}");
        }
        assert!(names.contains(&"snapcrypt_backupjob_master_key_rotations_total".to_string()));
    }
}
