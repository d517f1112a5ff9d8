//! `snapcrypt verify`.

use clap::Args;

use super::CliError;
use super::keys::KeyArgs;
use super::repo_args::RepoArgs;
use crate::engine::progress::human_bytes;
use crate::engine::repo::Repository;
use crate::engine::verify::DataSubset;

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
    /// Read only group K of N of the packs (1 <= K <= N); groups 1..N in turn read them all.
    #[arg(long, value_name = "K/N", value_parser = DataSubset::parse, conflicts_with = "read_data")]
    pub read_data_subset: Option<DataSubset>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: VerifyArgs) -> Result<(), CliError> {
    let km = args.keys.key_manager(false).await?;
    let repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
    let read = match (args.read_data, args.read_data_subset) {
        (_, Some(subset)) => Some(subset),
        (true, None) => Some(DataSubset::ALL),
        (false, None) => None,
    };
    let report = crate::engine::verify::verify(&repo, args.snapshot.as_deref(), read).await?;
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
            if read.is_some() {
                format!(
                    ", read {} packs{} ({})",
                    report.packs_read,
                    report
                        .subset
                        .as_ref()
                        .map(|s| format!(" of group {s}"))
                        .unwrap_or_default(),
                    human_bytes(report.bytes_read)
                )
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
        if report.leftover_packs > 0 {
            eprintln!(
                "snapcrypt: {} pack(s) without an index object, left by an interrupted backup or repack (not damage: prune removes them)",
                report.leftover_packs
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
