//! `snapcrypt agent catalog`: what a BackupJob's catalog pod runs. Lists the job's snapshots
//! in the repository (its backupjob tag) and which cluster writes them, writes the list into
//! the ConfigMap the operator made for it (a termination message holds 4 KiB, a catalog can
//! hold thousands), and leaves a one-line result in the termination message.

use clap::Args;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::CliError;
use super::agent::{ReportArgs, report_result};
use crate::api::catalog::{CATALOG_KEY, CatalogEntry, CatalogResult};
use crate::api::snapshot::JOB_TAG;
use crate::controller::kube_api::AGENT_FIELD_MANAGER;
use crate::engine::error::EngineError;
use crate::engine::format::SnapshotManifest;
use crate::engine::repo::{Repository, owners};

#[derive(Args, Debug)]
pub struct CatalogAgentArgs {
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub repo: super::repo_args::RepoArgs,
    #[command(flatten)]
    pub keys: super::keys::KeyArgs,
    /// The job whose snapshots to list, NAMESPACE/NAME (their backupjob tag).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub job: String,
    /// The ConfigMap (in the report namespace) to write the list into; without it the list is
    /// printed.
    #[arg(long, value_name = "NAME")]
    pub config_map: Option<String>,
}

/// A repository snapshot as a catalog entry.
pub fn entry(m: &SnapshotManifest) -> CatalogEntry {
    CatalogEntry {
        id: m.id.clone(),
        time: m.time.clone(),
        finished: m.finished.clone(),
        files: m.files,
        logical_bytes: m.logical_bytes,
        stored_bytes: m.stored_bytes,
        key_id: m.master_key_id.clone(),
        tags: m.tags.clone(),
    }
}

pub async fn run(args: CatalogAgentArgs) -> Result<(), CliError> {
    let result = catalog(&args).await;
    report_result(&args.report.termination_log, result)
}

async fn catalog(args: &CatalogAgentArgs) -> Result<CatalogResult, CliError> {
    // A directory not made yet (a claim's path before the job's first backup) holds nothing.
    if let crate::engine::backend::Location::Local(dir) = args.repo.location()?
        && !dir.exists()
    {
        write_list(args, "[]").await?;
        return Ok(CatalogResult::default());
    }
    let backend = args.repo.backend(false)?;
    let owner = owners::owner(&backend, &args.job).await?;
    let km = args.keys.key_manager(false).await?;
    // No repository yet: nothing to import (the job's first backup creates it).
    let entries: Vec<CatalogEntry> = match Repository::open(backend, km.as_ref()).await {
        Ok(repo) => repo
            .snapshots()
            .await?
            .iter()
            .filter(|m| m.tags.get(JOB_TAG) == Some(&args.job))
            .map(entry)
            .collect(),
        Err(EngineError::NoRepository { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    write_list(args, &serde_json::to_string(&entries)?).await?;
    Ok(CatalogResult {
        found: entries.len() as u64,
        owner: owner.map(|o| o.cluster),
    })
}

/// The list into the ConfigMap, or printed.
async fn write_list(args: &CatalogAgentArgs, list: &str) -> Result<(), CliError> {
    match (&args.config_map, &args.report.namespace) {
        (Some(name), Some(ns)) => {
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name},
                "data": {CATALOG_KEY: list},
            });
            let api: Api<ConfigMap> = Api::namespaced(Client::try_default().await?, ns);
            api.patch(
                name,
                &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| format!("writing the catalog into ConfigMap {ns}/{name}: {e}"))?;
        }
        _ => eprintln!("{list}"),
    }
    Ok(())
}
