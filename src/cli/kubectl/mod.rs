//! `kubectl snapcrypt`: the everyday verbs against the operator's objects, with the user's
//! kubeconfig and context as kubectl uses them. The same binary, installed (or linked) as
//! `kubectl-snapcrypt` on the PATH, is found by kubectl as a plugin; `snapcrypt kubectl ...`
//! is the same command.
//!
//! - `backup JOB [--wait]`: an on-demand Snapshot now ([`backup`])
//! - `snapshots [JOB]`: the Snapshots as a table ([`snapshots`])
//! - `status JOB`: one screen of what a person checks, and what to do ([`status`])
//! - `restore SNAPSHOT --to CLAIM [--wait]` ([`restore`]); `logs NAME`, `explain-failure NAME`
//!   ([`logs`])
//! - `check`: the CRDs are served and every operator pod answers `/healthz` ([`check`]; the
//!   chart's `helm test`)

mod backup;
mod check;
mod logs;
mod restore;
mod snapshots;
mod status;
mod text;
mod wait;

use clap::{Args, Subcommand, ValueEnum};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::CliError;

#[derive(Args, Debug)]
pub struct KubectlArgs {
    /// The namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The kubeconfig context (default: the current one).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Take an on-demand Snapshot of BackupJob JOB now; with --wait, show its progress until
    /// it ends and exit with its result (0: Succeeded).
    Backup(backup::BackupArgs),
    /// List Snapshots (of JOB, or all in the namespace): id, time, trigger, size added, key,
    /// capture, restore-test result.
    Snapshots(snapshots::SnapshotsArgs),
    /// Everything a person checks about BackupJob JOB on one screen, and what to do about
    /// anything wrong.
    Status(status::StatusArgs),
    /// Restore Snapshot SNAPSHOT into claim CLAIM; with --wait, show its progress until it
    /// ends and exit with its result.
    Restore(restore::RestoreArgs),
    /// The agent pod's log of a Snapshot or Restore (after the pod is gone: what its status
    /// kept).
    Logs(logs::LogsArgs),
    /// Why a Snapshot, Restore or BackupJob is not well: its conditions in a bad state, its
    /// Events and the agent's last lines, in one view.
    ExplainFailure(logs::ExplainArgs),
    /// Is the install well: the API server serves the snapcrypt kinds and every operator pod
    /// answers /healthz (through the API server; the chart's `helm test` runs this).
    Check(check::CheckArgs),
}

/// How a listing is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    #[default]
    Table,
    Json,
    Yaml,
}

/// The API client and namespace, as kubectl would choose them.
pub struct Target {
    pub client: Client,
    pub namespace: String,
}

impl KubectlArgs {
    async fn target(&self) -> Result<Target, CliError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            // No kubeconfig in a pod (the chart's `helm test`): its ServiceAccount, as kubectl.
            None if self.context.is_none() => kube::Config::infer().await.map_err(|e| {
                format!(
                    "cannot use the kubeconfig or this pod's ServiceAccount: {e} (set KUBECONFIG, --kubeconfig or --context)"
                )
            })?,
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| kubeconfig_error(&e))?
            }
            None => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| kubeconfig_error(&e))?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client =
            Client::try_from(config).map_err(|e| format!("cannot build the API client: {e}"))?;
        Ok(Target { client, namespace })
    }
}

fn kubeconfig_error(e: &kube::config::KubeconfigError) -> String {
    format!("cannot use the kubeconfig: {e} (set KUBECONFIG, --kubeconfig or --context)")
}

/// Run a verb; its exit code (a failed Snapshot waited for is 1, as any error).
pub async fn run(args: KubectlArgs) -> Result<(), CliError> {
    let target = args.target().await?;
    match args.verb {
        Verb::Backup(a) => backup::run(&target, a).await,
        Verb::Snapshots(a) => snapshots::run(&target, a).await,
        Verb::Status(a) => status::run(&target, a).await,
        Verb::Restore(a) => restore::run(&target, a).await,
        Verb::Logs(a) => logs::logs(&target, a).await,
        Verb::ExplainFailure(a) => logs::explain(&target, a).await,
        Verb::Check(a) => check::run(&target, a).await,
    }
}

/// `args` as `snapcrypt kubectl ...` when the binary was called as the kubectl plugin
/// (`kubectl-snapcrypt`, or `kubectl snapcrypt`, which runs it so).
pub fn plugin_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if called.starts_with("kubectl-snapcrypt") || called.starts_with("kubectl_snapcrypt") {
        let mut out = vec![std::ffi::OsString::from("snapcrypt"), "kubectl".into()];
        out.extend(args.into_iter().skip(1));
        return out;
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_name_means_the_kubectl_verbs() {
        let os = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            plugin_args(os(&["/usr/local/bin/kubectl-snapcrypt", "status", "rs0"])),
            os(&["snapcrypt", "kubectl", "status", "rs0"])
        );
        assert_eq!(
            plugin_args(os(&["snapcrypt", "backup", "--source", "x"])),
            os(&["snapcrypt", "backup", "--source", "x"])
        );
    }
}
