//! `snapcrypt agent snapshot`: what a snapshot pod runs. The same backup as `snapcrypt backup`
//! (shared code path), plus progress reported into the Snapshot's status about every 2 s, and
//! a one-line result (or the error) in the termination message for the operator.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::CliError;
use super::backup::{BackupArgs, KeyFile, perform};
use super::prune::RetentionArgs;
use crate::api::agent::{
    MAX_FORGOTTEN_IDS, MAX_PROBLEM_LEN, MAX_PROBLEMS, MAX_RETENTION_ERROR, RETENTION_INTERRUPTED,
    RetentionResult, SnapshotResult, VerifyResult,
};
use crate::api::common::Progress as ProgressStatus;
use crate::api::{Restore, Snapshot};
use crate::controller::kube_api::{AGENT_FIELD_MANAGER, AGENT_RESULT_FIELD_MANAGER};
use crate::engine::progress::human_bytes;
use crate::engine::progress::{Progress, ProgressReport};
use crate::engine::prune::{PruneScope, prune};
use crate::engine::repo::Repository;

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Take one snapshot for the operator: back up --source into --repo, report progress into
    /// the Snapshot's status, and leave the result in the termination message.
    Snapshot(SnapshotArgs),
    /// Restore one snapshot for the operator: into --target, report progress into the
    /// Restore's status, and leave the result in the termination message.
    Restore(RestoreAgentArgs),
    /// List a BackupJob's snapshots in the repository for the operator, which imports them
    /// as Snapshot objects (a cluster rebuilt from its manifests gets its catalog back).
    Catalog(super::catalog::CatalogAgentArgs),
    /// Verify the repository for the operator (a BackupJob's readData): read the group of
    /// packs given, and leave the report in the termination message. Damage found is in the
    /// report (exit 0); an error that stops the run is the message (exit 1).
    Verify(VerifyAgentArgs),
    /// Copy a BackupJob's snapshots into one of its copies (spec.copies[]) for the operator,
    /// apply the copy's retention there, and leave the result in the termination message.
    Copy(super::copy_agent::CopyAgentArgs),
    /// Apply a BackupJob's retention for the operator (a retention pod, with the job's
    /// retention credentials): forget by the rules among the job's snapshots, prune, and leave
    /// the result in the termination message.
    Prune(super::prune_agent::PruneAgentArgs),
}

#[derive(Args, Debug)]
pub struct VerifyAgentArgs {
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub repo: super::repo_args::RepoArgs,
    #[command(flatten)]
    pub keys: super::keys::KeyArgs,
    /// Read group K of N of the packs.
    #[arg(long, value_name = "K/N", value_parser = crate::engine::verify::DataSubset::parse)]
    pub read_data_subset: crate::engine::verify::DataSubset,
}

/// Where an agent reports to: the namespace, the termination message, how often.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Namespace of the object to report progress to.
    #[arg(long, env = "SNAPCRYPT_NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,
    /// Where the result line (or the error) is written for Kubernetes.
    #[arg(
        long,
        env = "SNAPCRYPT_TERMINATION_LOG",
        default_value = "/dev/termination-log",
        value_name = "FILE"
    )]
    pub termination_log: PathBuf,
    /// Seconds between progress reports.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS", hide = true)]
    pub progress_interval: f64,
}

impl ReportArgs {
    /// Start reporting into object `name` of kind K, if a namespace and a name are known.
    fn reporter<K>(&self, name: Option<&String>, progress: &Arc<Progress>) -> Option<StatusReporter>
    where
        K: Reported,
    {
        let (ns, name) = (self.namespace.as_ref()?, name?);
        Some(StatusReporter::start::<K>(
            ns.clone(),
            name.clone(),
            progress.clone(),
            Duration::from_secs_f64(self.progress_interval.max(0.1)),
        ))
    }
}

#[derive(Args, Debug)]
pub struct RestoreAgentArgs {
    /// Name of the Restore to report progress to (no reporting without it).
    #[arg(long = "restore", env = "SNAPCRYPT_RESTORE", value_name = "NAME")]
    pub restore_name: Option<String>,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub restore: super::restore::RestoreArgs,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// Name of the Snapshot to report progress to (no reporting without it).
    #[arg(long = "snapshot", env = "SNAPCRYPT_SNAPSHOT", value_name = "NAME")]
    pub snapshot_name: Option<String>,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub backup: BackupArgs,
    /// After a successful backup, forget this job's snapshots by these rules and prune.
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Refuse a --source that resolves (through `..` or links) outside this directory: the
    /// operator passes the data volume's mount, so a hostile dbPath can never make the agent
    /// copy the pod's own key or TLS files.
    #[arg(long, value_name = "DIR")]
    pub source_within: Option<PathBuf>,
    /// The tags that scope the retention rules (the operator passes backupjob=NAMESPACE/NAME).
    #[arg(long = "prune-tag", value_name = "KEY=VALUE", value_parser = super::backup::parse_tag)]
    pub prune_tags: Vec<(String, String)>,
    /// The pod this agent runs in (the operator passes it through the downward API): the
    /// result reported into the Snapshot before retention names it.
    #[arg(
        long = "pod-name",
        env = "SNAPCRYPT_POD_NAME",
        value_name = "NAME",
        hide = true
    )]
    pub pod_name: Option<String>,
}

