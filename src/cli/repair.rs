//! `snapcrypt repair index`: write again, from the packs, the index objects that are
//! damaged, missing or disagree with their packs.

use clap::{Args, Subcommand};

use super::CliError;
use super::keys::KeyArgs;
use super::repo_args::RepoArgs;
use crate::engine::repo::{Repository, repair_index, rewrap_wait};

#[derive(Args, Debug)]
pub struct RepairArgs {
    #[command(subcommand)]
    pub what: RepairCommand,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the packs (each pack's header and sealed blob list), under the
    /// repository's exclusive lock; packs that do not open are named and left as they are.
    Index(RepairIndexArgs),
}

#[derive(Args, Debug)]
pub struct RepairIndexArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RepairArgs) -> Result<(), CliError> {
    let RepairCommand::Index(args) = args.what;
    let km = args.keys.key_manager(false).await?;
    let repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
    let report = repair_index(&repo, rewrap_wait()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for id in &report.rebuilt {
            eprintln!("snapcrypt: rebuilt index/{id} from its pack");
        }
        for id in &report.unreadable {
            eprintln!(
                "snapcrypt: pack {id} does not open (header or trailer): left as it is; run verify to see which snapshots need it"
            );
        }
        eprintln!(
            "snapcrypt: {} packs: {} index objects whole, {} rebuilt, {} packs unreadable",
            report.packs,
            report.whole,
            report.rebuilt.len(),
            report.unreadable.len()
        );
    }
    if report.unreadable.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} pack(s) do not open; their blobs are lost (run verify)",
            report.unreadable.len()
        )
        .into())
    }
}
