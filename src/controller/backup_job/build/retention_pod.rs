//! The retention pods of a BackupJob with spec.retention.credentialsSecret (least
//! privilege), and what a finished run means for status.retention. Pure.

use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};

use crate::api::agent::RetentionResult;
use crate::api::retention::RetentionRun;
use crate::api::snapshot::{JOB_TAG, TRIGGER_SCHEDULE, TRIGGER_TAG};
use crate::api::verification::CheckResult;
use crate::api::{BackupJob, KmipServer, Snapshot};
use crate::controller::agent::pod::{AgentRepo, JobAgentPod, PodError, job_agent_pod};
use crate::controller::agent::run::RunStep;
use crate::controller::job_spec::retention::{retention_flags, with_credentials};
use crate::controller::names::{
    RETENTION_JOB_UID_LABEL, RETENTION_RUN, RETENTION_SNAPSHOT, retention_pod_name,
};

/// Everything a retention pod depends on, decided before building.
#[derive(Clone, Debug)]
pub struct RetentionPlan<'a> {
    pub job: &'a BackupJob,
    /// The run's number (the job's retention runs so far, plus one).
    pub run: u64,
    /// The job's newest successful Snapshot: never forgotten by this run.
    pub snapshot: &'a Snapshot,
    pub image: &'a str,
    /// Extra environment (the operator's --agent-env).
    pub agent_env: &'a [(String, String)],
    /// The job's KmipServer with its active master key id, for a KMIP job.
    pub kmip: Option<(&'a KmipServer, &'a str)>,
    /// This cluster's id (the operator's --cluster-id; empty: none).
    pub cluster: &'a str,
}

/// Why a retention pod cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetentionPodError {
    #[error("{0}")]
    Pod(#[from] PodError),
    #[error(
        "spec.retention.credentialsSecret is not set, or the destination has no store credentials"
    )]
    NoCredentials,
}

/// `snapcrypt agent prune` over the job's repository, reached with the retention Secret in
/// place of the destination's own, scoped as the snapshot pods' retention is (the job's
/// scheduled snapshots), the newest successful one protected; owned by the job, as the job's
/// agent, under its runTimeout.
pub fn retention_pod(p: &RetentionPlan) -> Result<Pod, RetentionPodError> {
    let job = p.job;
    let owner = job.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = job.uid().ok_or(PodError::NoOwner)?;
    let retention = job
        .spec
        .retention
        .as_ref()
        .ok_or(RetentionPodError::NoCredentials)?;
    let destination = retention
        .credentials_secret
        .as_deref()
        .and_then(|s| with_credentials(&job.spec.destination, s))
        .ok_or(RetentionPodError::NoCredentials)?;
    let name = retention_pod_name(&job.name_any(), p.run);
    let job_tag = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    let mut args = vec!["agent".into(), "prune".into()];
    args.extend(retention_flags(retention));
    args.extend([
        "--prune-tag".into(),
        format!("{JOB_TAG}={job_tag}"),
        "--prune-tag".into(),
        format!("{TRIGGER_TAG}={TRIGGER_SCHEDULE}"),
    ]);
    if let Some(id) = p
        .snapshot
        .status
        .as_ref()
        .and_then(|s| s.repository_snapshot_id.clone())
    {
        args.extend(["--protect".into(), id]);
    }
    if !p.cluster.is_empty() {
        args.extend(["--cluster".into(), p.cluster.to_string()]);
    }
    let annotations = std::collections::BTreeMap::from([
        (RETENTION_SNAPSHOT.to_string(), p.snapshot.name_any()),
        (RETENTION_RUN.to_string(), p.run.to_string()),
    ]);
    let repo = AgentRepo {
        destination: &destination,
        ..AgentRepo::of_job(job)
    };
    Ok(job_agent_pod(JobAgentPod {
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
    })?)
}

/// A retention pod's run number (its annotation).
pub fn retention_run_of(pod: &Pod) -> Option<u64> {
    pod.annotations().get(RETENTION_RUN)?.parse().ok()
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