pub async fn run(args: AgentArgs) -> Result<(), CliError> {
    match args.command {
        AgentCommand::Snapshot(a) => snapshot(a).await,
        AgentCommand::Restore(a) => restore(a).await,
        AgentCommand::Verify(a) => verify(a).await,
        AgentCommand::Catalog(a) => super::catalog::run(a).await,
        AgentCommand::Copy(a) => super::copy_agent::run(a).await,
        AgentCommand::Prune(a) => super::prune_agent::run(a).await,
    }
}

async fn verify(args: VerifyAgentArgs) -> Result<(), CliError> {
    let run = async {
        let km = args.keys.key_manager(false).await?;
        let repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
        let report =
            crate::engine::verify::verify(&repo, None, Some(args.read_data_subset)).await?;
        Ok::<_, CliError>(report)
    };
    let result = run.await.map(|report| {
        for p in &report.problems {
            eprintln!("snapcrypt: {p}");
        }
        VerifyResult {
            packs: report.packs as u64,
            packs_read: report.packs_read as u64,
            bytes_read: report.bytes_read,
            subset: report.subset.clone(),
            problem_count: report.problems.len() as u64,
            problems: report
                .problems
                .iter()
                .take(MAX_PROBLEMS)
                .map(|p| crate::controller::text::truncate(p, MAX_PROBLEM_LEN))
                .collect(),
        }
    });
    report_result(&args.report.termination_log, result)
}

/// A run's end for the operator: its result as one JSON line (termination message and
/// stdout), or its error as the termination message.
pub(super) fn report_result<T: serde::Serialize>(
    termination_log: &Path,
    result: Result<T, CliError>,
) -> Result<(), CliError> {
    match result {
        Ok(value) => {
            let line = serde_json::to_string(&value)?;
            write_termination_log(termination_log, &line);
            println!("{line}");
            Ok(())
        }
        Err(e) => {
            write_termination_log(termination_log, &e.to_string());
            Err(e)
        }
    }
}

async fn restore(args: RestoreAgentArgs) -> Result<(), CliError> {
    let progress = Arc::new(Progress::default());
    let reporter = args
        .report
        .reporter::<Restore>(args.restore_name.as_ref(), &progress);
    // The snapshot chosen (latest, before:TIME) goes into the Restore's status before anything
    // is written: a Restore of several claims gives its other members that one id.
    let report_to = args.report.namespace.clone().zip(args.restore_name.clone());
    let chosen = |id: String| async move {
        if let Some((ns, name)) = report_to {
            report_chosen(&ns, &name, &id).await;
        }
    };
    let result = super::restore::perform(&args.restore, progress.clone(), chosen).await;
    if let Some(r) = reporter {
        r.finish().await;
    }
    report_result(&args.report.termination_log, result)
}

async fn snapshot(args: SnapshotArgs) -> Result<(), CliError> {
    let progress = Arc::new(Progress::default());
    let reporter = args
        .report
        .reporter::<Snapshot>(args.snapshot_name.as_ref(), &progress);
    let result = perform(
        &args.backup,
        args.source_within.as_deref(),
        KeyFile::MustExist,
        progress.clone(),
        true,
    )
    .await;
    if let Some(r) = reporter {
        r.finish().await;
    }
    match result {
        Ok(m) => {
            let result = |retention| SnapshotResult {
                id: m.id.clone(),
                files: m.files,
                logical_bytes: m.logical_bytes,
                stored_bytes: m.stored_bytes,
                key_id: m.master_key_id.clone(),
                retention,
            };
            // The backup is complete before retention starts, and stays so if the pod is
            // stopped during it: the result is written first, saying retention did not
            // finish, so the operator reads a complete snapshot, not a failed pod to run
            // again. The termination message carries it when the pod is killed (at its memory
            // limit, say); the Snapshot's status when the pod ends without one (stopped at
            // runTimeout, its node lost). The line after retention replaces it.
            if !args.retention.policy().is_empty() {
                let interrupted = RetentionResult {
                    error: Some(RETENTION_INTERRUPTED.into()),
                    ..Default::default()
                };
                let line = serde_json::to_string(&result(Some(interrupted)))?;
                write_termination_log(&args.report.termination_log, &line);
                if let (Some(ns), Some(name), Some(pod)) =
                    (&args.report.namespace, &args.snapshot_name, &args.pod_name)
                {
                    hand_over_result(ns, name, pod, &line).await;
                }
            }
            let retention = apply_retention(&args, &m.id).await;
            let line = serde_json::to_string(&result(retention))?;
            write_termination_log(&args.report.termination_log, &line);
            println!("{line}");
            Ok(())
        }
        Err(e) => {
            write_termination_log(&args.report.termination_log, &e.to_string());
            Err(e)
        }
    }
}

