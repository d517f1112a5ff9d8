//! `kubectl snapcrypt restore SNAPSHOT --to CLAIM [--wait]`: a Restore of a Snapshot into a
//! claim, and with --wait its progress until it ends.

use clap::Args;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use super::Target;
use crate::api::snapshot::RunPhase;
use crate::api::{Restore, Snapshot};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The Snapshot to restore.
    pub snapshot: String,
    /// The PersistentVolumeClaim to restore into (a member's data claim, with no pod mounting
    /// it).
    #[arg(long = "to", value_name = "CLAIM")]
    pub claim: String,
    /// A directory inside the claim (default: its root).
    #[arg(long, value_name = "DIR")]
    pub path: Option<String>,
    /// Restore into a claim that already holds files (they are overwritten).
    #[arg(long)]
    pub force: bool,
    /// With --force: also delete files the snapshot does not have.
    #[arg(long, requires = "force")]
    pub delete_extra: bool,
    /// Wait for the Restore to end, showing its progress; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (e.g. 30m, 2h; the Restore goes on).
    #[arg(long, value_name = "DURATION", value_parser = super::backup::parse_timeout)]
    pub timeout: Option<u64>,
}

pub async fn run(t: &Target, args: RestoreArgs) -> Result<(), CliError> {
    let snaps: Api<Snapshot> = Api::namespaced(t.client.clone(), &t.namespace);
    if snaps.get_opt(&args.snapshot).await?.is_none() {
        return Err(format!(
            "Snapshot {} not found in namespace {} (kubectl snapcrypt snapshots -n {} lists them)",
            args.snapshot, t.namespace, t.namespace
        )
        .into());
    }
    let mut target = serde_json::json!({"claimName": args.claim, "force": args.force,
        "deleteExtra": args.delete_extra});
    if let Some(p) = &args.path {
        target["path"] = p.clone().into();
    }
    let restore: Restore = serde_json::from_value(serde_json::json!({
        "apiVersion": "snapcrypt.dev/v1alpha1",
        "kind": "Restore",
        "metadata": {"generateName": format!("{}-restore-", args.snapshot)},
        "spec": {"snapshotRef": {"name": args.snapshot}, "target": target},
    }))?;
    let restores: Api<Restore> = Api::namespaced(t.client.clone(), &t.namespace);
    let name = restores
        .create(&PostParams::default(), &restore)
        .await?
        .name_any();
    println!("restore.snapcrypt.dev/{name} created");
    if !args.wait {
        return Ok(());
    }
    let done = super::wait::follow(&restores, &name, args.timeout, |r: &Restore| {
        let st = r.status.clone().unwrap_or_default();
        super::wait::progress(st.phase, st.progress_summary, st.message)
    })
    .await
    .map_err(|e| format!("Restore {e}"))?;
    let st = done.status.unwrap_or_default();
    if st.phase == RunPhase::Succeeded {
        println!(
            "Restore {name} succeeded: Snapshot {} is in claim {}",
            args.snapshot, args.claim
        );
        return Ok(());
    }
    let why = super::text::failure_reason(&st.conditions, st.message);
    Err(format!(
        "Restore {name} failed: {why} (kubectl snapcrypt explain-failure {name} -n {})",
        t.namespace
    )
    .into())
}
