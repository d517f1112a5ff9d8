//! `snapcrypt key`: the master keys a repository depends on.

use clap::{Args, Subcommand};

use super::CliError;
use super::keys::KeyArgs;
use super::repo_args::RepoArgs;
use crate::engine::keys::master_key_uses;
use crate::engine::repo::Repository;

#[derive(Args, Debug)]
pub struct KeyCommandArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List every master key the repository's data keys are wrapped under, its state, and the
    /// snapshots that depend on it (a key with dependants must stay in its key store).
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: KeyCommandArgs) -> Result<(), CliError> {
    match args.command {
        KeyCommand::Status(a) => status(a).await,
    }
}

async fn status(args: StatusArgs) -> Result<(), CliError> {
    let km = args.keys.key_manager(&args.repo, false).await?;
    let repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
    let snaps = repo.snapshots().await?;
    let active = km.active_key_id().await.ok();
    let mut rows = Vec::new();
    for u in master_key_uses(repo.key_records(), &snaps) {
        let state = args
            .keys
            .key_state(km.as_ref(), &u.kms, &u.master_key_id, active.as_deref())
            .await;
        rows.push((u, state));
    }
    if args.json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(u, state)| {
                let mut v = serde_json::to_value(u).unwrap_or_default();
                v["state"] = serde_json::Value::String(state.clone());
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<6}  {:<24}  {:<12}  {:>9}  {:>9}  SNAPSHOTS",
        "KMS", "MASTER KEY", "STATE", "DATA KEYS", "DEPENDANTS"
    );
    for (u, state) in rows {
        println!(
            "{:<6}  {:<24}  {:<12}  {:>9}  {:>9}  {}",
            u.kms,
            u.master_key_id,
            state,
            u.data_keys.len(),
            u.snapshots.len(),
            u.snapshots.join(",")
        );
    }
    Ok(())
}