/// Write the snapshot a Restore's pod chose into its status.snapshotId. Best effort, like
/// progress: the operator reads the result line's snapshot too.
async fn report_chosen(ns: &str, name: &str, id: &str) {
    let status = serde_json::json!({"snapshotId": id});
    if let Err(failure) = apply_result_status::<Restore>(ns, name, status).await {
        eprintln!(
            "snapcrypt: reporting the chosen snapshot {id} to Restore {ns}/{name}: {failure}"
        );
    }
}

/// How long the agent waits for the API server to take its result before retention.
const RESULT_REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Report the result `line` of pod `pod` into Snapshot `ns/name`'s status.agentResult, for the
/// operator to read if the pod ends without its termination message. Best effort, like
/// progress: the termination message is still written, and a failure is said, not raised.
async fn hand_over_result(ns: &str, name: &str, pod: &str, line: &str) {
    let status = serde_json::json!({"agentResult": {"pod": pod, "result": line}});
    if let Err(failure) = apply_result_status::<Snapshot>(ns, name, status).await {
        eprintln!(
            "snapcrypt: reporting the result to Snapshot {ns}/{name} before retention: {failure} (the termination message still carries it)"
        );
    }
}

/// Apply `status` to object `ns/name` of kind K under the agent's result field manager,
/// waiting at most [`RESULT_REPORT_TIMEOUT`]; the failure, in words.
async fn apply_result_status<K: Reported>(
    ns: &str,
    name: &str,
    status: serde_json::Value,
) -> Result<(), String> {
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name},
        "status": status,
    });
    let sent = async {
        let api: Api<K> = Api::namespaced(Client::try_default().await?, ns);
        api.patch_status(
            name,
            &PatchParams::apply(AGENT_RESULT_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    };
    match tokio::time::timeout(RESULT_REPORT_TIMEOUT, sent).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer in {} s",
            RESULT_REPORT_TIMEOUT.as_secs()
        )),
    }
}

/// The job's retention pass after a successful backup: forget by the rules among the snapshots
/// with the prune tags, never the one just taken, and remove what nothing kept needs. A failure
/// is reported, not raised: the backup is complete either way, and the next run tries again.
async fn apply_retention(args: &SnapshotArgs, new_id: &str) -> Option<RetentionResult> {
    let policy = args.retention.policy();
    if policy.is_empty() {
        return None;
    }
    let scope = PruneScope {
        tags: args.prune_tags.iter().cloned().collect(),
        protect: [new_id.to_string()].into(),
    };
    let pass = async {
        let km = args.backup.keys.key_manager(false).await?;
        let mut repo = Repository::open(args.backup.repo.backend(false)?, km.as_ref()).await?;
        // Still this cluster's to prune: another may have taken the job over since the backup.
        if let Some(cluster) = &args.backup.cluster {
            let job = super::backup::job_tag(&args.backup)?;
            crate::engine::repo::owners::claim(&repo.backend, job, cluster, None).await?;
        }
        Ok::<_, CliError>(
            prune(
                &mut repo,
                km.as_ref(),
                &policy,
                &scope,
                &args.retention.prune_options(false),
            )
            .await?,
        )
    };
    Some(match pass.await {
        Ok(report) => {
            eprintln!(
                "snapcrypt: retention: kept {} snapshot(s), forgot {}, freed {}",
                report.kept.len(),
                report.forgotten.len(),
                human_bytes(report.bytes_freed)
            );
            retention_result(report)
        }
        Err(e) => {
            let e = e.to_string();
            eprintln!("snapcrypt: retention not applied: {e}");
            RetentionResult {
                error: Some(crate::controller::text::truncate(&e, MAX_RETENTION_ERROR)),
                ..Default::default()
            }
        }
    })
}

