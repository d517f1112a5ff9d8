//! `snapcrypt operator`: the BackupJob, Snapshot and KmipServer controllers in one process, with /healthz
//! and /metrics, until SIGTERM or SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use kube::Client;
use kube::api::{Api, ListParams};

use super::CliError;
use crate::api::Snapshot;
use crate::controller;
use crate::controller::context::OperatorConfig;
use crate::controller::metrics::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// Image of the snapshot pods; its entrypoint must be the snapcrypt binary.
    #[arg(
        long,
        env = "SNAPCRYPT_AGENT_IMAGE",
        default_value = "snapcrypt:latest"
    )]
    pub agent_image: String,
    /// Port of the HTTP endpoints /healthz and /metrics.
    #[arg(long, env = "SNAPCRYPT_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Address the HTTP endpoints listen on.
    #[arg(long, env = "SNAPCRYPT_HTTP_BIND", default_value = "0.0.0.0")]
    pub http_bind: IpAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "SNAPCRYPT_WATCH_NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,
    /// Cluster DNS domain, for the replica set members' stable host names.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Seconds each member gets to answer `hello`.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub mongo_timeout: u64,
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Run only while holding a Lease, so several replicas can run and one reconciles.
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the Lease (in $POD_NAMESPACE) for --leader-elect.
    #[arg(long, default_value = "snapcrypt-operator", value_name = "NAME")]
    pub leader_elect_lease: String,
    /// Seconds between the snapshot agents' progress reports (tests shorten it).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS", hide = true)]
    pub agent_progress_interval: f64,
    /// Extra environment for every agent pod, NAME=VALUE; repeatable. For example
    /// HTTPS_PROXY and NO_PROXY for an object store behind a proxy, or RUST_LOG. The agent's
    /// own variables win over these.
    #[arg(long = "agent-env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub agent_env: Vec<(String, String)>,
    /// This cluster's name in the repositories it writes: a BackupJob's snapshots are claimed
    /// for it, and a BackupJob of the same namespace and name in another cluster only reads
    /// them. Default: the uid of namespace kube-system, which a rebuilt cluster does not share.
    #[arg(long, env = "SNAPCRYPT_CLUSTER_ID", value_name = "NAME", value_parser = parse_cluster_id)]
    pub cluster_id: Option<String>,
}

/// A cluster name: 1 to 253 characters, letters, digits, '-', '.', '_'.
fn parse_cluster_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "--cluster-id {s:?}: 1 to 253 letters, digits, '-', '.' and '_'"
        ))
    }
}

/// This cluster's name: --cluster-id, else the uid of namespace kube-system.
async fn cluster_id(client: &Client, given: Option<String>) -> Result<String, CliError> {
    if let Some(id) = given {
        return Ok(id);
    }
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let found = ns.get("kube-system").await.map_err(|e| {
        format!(
            "cannot name this cluster for its repositories: reading namespace kube-system ({e}); set --cluster-id (the chart's clusterId), or let the operator get that namespace (the chart's RBAC)"
        )
    })?;
    found
        .metadata
        .uid
        .ok_or_else(|| "namespace kube-system has no uid; set --cluster-id".into())
}

/// NAME=VALUE of --agent-env, NAME a valid environment variable name.
fn parse_env(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("--agent-env {s:?}: expected NAME=VALUE"))?;
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "--agent-env {s:?}: {name:?} is not an environment variable name (letters, digits and _, not starting with a digit)"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

pub async fn run(args: OperatorArgs) -> Result<(), CliError> {
    init_tracing(args.log_format);
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API (KUBECONFIG or in-cluster): {e}"))?;
    // Fail at start-up, with the fix, when the CRDs are missing.
    let probe: Api<Snapshot> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    probe.list(&ListParams::default().limit(1)).await.map_err(|e| {
        format!(
            "cannot list Snapshots ({e}): are the CRDs installed (snapcrypt crd | kubectl apply -f -) and may this ServiceAccount read them (the chart's RBAC, or deploy/snapcrypt.yaml)?"
        )
    })?;
    let metrics = Arc::new(Metrics::default());
    let addr = SocketAddr::new(args.http_bind, args.http_port);
    let listener = controller::http::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for /healthz and /metrics: {e}"))?;
    tracing::info!(%addr, agent_image = %args.agent_image, namespace = ?args.namespace, "snapcrypt operator starting");
    let cluster_id = cluster_id(&client, args.cluster_id).await?;
    tracing::info!(%cluster_id, "this cluster's name in repositories");
    let config = OperatorConfig {
        cluster_id,
        agent_image: args.agent_image,
        cluster_domain: args.cluster_domain,
        mongo_timeout: Duration::from_secs(args.mongo_timeout.max(1)),
        agent_progress_interval: args.agent_progress_interval,
        agent_env: args.agent_env,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http = tokio::spawn(controller::http::serve(
        listener,
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));
    let signals = async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    let leader = args.leader_elect.then(|| controller::leader::LeaderConfig {
        lease: args.leader_elect_lease.clone(),
        namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
        identity: std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("snapcrypt-{}", std::process::id())),
    });
    let run = async {
        if let Some(cfg) = &leader {
            controller::leader::acquire(&client, cfg).await;
        }
        let controllers = controller::run(
            client.clone(),
            metrics,
            config,
            args.namespace,
            stopped(stop_rx),
        );
        match &leader {
            None => {
                controllers.await;
                Ok(())
            }
            Some(cfg) => tokio::select! {
                _ = controllers => Ok(()),
                _ = controller::leader::hold(&client, cfg) => Err("lost leadership (the Lease); exiting so a restart contends again"),
            },
        }
    };
    // Stop on a signal (the controllers then wind down), or as soon as `run` ends by itself
    // (lost leadership).
    tokio::pin!(run);
    let result = tokio::select! {
        r = &mut run => r,
        _ = signals => run.await,
    };
    result?;
    match http.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("HTTP server: {e}").into()),
        Err(e) => Err(format!("HTTP server task: {e}").into()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
