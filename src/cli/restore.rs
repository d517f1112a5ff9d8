//! `snapcrypt restore`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::CliError;
use super::keys::KeyArgs;
use super::progress::ProgressReporter;
use super::repo_args::RepoArgs;
use crate::engine::progress::{Progress, human_bytes};
use crate::engine::repo::{Repository, Selector, Which};
use crate::engine::restore::{FixWords, RestoreOptions, RestoreStats, restore};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Snapshot id (or a unique prefix of it), `latest`, or `before:TIME` (the newest taken at
    /// or before an RFC 3339 time), among the snapshots with every --snapshot-tag.
    #[arg(long, value_name = "ID|latest|before:TIME", value_parser = Which::parse)]
    pub snapshot: Which,
    /// Only snapshots with this tag (repeatable): `backupjob=NAMESPACE/NAME` names a
    /// BackupJob's snapshots.
    #[arg(long = "snapshot-tag", value_name = "KEY=VALUE", value_parser = super::backup::parse_tag)]
    pub snapshot_tags: Vec<(String, String)>,
    /// Directory to restore into; must be empty or absent unless --force.
    #[arg(long, value_name = "DIR")]
    pub target: PathBuf,
    /// Restore into a non-empty directory, overwriting files of the same names.
    #[arg(long)]
    pub force: bool,
    /// With --force, remove what the target holds that the snapshot does not (without it, such
    /// a target is refused and the extra entries are named).
    #[arg(long, requires = "force")]
    pub delete_extra: bool,
    /// Once restored, read every file back and compare it with the snapshot (contents chunk by
    /// chunk, size, mode, link targets); a difference fails the restore, naming the entries.
    #[arg(long)]
    pub check: bool,
    /// Print the result as JSON, and progress as JSON lines on stderr.
    #[arg(long)]
    pub json: bool,
    /// Refuse a --target that is not beneath this directory, or reaches it through a link
    /// (any part below this directory): the operator passes the target claim's mount, so a
    /// link planted in the claim can never make the restore write or remove elsewhere.
    #[arg(long, value_name = "DIR")]
    pub target_within: Option<PathBuf>,
    /// Name the settings a refusal points to as a Restore's fields (spec.target.force,
    /// spec.target.deleteExtra) instead of this command's flags: the operator passes it to the
    /// agent in a Restore's pod, whose reader sets the spec.
    #[arg(long, hide = true)]
    pub fixes_as_restore_spec: bool,
}

/// The snapshot `args` name.
pub fn selector(args: &RestoreArgs) -> Selector {
    Selector {
        which: args.snapshot.clone(),
        tags: args.snapshot_tags.iter().cloned().collect(),
    }
}

/// The restore `args` ask for, counting into `progress`; `chosen` hears which snapshot that is
/// before anything is written. Shared with the restore agent.
pub async fn perform<F: std::future::Future<Output = ()>>(
    args: &RestoreArgs,
    progress: Arc<Progress>,
    chosen: impl FnOnce(String) -> F,
) -> Result<RestoreStats, CliError> {
    let km = args.keys.key_manager(false).await?;
    let repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
    let snap = repo.select_snapshot(&selector(args)).await?;
    chosen(snap.id.clone()).await;
    let opts = RestoreOptions {
        force: args.force,
        delete_extra: args.delete_extra,
        check: args.check,
        target_within: args.target_within.clone(),
        fix_words: if args.fixes_as_restore_spec {
            FixWords::RestoreSpec
        } else {
            FixWords::Flags
        },
        ..Default::default()
    };
    Ok(restore(&repo, &snap, &args.target, opts, progress).await?)
}

pub async fn run(args: RestoreArgs) -> Result<(), CliError> {
    let progress = Arc::new(Progress::default());
    let reporter = ProgressReporter::start(progress.clone(), args.json, "restore");
    let result = perform(&args, progress, |_| async {}).await;
    reporter.finish().await;
    let stats = result?;
    if let Some(why) = &stats.read_without_lock {
        eprintln!(
            "snapcrypt: warning: read the repository without a lock ({why}); a prune's deletion grace period is all that protected this restore"
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        eprintln!(
            "snapcrypt: restored snapshot {} ({} files, {}) into {}, every chunk verified{}",
            stats.snapshot,
            stats.files,
            human_bytes(stats.bytes),
            args.target.display(),
            if stats.checked {
                ", every file read back and matched"
            } else {
                ""
            }
        );
    }
    Ok(())
}