/// A retention pass that finished, as a result line reports it (the snapshot pod's, the copy
/// pod's): the ids of at most [`MAX_FORGOTTEN_IDS`] forgotten snapshots, and how many in all.
pub(super) fn retention_result(report: crate::engine::prune::PruneReport) -> RetentionResult {
    RetentionResult {
        kept: report.kept.len(),
        forgotten_total: report.forgotten.len(),
        forgotten: report
            .forgotten
            .into_iter()
            .take(MAX_FORGOTTEN_IDS)
            .collect(),
        bytes_freed: report.bytes_freed,
        error: None,
    }
}

/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_MAX: usize = 4096;

fn write_termination_log(path: &Path, text: &str) {
    let text = crate::controller::text::truncate(text, TERMINATION_MAX - 8);
    if let Err(e) = std::fs::write(path, format!("{text}\n")) {
        eprintln!(
            "snapcrypt: cannot write the termination message to {}: {e}",
            path.display()
        );
    }
}

/// The progress fields of a Snapshot's status, from a reading of the counters.
pub fn progress_status(r: &ProgressReport, now: jiff::Timestamp) -> ProgressStatus {
    ProgressStatus {
        bytes_done: r.bytes_done,
        bytes_total: r.bytes_total,
        files_done: r.files_done,
        files_total: r.files_total,
        percent: (r.percent * 10.0).round() / 10.0,
        bytes_per_second: r.bytes_per_second,
        eta_seconds: r.eta_seconds,
        updated_at: Some(Time(now)),
    }
}

/// A kind an agent reports progress to (Snapshot, Restore).
pub trait Reported:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Reported for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// How long one progress report may take before it is dropped: reporting never holds up the
/// data path (an unreachable API server once added about 30 s to every run).
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Reports progress into the status of a Snapshot or Restore until finished.
struct StatusReporter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusReporter {
    fn start<K>(ns: String, name: String, progress: Arc<Progress>, every: Duration) -> Self
    where
        K: Reported,
    {
        let (stop, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Progress is best effort: a backup never fails because the API is unreachable.
            let client = match Client::try_default().await {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!(
                        "snapcrypt: progress will not be reported (no Kubernetes client: {e})"
                    );
                    None
                }
            };
            let api: Option<Api<K>> = client.map(|c| Api::namespaced(c, &ns));
            let mut last_error = String::new();
            loop {
                let done = tokio::select! {
                    _ = &mut rx => true,
                    _ = tokio::time::sleep(every) => false,
                };
                let sent = match &api {
                    Some(api) => {
                        tokio::time::timeout(REPORT_TIMEOUT, report(api, &name, &progress.report()))
                            .await
                            .map_err(|_| {
                                format!(
                                    "no answer in {} s: report dropped",
                                    REPORT_TIMEOUT.as_secs()
                                )
                            })
                            .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()))
                    }
                    None => Ok(()),
                };
                if let Err(e) = sent
                    && e != last_error
                {
                    eprintln!(
                        "snapcrypt: reporting progress to {} {ns}/{name}: {e}",
                        K::kind(&())
                    );
                    last_error = e;
                }
                if done {
                    break;
                }
            }
        });
        StatusReporter { stop, task }
    }

    /// Send one last report and stop. Waits for it a little longer than a report may take
    /// (so a dropped report is said, not cut off mid-way), and no longer: the result reaches
    /// the status through the termination message anyway.
    async fn finish(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(REPORT_TIMEOUT + Duration::from_millis(500), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn report<K>(api: &Api<K>, name: &str, r: &ProgressReport) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name},
        "status": {
            "progress": progress_status(r, jiff::Timestamp::now()),
            "progressSummary": r.summary(),
        },
    });
    api.patch_status(
        name,
        &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_status_rounds_the_percentage() {
        let r = ProgressReport {
            bytes_done: 1,
            bytes_total: 3,
            files_done: 0,
            files_total: 2,
            percent: 33.3333,
            bytes_per_second: 1,
            eta_seconds: Some(2),
            elapsed_seconds: 1.0,
        };
        let now: jiff::Timestamp = "2026-11-27T03:00:00Z".parse().expect("t");
        let p = progress_status(&r, now);
        assert_eq!(p.percent, 33.3);
        assert_eq!(p.eta_seconds, Some(2));
        assert_eq!(p.updated_at, Some(Time(now)));
    }

    #[test]
    fn termination_log_is_one_bounded_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("termination-log");
        write_termination_log(&p, &"x".repeat(10_000));
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(text.len() <= TERMINATION_MAX, "{}", text.len());
        assert!(text.ends_with('\n'));
    }
}
