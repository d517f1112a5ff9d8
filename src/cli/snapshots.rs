//! `snapcrypt snapshots`.

use clap::Args;

use super::CliError;
use super::keys::KeyArgs;
use super::repo_args::RepoArgs;
use crate::engine::progress::human_bytes;
use crate::engine::repo::Repository;

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: SnapshotsArgs) -> Result<(), CliError> {
    let km = args.keys.key_manager(false).await?;
    let repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
    let snaps = repo.snapshots().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snaps)?);
        return Ok(());
    }
    println!(
        "{:<32}  {:<27}  {:>7}  {:>10}  {:>10}  {:<20}  SOURCE",
        "ID", "TIME", "FILES", "SIZE", "ADDED", "KEY"
    );
    for s in &snaps {
        println!(
            "{:<32}  {:<27}  {:>7}  {:>10}  {:>10}  {:<20}  {}",
            s.id,
            s.time,
            s.files,
            human_bytes(s.logical_bytes),
            human_bytes(s.stored_bytes),
            s.master_key_id,
            s.source
        );
    }
    eprintln!("{} snapshot(s)", snaps.len());
    Ok(())
}
