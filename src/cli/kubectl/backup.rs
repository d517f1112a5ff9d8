//! `kubectl snapcrypt backup JOB [--wait]`: an on-demand Snapshot of the job now, and with
//! --wait its progress from status until it ends.

use clap::Args;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use super::Target;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, Snapshot};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The BackupJob.
    pub job: String,
    /// Wait for the Snapshot to end, showing its progress; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (e.g. 30m, 2h; the Snapshot goes on).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<u64>,
}

pub(super) fn parse_timeout(s: &str) -> Result<u64, String> {
    crate::api::common::parse_duration(s, &['s', 'm', 'h'])
}

pub async fn run(t: &Target, args: BackupArgs) -> Result<(), CliError> {
    let jobs: Api<BackupJob> = Api::namespaced(t.client.clone(), &t.namespace);
    if jobs.get_opt(&args.job).await?.is_none() {
        return Err(format!(
            "BackupJob {} not found in namespace {} (kubectl get backupjobs -n {} lists them; -n NAMESPACE picks another)",
            args.job, t.namespace, t.namespace
        )
        .into());
    }
    let snaps: Api<Snapshot> = Api::namespaced(t.client.clone(), &t.namespace);
    let snap: Snapshot = serde_json::from_value(serde_json::json!({
        "apiVersion": "snapcrypt.dev/v1alpha1",
        "kind": "Snapshot",
        "metadata": {"generateName": format!("{}-ondemand-", args.job)},
        "spec": {"backupJobRef": {"name": args.job}},
    }))?;
    let created = snaps.create(&PostParams::default(), &snap).await?;
    let name = created.name_any();
    println!("snapshot.snapcrypt.dev/{name} created");
    if !args.wait {
        return Ok(());
    }
    let done = super::wait::follow(&snaps, &name, args.timeout, |s: &Snapshot| {
        let st = s.status.clone().unwrap_or_default();
        super::wait::progress(st.phase, st.progress_summary, st.message)
    })
    .await
    .map_err(|e| format!("Snapshot {e}: kubectl snapcrypt status {}", args.job))?;
    let st = done.status.unwrap_or_default();
    if st.phase == RunPhase::Succeeded {
        let stats = st.stats.unwrap_or_default();
        println!(
            "Snapshot {name} succeeded: {} files, {} read, {} added (repository snapshot {}, key {})",
            stats.files,
            crate::engine::progress::human_bytes(stats.logical_bytes),
            crate::engine::progress::human_bytes(stats.stored_bytes),
            st.repository_snapshot_id.as_deref().unwrap_or("-"),
            st.key_id.as_deref().unwrap_or("-"),
        );
        return Ok(());
    }
    let why = super::text::failure_reason(&st.conditions, st.message);
    Err(format!(
        "Snapshot {name} failed: {why} (kubectl snapcrypt explain-failure {name} -n {})",
        t.namespace
    )
    .into())
}
