//! `snapcrypt prune`.

use clap::Args;

use super::CliError;
use super::keys::KeyArgs;
use super::repo_args::RepoArgs;
use crate::engine::progress::human_bytes;
use crate::engine::prune::{PruneOptions, PruneScope, RetentionPolicy, prune};
use crate::engine::repo::Repository;

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Apply the policy only to snapshots with this tag (repeatable: all must match); the others
    /// are kept. Snapshot pods tag each snapshot backupjob=NAMESPACE/NAME.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = super::backup::parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Say what would be forgotten and freed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The retention rules, shared by `prune` and the snapshot agent (which prunes after a backup).
#[derive(Args, Debug, Clone, Default)]
pub struct RetentionArgs {
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
    /// Delete data no snapshot needs only once prune marked it this long ago (two-phase
    /// deletion: a reader or writer still using it is never cut off): for example 1h, 30m,
    /// or 0s to delete at once when nothing else can be using the repository.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_grace)]
    pub delete_after: u64,
}

impl RetentionArgs {
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            max_age_secs: self.max_age,
        }
    }

    /// How prune deletes, for these arguments.
    pub fn prune_options(&self, dry_run: bool) -> PruneOptions {
        PruneOptions {
            dry_run,
            grace: std::time::Duration::from_secs(self.delete_after),
        }
    }
}

/// `1h`, `30m` or `0s` as seconds.
fn parse_grace(s: &str) -> Result<u64, String> {
    crate::api::common::parse_duration(s, &['s', 'm', 'h', 'd'])
}

/// `90d` or `36h` as seconds.
pub fn parse_age(s: &str) -> Result<u64, String> {
    crate::api::common::parse_duration(s, &['h', 'd'])
}

pub async fn run(args: PruneArgs) -> Result<(), CliError> {
    let scope = PruneScope {
        tags: args.tags.iter().cloned().collect(),
        protect: Default::default(),
    };
    let km = args.keys.key_manager(false).await?;
    let mut repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
    let report = prune(
        &mut repo,
        km.as_ref(),
        &args.retention.policy(),
        &scope,
        &args.retention.prune_options(args.dry_run),
    )
    .await?;
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
        "snapcrypt: kept {} snapshot(s), {verb} {}; {} {} pack(s) ({}), repacked {}, marked {} pack(s) ({}) for deletion after {} s",
        report.kept.len(),
        report.forgotten.len(),
        if args.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        report.packs_deleted,
        human_bytes(report.bytes_freed),
        report.packs_repacked,
        report.packs_marked + report.packs_repacked,
        human_bytes(report.bytes_pending),
        args.retention.delete_after,
    );
    if report.checkpoints_deleted > 0 {
        eprintln!(
            "snapcrypt: {} {} checkpoint object(s) of backups that never finished, older than {} s",
            if args.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            report.checkpoints_deleted,
            args.retention.delete_after,
        );
    }
    if !report.locked_kept.is_empty() || report.packs_locked > 0 || report.locks_extended > 0 {
        eprintln!(
            "snapcrypt: object lock: kept {} snapshot(s) and {} pack(s) the rules would remove, locked until later (a pass after their retention ends removes them); extended the retention of {} object(s) kept snapshots need",
            report.locked_kept.len(),
            report.packs_locked,
            report.locks_extended
        );
    }
    Ok(())
}
