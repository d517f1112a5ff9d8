//! `snapcrypt verify`.

use clap::Args;

use super::CliError;
use super::keys::KeyArgs;
use super::repo_args::RepoArgs;
use crate::engine::progress::human_bytes;
use crate::engine::repo::Repository;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Check only this snapshot (id, prefix or `latest`) and the data it needs.
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// Also read every pack, check it against its name and open every blob.
    #[arg(long)]
    pub read_data: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: VerifyArgs) -> Result<(), CliError> {
    let km = args.keys.key_manager(false).await?;
    let repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
    let report =
        crate::engine::verify::verify(&repo, args.snapshot.as_deref(), args.read_data).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            eprintln!("snapcrypt: {p}");
        }
        eprintln!(
            "snapcrypt: checked {} snapshots, {} packs, {} blobs{}",
            report.snapshots,
            report.packs,
            report.blobs,
            if args.read_data {
                format!(", read {}", human_bytes(report.bytes_read))
            } else {
                String::new()
            }
        );
        if report.leftover_file_lists > 0 {
            eprintln!(
                "snapcrypt: {} file-list piece(s) left by an interrupted backup or prune (not damage: the next prune removes them)",
                report.leftover_file_lists
            );
        }
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} problem(s) found; the first: {}",
            report.problems.len(),
            report.problems[0]
        )
        .into())
    }
}
