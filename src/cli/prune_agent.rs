//! `snapcrypt agent prune`: what a BackupJob's retention pod runs (least privilege: the job's
//! spec.retention.credentialsSecret, which the snapshot pods never see). The same pass as
//! the snapshot pod's retention and `snapcrypt prune` (shared code: [`prune`]), scoped to
//! the job's tags, then a one-line result (or the error) in the termination message.

use clap::Args;

use super::CliError;
use super::agent::{ReportArgs, report_result, retention_result};
use super::keys::KeyArgs;
use super::prune::RetentionArgs;
use super::repo_args::RepoArgs;
use crate::api::agent::RetentionResult;
use crate::api::snapshot::JOB_TAG;
use crate::engine::progress::human_bytes;
use crate::engine::prune::{PruneScope, prune};
use crate::engine::repo::Repository;

#[derive(Args, Debug)]
pub struct PruneAgentArgs {
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// The tags that scope the rules (the operator passes backupjob=NAMESPACE/NAME and
    /// trigger=schedule): snapshots without them are kept.
    #[arg(long = "prune-tag", value_name = "KEY=VALUE", value_parser = super::backup::parse_tag)]
    pub prune_tags: Vec<(String, String)>,
    /// Never forget this snapshot id (the newest the run was started after), whatever the
    /// rules say. Repeatable.
    #[arg(long, value_name = "ID")]
    pub protect: Vec<String>,
    /// Prune only while this cluster owns the job's snapshots (owners/): a cluster the job was
    /// taken over from stops deleting.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

pub async fn run(args: PruneAgentArgs) -> Result<(), CliError> {
    let result = async {
        if args.retention.policy().is_empty() {
            return Err(CliError::from(
                "no retention rule given (--keep-last, --keep-daily, --keep-weekly, --keep-monthly or --max-age): nothing to apply".to_string(),
            ));
        }
        let km = args.keys.key_manager(false).await?;
        let mut repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
        if let Some(cluster) = &args.cluster {
            let job = args
                .prune_tags
                .iter()
                .find(|(k, _)| k == JOB_TAG)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| {
                    CliError::from(format!(
                        "--cluster needs --prune-tag {JOB_TAG}=NAMESPACE/NAME: it checks that job's owner"
                    ))
                })?;
            crate::engine::repo::owners::claim(&repo.backend, job, cluster, None).await?;
        }
        let scope = PruneScope {
            tags: args.prune_tags.iter().cloned().collect(),
            protect: args.protect.iter().cloned().collect(),
        };
        let report = prune(
            &mut repo,
            km.as_ref(),
            &args.retention.policy(),
            &scope,
            &args.retention.prune_options(false),
        )
        .await?;
        eprintln!(
            "snapcrypt: retention: kept {} snapshot(s), forgot {}, freed {}",
            report.kept.len(),
            report.forgotten.len(),
            human_bytes(report.bytes_freed)
        );
        Ok::<RetentionResult, CliError>(retention_result(report))
    };
    report_result(&args.report.termination_log, result.await)
}
