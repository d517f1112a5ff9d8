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

use crate::api::snapshot::RunPhase;
use crate::api::verification::CheckResult;
use crate::api::{BackupJob, KmipServer, Snapshot};
use crate::controller::job_spec::schedule::CronSchedule;
use crate::controller::kmip_server::build::parse_period;

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
