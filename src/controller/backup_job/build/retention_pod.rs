//! The retention pods of a BackupJob's repositories under least privilege (the job's with
//! spec.retention.credentialsSecret, a copy's with spec.copies[].retention.credentialsSecret),
//! and what a finished run means for its status. Pure.

use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};

use crate::api::agent::RetentionResult;
use crate::api::backup_job::{Encryption, Retention};
use crate::api::copy::CopySpec;
use crate::api::destination::Destination;
use crate::api::retention::RetentionRun;
use crate::api::snapshot::{JOB_TAG, TRIGGER_SCHEDULE, TRIGGER_TAG};
use crate::api::verification::CheckResult;
use crate::api::{BackupJob, KmipServer};
use crate::controller::agent::pod::{AgentRepo, JobAgentPod, PodError, job_agent_pod};
use crate::controller::agent::run::RunStep;
use crate::controller::job_spec::retention::{retention_flags, with_credentials};
use crate::controller::names::{
    RETENTION_COPY_LABEL, RETENTION_JOB_UID_LABEL, RETENTION_RUN, RETENTION_SNAPSHOT,
    retention_pod_name,
};

/// Everything a retention pod depends on, decided before building.
#[derive(Clone, Debug)]
pub struct RetentionPlan<'a> {
    pub job: &'a BackupJob,
    /// The copy whose repository is pruned (None: the job's own).
    pub copy: Option<&'a CopySpec>,
    /// The run's number (the repository's retention runs so far, plus one).
    pub run: u64,
    /// The Snapshot the run comes after (the job's newest successful one; for a copy, the
    /// newest one the copy holds) and its repository id, never forgotten by this run.
    pub after: (&'a str, Option<&'a str>),
    pub image: &'a str,
    /// Extra environment (the operator's --agent-env).
    pub agent_env: &'a [(String, String)],
    /// The repository's KmipServer with its active master key id, for a KMIP key.
    pub kmip: Option<(&'a KmipServer, &'a str)>,
    /// This cluster's id (the operator's --cluster-id; empty: none).
    pub cluster: &'a str,
}

/// Why a retention pod cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetentionPodError {
    #[error("{0}")]
    Pod(#[from] PodError),
    #[error("{0}.credentialsSecret is not set, or the destination has no store credentials")]
    NoCredentials(String),
}

/// The repository a plan prunes: its destination, key, retention, field and scope.
fn repository<'a>(
    p: &RetentionPlan<'a>,
) -> (
    &'a Destination,
    &'a Encryption,
    Option<&'a Retention>,
    String,
    Vec<String>,
) {
    let job = p.job;
    let job_tag = format!(
        "{JOB_TAG}={}/{}",
        job.namespace().unwrap_or_default(),
        job.name_any()
    );
    match p.copy {
        // A copy holds the job's snapshots whatever their trigger (as its copy pods scope it).
        Some(c) => (
            &c.destination,
            &c.encryption,
            c.retention.as_ref(),
            format!("copy {}: retention", c.name),
            vec![job_tag],
        ),
        None => (
            &job.spec.destination,
            &job.spec.encryption,
            job.spec.retention.as_ref(),
            "spec.retention".to_string(),
            vec![job_tag, format!("{TRIGGER_TAG}={TRIGGER_SCHEDULE}")],
        ),
    }
}

/// `snapcrypt agent prune` over the repository, reached with its retention Secret in place of
/// the destination's own, scoped as that repository's other retention passes are, the
/// Snapshot it comes after protected; owned by the job, as the job's agent, under its
/// runTimeout.
pub fn retention_pod(p: &RetentionPlan) -> Result<Pod, RetentionPodError> {
    let job = p.job;
    let owner = job.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = job.uid().ok_or(PodError::NoOwner)?;
    let (destination, encryption, retention, field, scope) = repository(p);
    let (retention, destination) = retention
        .and_then(|r| {
            let d = with_credentials(destination, r.credentials_secret.as_deref()?)?;
            Some((r, d))
        })
        .ok_or(RetentionPodError::NoCredentials(field))?;
    let copy = p.copy.map(|c| c.name.as_str());
    let name = retention_pod_name(&job.name_any(), copy, p.run);
    let mut args = vec!["agent".into(), "prune".into()];
    args.extend(retention_flags(retention));
    args.extend(
        scope
            .into_iter()
            .flat_map(|t| ["--prune-tag".to_string(), t]),
    );
    if let Some(id) = p.after.1 {
        args.extend(["--protect".into(), id.to_string()]);
    }
    if !p.cluster.is_empty() && copy.is_none() {
        args.extend(["--cluster".into(), p.cluster.to_string()]);
    }
    let annotations = std::collections::BTreeMap::from([
        (RETENTION_SNAPSHOT.to_string(), p.after.0.to_string()),
        (RETENTION_RUN.to_string(), p.run.to_string()),
    ]);
    let repo = AgentRepo {
        destination: &destination,
        encryption,
        ..AgentRepo::of_job(job)
    };
    let mut pod = job_agent_pod(JobAgentPod {
        repo,
        kmip: p.kmip,
        image: p.image,
        agent_env: p.agent_env,
        name: name.clone(),
        namespace: job.namespace(),
        owner,
        component: "retention",
        run_label: (RETENTION_JOB_UID_LABEL, uid),
        annotations: Some(annotations),
        object_env: ("SNAPCRYPT_RETENTION", &name),
        args,
        volumes: Vec::new(),
        mounts: Vec::new(),
        target: None,
    })?;
    if let Some(c) = copy {
        pod.metadata
            .labels
            .get_or_insert_default()
            .insert(RETENTION_COPY_LABEL.into(), c.to_string());
    }
    Ok(pod)
}

/// A retention pod's run number (its annotation).
pub fn retention_run_of(pod: &Pod) -> Option<u64> {
    pod.annotations().get(RETENTION_RUN)?.parse().ok()
}

/// The copy whose repository a retention pod prunes (None: the job's own).
pub fn retention_copy_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(RETENTION_COPY_LABEL).map(String::as_str)
}

/// `status` after the finished run of `pod` (Succeeded, or Failed with why).
pub fn after_retention(
    mut status: RetentionRun,
    pod: &Pod,
    step: &RunStep<RetentionResult>,
) -> RetentionRun {
    status.last_run_pod = Some(pod.name_any());
    status.last_run_snapshot = pod.annotations().get(RETENTION_SNAPSHOT).cloned();
    match step {
        RunStep::Pending { .. } | RunStep::Running { .. } => {}
        RunStep::Succeeded { result, finished } => {
            status.result = CheckResult::Succeeded;
            status.last_run_time = finished.clone();
            status.consecutive_failures = 0;
            status.kept = result.kept as u64;
            status.forgotten = result.forgotten_total as u64;
            status.bytes_freed = result.bytes_freed;
            status.message = None;
        }
        RunStep::ResultUnreadable { message, finished } | RunStep::Failed { message, finished } => {
            status.result = CheckResult::Failed;
            status.last_run_time = finished.clone();
            status.consecutive_failures += 1;
            status.message = Some(message.clone());
        }
    }
    status
}
