//! `kubectl snapcrypt backup JOB [--wait]`: an on-demand Snapshot of the job now, and with
//! --wait its progress from status until it ends.

use std::time::Duration;

use clap::Args;
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

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

fn parse_timeout(s: &str) -> Result<u64, String> {
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
    let wait = follow(&snaps, &name);
    let done = match args.timeout {
        Some(secs) => tokio::time::timeout(Duration::from_secs(secs), wait)
            .await
            .map_err(|_| {
                format!("Snapshot {name} has not ended after {secs} s; it goes on: kubectl snapcrypt status {}", args.job)
            })??,
        None => wait.await?,
    };
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
    let why = super::text::condition(&st.conditions, "Failed")
        .map(|c| c.message.clone())
        .or(st.message)
        .unwrap_or_else(|| "no reason given".into());
    Err(format!(
        "Snapshot {name} failed: {why} (kubectl describe snapshot {name} -n {} shows its Events)",
        t.namespace
    )
    .into())
}

/// Watch Snapshot `name` until it has succeeded or failed, showing its progress line as it
/// changes (a bar on a terminal).
async fn follow(snaps: &Api<Snapshot>, name: &str) -> Result<Snapshot, CliError> {
    let bar = indicatif::ProgressBar::new_spinner();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(snaps.clone(), config).applied_objects().boxed();
    let mut last = String::new();
    while let Some(s) = stream.try_next().await? {
        let st = s.status.clone().unwrap_or_default();
        let line = format!(
            "{:?} {}",
            st.phase,
            st.progress_summary
                .clone()
                .or(st.message.clone())
                .unwrap_or_default()
        );
        if line != last {
            if tty {
                bar.set_message(line.clone());
            } else {
                eprintln!("{name}: {line}");
            }
            last = line;
        }
        if matches!(st.phase, RunPhase::Succeeded | RunPhase::Failed) {
            bar.finish_and_clear();
            return Ok(s);
        }
    }
    Err(format!("the watch of Snapshot {name} ended").into())
}
