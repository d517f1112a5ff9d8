//! `snapcrypt prune`.

use clap::Args;

use super::CliError;
use super::keys::KeyArgs;
use super::repo_args::RepoArgs;
use crate::engine::progress::human_bytes;
use crate::engine::prune::{RetentionPolicy, prune};
use crate::engine::repo::Repository;

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Keep the newest N snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N days (UTC).
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Forget snapshots older than this (for example 90d or 36h), whatever the other rules say.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub max_age: Option<u64>,
    /// Say what would be forgotten and freed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `90d` or `36h` as seconds.
pub fn parse_age(s: &str) -> Result<u64, String> {
    crate::api::common::parse_duration(s, &['h', 'd'])
}

pub async fn run(args: PruneArgs) -> Result<(), CliError> {
    let policy = RetentionPolicy {
        keep_last: args.keep_last,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        max_age_secs: args.max_age,
    };
    let km = args.keys.key_manager(false).await?;
    let mut repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
    let report = prune(&mut repo, km.as_ref(), &policy, args.dry_run).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verb = if args.dry_run {
        "would forget"
    } else {
        "forgot"
    };
    for id in &report.forgotten {
        println!("{verb} {id}");
    }
    eprintln!(
        "snapcrypt: kept {} snapshot(s), {verb} {}; {} {} pack(s), repacked {}, freeing {}",
        report.kept.len(),
        report.forgotten.len(),
        if args.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        report.packs_deleted,
        report.packs_repacked,
        human_bytes(report.bytes_freed)
    );
    Ok(())
}
