//! `snapcrypt agent copy`: what a BackupJob's copy pod runs. The same copy as `snapcrypt copy`
//! (shared code path: [`copy_and_keep`]), then a check that the snapshot the operator started
//! the run for is in the copy, and a one-line result (or the error) in the termination message.

use clap::Args;

use super::CliError;
use super::agent::{ReportArgs, report_result, retention_result};
use super::copy::{CopyArgs, CopyOutcome, copy_and_keep};
use crate::api::agent::CopyResult;

#[derive(Args, Debug)]
pub struct CopyAgentArgs {
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub copy: CopyArgs,
    /// Fail unless the copy holds this snapshot id after the run (the newest of the job's
    /// snapshots when the operator started it): status never says a snapshot was copied that
    /// is not there.
    #[arg(long, value_name = "ID")]
    pub must_hold: Option<String>,
}

pub async fn run(args: CopyAgentArgs) -> Result<(), CliError> {
    let result = async {
        let outcome = copy_and_keep(&args.copy, true).await?;
        if let Some(id) = &args.must_hold {
            let held = outcome.report.copied.contains(id) || holds(&args.copy, id).await?;
            if !held {
                return Err(CliError::from(format!(
                    "snapshot {id} is not in the copy {} after the run: the copy's retention forgets it (spec.copies[].retention keeps none of the job's newest snapshots?) or the primary no longer holds it; check the copy's retention",
                    args.copy.to.to_repo
                )));
            }
        }
        Ok(result_line(outcome))
    };
    report_result(&args.report.termination_log, result.await)
}

/// Whether the target holds snapshot `id`.
async fn holds(args: &CopyArgs, id: &str) -> Result<bool, CliError> {
    let backend = args.target().backend(false)?;
    Ok(backend
        .exists(&format!("snapshots/{id}"))
        .await
        .map_err(crate::engine::EngineError::from)?)
}

fn result_line(o: CopyOutcome) -> CopyResult {
    let r = o.report;
    CopyResult {
        target_id: r.target_id,
        created: r.created,
        snapshots_copied: r.copied.len() as u64,
        already_there: r.already_there as u64,
        outside_retention: r.outside_retention as u64,
        packs_copied: r.packs_copied as u64,
        bytes_copied: r.bytes_copied,
        keys_written: r.keys_written as u64,
        key_id: o.target_key_id,
        retention: o.retention.map(retention_result),
    }
}
