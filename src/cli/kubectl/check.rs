//! `kubectl snapcrypt check`: is the install well? The API server serves every kind the
//! operator needs, and each operator pod answers `/healthz`. The pods are reached through the
//! API server's pod proxy, so the check needs no cluster DNS or Service routing and works the
//! same from a laptop and from a pod: the chart's `helm test` hook runs it in the cluster.

use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use super::Target;
use crate::api::{BackupJob, KmipServer, Restore, Snapshot};
use crate::cli::CliError;

/// The label every operator pod of the chart carries.
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/component=operator";
/// The container port the chart names for `/healthz` and `/metrics`.
const HEALTH_PORT_NAME: &str = "http-metrics";

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The operator pods' labels (the chart's: app.kubernetes.io/component=operator; add
    /// app.kubernetes.io/instance=RELEASE when several releases share the namespace).
    #[arg(long, short = 'l', default_value = OPERATOR_SELECTOR)]
    pub selector: String,
}

pub async fn run(t: &Target, args: CheckArgs) -> Result<(), CliError> {
    let mut problems = Vec::new();
    match served_kinds(t).await {
        Ok(line) => println!("{line}"),
        Err(p) => problems.push(p),
    }
    match operator_pods(t, &args.selector).await {
        Ok(pods) => {
            for pod in pods {
                match healthz(t, &pod).await {
                    Ok(line) => println!("{line}"),
                    Err(p) => problems.push(p),
                }
            }
        }
        Err(p) => problems.push(p),
    }
    if problems.is_empty() {
        println!("snapcrypt is installed and its operator answers");
        return Ok(());
    }
    for p in &problems {
        println!("problem: {p}");
    }
    Err(format!("{} problem(s) with the install (above)", problems.len()).into())
}

/// The kinds the operator needs, each served at its group and version.
async fn served_kinds(t: &Target) -> Result<String, String> {
    let group_version = BackupJob::api_version(&());
    let needed = [
        BackupJob::plural(&()).to_string(),
        Snapshot::plural(&()).to_string(),
        Restore::plural(&()).to_string(),
        KmipServer::plural(&()).to_string(),
    ];
    let served = t
        .client
        .list_api_group_resources(&group_version)
        .await
        .map_err(|e| {
            format!(
                "the API server does not serve {group_version} ({}): install the CRDs (kubectl apply -f crds/, or the chart without --skip-crds)",
                api_error(&e)
            )
        })?;
    let missing: Vec<&String> = needed
        .iter()
        .filter(|n| !served.resources.iter().any(|r| &r.name == *n))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the API server serves {group_version} but not {}: apply the CRDs of this version (kubectl apply -f crds/)",
            join(&missing)
        ));
    }
    Ok(format!(
        "CRDs served ({group_version}): {}",
        join(&needed.iter().collect::<Vec<_>>())
    ))
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn operator_pods(t: &Target, selector: &str) -> Result<Vec<Pod>, String> {
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            format!(
                "cannot list pods {selector} in namespace {}: {}",
                t.namespace,
                api_error(&e)
            )
        })?;
    let running: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    if running.is_empty() {
        return Err(format!(
            "no operator pod ({selector}) in namespace {}: is the chart installed there (helm list -n {}), and its Deployment scaled up?",
            t.namespace, t.namespace
        ));
    }
    Ok(running)
}

/// GET /healthz of `pod` through the API server's pod proxy.
async fn healthz(t: &Target, pod: &Pod) -> Result<String, String> {
    let name = pod.name_any();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_else(|| "no node yet".into());
    let port = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(HEALTH_PORT_NAME))
        .map(|p| p.container_port)
        .ok_or_else(|| {
            format!("operator pod {name} has no container port named {HEALTH_PORT_NAME}: is it the chart's?")
        })?;
    let path = format!(
        "/api/v1/namespaces/{}/pods/{name}:{port}/proxy/healthz",
        t.namespace
    );
    let request = http::Request::get(&path)
        .body(Vec::new())
        .map_err(|e| format!("operator pod {name}: {e}"))?;
    match t.client.request_text(request).await {
        Ok(body) if body.trim() == "ok" => Ok(format!(
            "operator pod {name} (node {node}): /healthz answered ok"
        )),
        Ok(body) => Err(format!(
            "operator pod {name} (node {node}): /healthz answered {:?}, not ok: see kubectl logs -n {} {name}",
            body.trim(),
            t.namespace
        )),
        Err(e) => Err(format!(
            "operator pod {name} (node {node}): /healthz on port {port} did not answer ({}): see kubectl describe pod -n {} {name}",
            api_error(&e),
            t.namespace
        )),
    }
}

/// A kube error as one line: the API server's message and code, else the client's error.
fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}
