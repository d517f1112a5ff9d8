//! `kubectl snapcrypt snapshots [JOB]`: the Snapshots as a table, or as JSON or YAML rows.

use clap::Args;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::text::{age, condition, table};
use super::{Output, Target};
use crate::api::snapshot::{CaptureMode, RunPhase};
use crate::api::{BackupJob, Snapshot};
use crate::cli::CliError;
use crate::engine::progress::human_bytes;

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only this BackupJob's Snapshots.
    pub job: Option<String>,
    /// table, json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

/// One Snapshot as the listing shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub name: String,
    pub job: String,
    pub phase: RunPhase,
    /// When it completed (else when it was created), RFC 3339.
    pub time: Option<String>,
    /// schedule, on-demand or imported.
    pub trigger: String,
    pub added_bytes: Option<u64>,
    pub key_id: Option<String>,
    pub repository_snapshot_id: Option<String>,
    /// volumeSnapshot, fsyncLock or stoppedMember.
    pub capture: Option<String>,
    /// The Consistent condition's status (True, False).
    pub consistent: Option<String>,
    /// The job's last restore test, when it restored this Snapshot: Running, Succeeded, Failed.
    pub restore_test: Option<String>,
}

pub(super) fn capture_name(m: &CaptureMode) -> &'static str {
    match m {
        CaptureMode::VolumeSnapshot => "volumeSnapshot",
        CaptureMode::FsyncLock => "fsyncLock",
        CaptureMode::StoppedMember => "stoppedMember",
        CaptureMode::Unknown => "unknown",
    }
}

/// The listing's row of `s`, with the restore tests of `jobs`. Pure.
pub fn row(s: &Snapshot, jobs: &[BackupJob]) -> Row {
    let st = s.status.clone().unwrap_or_default();
    let job = s.spec.backup_job_ref.name.clone();
    let annotations = s.annotations();
    let trigger = if annotations.contains_key(crate::api::catalog::IMPORTED_ANNOTATION) {
        "imported"
    } else if annotations.contains_key(crate::controller::names::SCHEDULED_TIME) {
        "schedule"
    } else {
        "on-demand"
    };
    let restore_test = jobs
        .iter()
        .find(|j| j.name_any() == job)
        .and_then(|j| j.status.as_ref()?.last_restore_test.clone())
        .filter(|t| t.snapshot == s.name_any())
        .map(|t| format!("{:?}", t.result));
    Row {
        name: s.name_any(),
        job,
        phase: st.phase,
        time: st
            .completion_time
            .clone()
            .or(s.metadata.creation_timestamp.clone())
            .map(|t| t.0.to_string()),
        trigger: trigger.into(),
        added_bytes: st.stats.as_ref().map(|x| x.stored_bytes),
        key_id: st.key_id.clone(),
        repository_snapshot_id: st.repository_snapshot_id.clone(),
        capture: st.capture.as_ref().map(|c| capture_name(&c.mode).into()),
        consistent: condition(&st.conditions, "Consistent").map(|c| c.status.clone()),
        restore_test,
    }
}

pub async fn run(t: &Target, args: SnapshotsArgs) -> Result<(), CliError> {
    let snaps: Api<Snapshot> = Api::namespaced(t.client.clone(), &t.namespace);
    let jobs: Api<BackupJob> = Api::namespaced(t.client.clone(), &t.namespace);
    let jobs = jobs.list(&ListParams::default()).await?.items;
    let mut all: Vec<Snapshot> = snaps
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| {
            args.job
                .as_ref()
                .is_none_or(|j| &s.spec.backup_job_ref.name == j)
        })
        .collect();
    all.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            s.name_any(),
        )
    });
    let rows: Vec<Row> = all.iter().map(|s| row(s, &jobs)).collect();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&rows)?),
        Output::Table => {
            if rows.is_empty() {
                eprintln!("No Snapshots found in namespace {}.", t.namespace);
                return Ok(());
            }
            print!("{}", render(&all, &rows));
        }
    }
    Ok(())
}

/// The table of `rows` (of `snaps`, in order).
fn render(snaps: &[Snapshot], rows: &[Row]) -> String {
    let now = jiff::Timestamp::now();
    let cells: Vec<Vec<String>> = snaps
        .iter()
        .zip(rows)
        .map(|(s, r)| {
            let st = s.status.clone().unwrap_or_default();
            let when = st.completion_time.or(s.metadata.creation_timestamp.clone());
            let capture = match (&r.capture, r.consistent.as_deref()) {
                (Some(c), Some("False")) => format!("{c} (NOT consistent)"),
                (Some(c), _) => c.clone(),
                (None, _) => "-".into(),
            };
            vec![
                r.name.clone(),
                r.job.clone(),
                format!("{:?}", r.phase),
                age(when.as_ref(), now),
                r.trigger.clone(),
                r.added_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                r.repository_snapshot_id
                    .as_deref()
                    .map(|id| id.chars().take(12).collect())
                    .unwrap_or_else(|| "-".into()),
                r.key_id.clone().unwrap_or_else(|| "-".into()),
                capture,
                r.restore_test.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "JOB",
            "PHASE",
            "AGE",
            "TRIGGER",
            "ADDED",
            "ID",
            "KEY",
            "CAPTURE",
            "RESTORE-TEST",
        ],
        &cells,
    )
}
