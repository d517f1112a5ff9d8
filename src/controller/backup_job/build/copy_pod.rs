//! The copy pods of a BackupJob's copies (spec.copies[]), and what a finished run means for
//! the copy's status. Pure.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};

use crate::api::agent::CopyResult;
use crate::api::copy::{CopySpec, CopyStatus};
use crate::api::snapshot::JOB_TAG;
use crate::api::verification::CheckResult;
use crate::api::{BackupJob, KmipServer, Snapshot};
use crate::controller::agent::pod::{
    Access, AgentRepo, JobAgentPod, PodError, job_agent_pod, repository_access,
};
use crate::controller::agent::run::RunStep;
use crate::controller::agent::target::as_copy_target;
use crate::controller::job_spec::retention::{copy_retention_secret, retention_flags};
use crate::controller::names::{
    COPY_JOB_UID_LABEL, COPY_LABEL, COPY_RUN, COPY_SNAPSHOT, SCHEDULED_TIME, copy_pod_name,
};

/// Everything a copy pod depends on, decided before building.
#[derive(Clone, Debug)]
pub struct CopyPlan<'a> {
    pub job: &'a BackupJob,
    pub copy: &'a CopySpec,
    /// The run's number (the copy's runs so far, plus one).
    pub run: u64,
    /// The newest successful Snapshot of the job: the copy must hold it when the run ends.
    pub snapshot: &'a Snapshot,
    /// The scheduled time a scheduled copy runs for.
    pub scheduled: Option<jiff::Timestamp>,
    pub image: &'a str,
    /// Extra environment (the operator's --agent-env).
    pub agent_env: &'a [(String, String)],
    /// The job's KmipServer with its active master key id, for a KMIP job.
    pub kmip: Option<(&'a KmipServer, &'a str)>,
    /// The copy's, for a copy under a KMIP master key.
    pub copy_kmip: Option<(&'a KmipServer, &'a str)>,
}

/// Why a copy pod cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyPodError {
    #[error("{0}")]
    Pod(#[from] PodError),
    #[error("Snapshot {0} has no repository snapshot id in its status")]
    NoSnapshotId(String),
}

/// `snapcrypt agent copy` from the job's repository (its key, read-write mount for the
/// reader's lock) into the copy's (its own key and credentials, in their `--to` forms), every
/// snapshot of the job the copy's retention keeps, then that retention applied there; owned by
/// the job, as the job's agent, under its runTimeout.
pub fn copy_pod(p: &CopyPlan) -> Result<Pod, CopyPodError> {
    let job = p.job;
    let owner = job.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = job.uid().ok_or(PodError::NoOwner)?;
    let snapshot = p.snapshot.name_any();
    let id = p
        .snapshot
        .status
        .as_ref()
        .and_then(|s| s.repository_snapshot_id.clone())
        .ok_or_else(|| CopyPodError::NoSnapshotId(snapshot.clone()))?;
    let name = copy_pod_name(&job.name_any(), &p.copy.name, p.run);
    let job_tag = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    let mut args = vec![
        "agent".into(),
        "copy".into(),
        "--tag".into(),
        format!("{JOB_TAG}={job_tag}"),
        "--must-hold".into(),
        id,
    ];
    if let Some(r) = p.copy.retention.as_ref().or(job.spec.retention.as_ref()) {
        args.extend(retention_flags(r));
    }
    // Least privilege: the copy's retention pod prunes it, with credentials this pod lacks.
    if copy_retention_secret(p.copy).is_some() {
        args.push("--no-prune".into());
    }
    let target = repository_access(
        &p.copy.destination,
        &p.copy.encryption,
        p.copy_kmip,
        Access {
            repo_read_only: false,
            rewrap: false,
        },
    )?;
    let mut annotations = std::collections::BTreeMap::from([
        (COPY_SNAPSHOT.to_string(), snapshot),
        (COPY_RUN.to_string(), p.run.to_string()),
    ]);
    if let Some(t) = p.scheduled {
        annotations.insert(SCHEDULED_TIME.into(), t.to_string());
    }
    let mut pod = job_agent_pod(JobAgentPod {
        repo: AgentRepo::of_job(job),
        kmip: p.kmip,
        image: p.image,
        agent_env: p.agent_env,
        name: name.clone(),
        namespace: job.namespace(),
        owner,
        component: "copy",
        run_label: (COPY_JOB_UID_LABEL, uid),
        annotations: Some(annotations),
        object_env: ("SNAPCRYPT_COPY", &name),
        args,
        volumes: Vec::new(),
        mounts: Vec::new(),
        target: Some(as_copy_target(target)),
    })?;
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert(COPY_LABEL.into(), p.copy.name.clone());
    Ok(pod)
}

/// A copy pod's run number (its annotation).
pub fn run_of(pod: &Pod) -> Option<u64> {
    pod.annotations().get(COPY_RUN)?.parse().ok()
}

/// The copy a pod writes (its label).
pub fn copy_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(COPY_LABEL).map(String::as_str)
}

/// `status` after the finished run of `pod` (Succeeded, or Failed with why), given the
/// completion time of the Snapshot it was started for.
pub fn after_run(
    mut status: CopyStatus,
    pod: &Pod,
    step: &RunStep<CopyResult>,
    snapshot_completed: Option<Time>,
) -> CopyStatus {
    let snapshot = pod.annotations().get(COPY_SNAPSHOT).cloned();
    status.last_run_pod = Some(pod.name_any());
    status.last_run_snapshot = snapshot.clone();
    match step {
        RunStep::Pending { .. } | RunStep::Running { .. } => {}
        RunStep::Succeeded { result, finished } => {
            status.result = CheckResult::Succeeded;
            status.last_copied_snapshot = snapshot;
            status.last_copied_snapshot_time = snapshot_completed;
            status.last_copy_time = finished.clone();
            status.last_run_time = finished.clone();
            status.consecutive_failures = 0;
            status.snapshots_copied = result.snapshots_copied;
            status.packs_copied = result.packs_copied;
            status.bytes_copied = result.bytes_copied;
            status.key_id = Some(result.key_id.clone());
            status.repository_id = Some(result.target_id.clone());
            status.message = None;
        }
        RunStep::ResultUnreadable { message, finished } | RunStep::Failed { message, finished } => {
            status.result = CheckResult::Failed;
            status.last_run_time = finished.clone();
            status.consecutive_failures += 1;
            status.snapshots_copied = 0;
            status.packs_copied = 0;
            status.bytes_copied = 0;
            status.message = Some(message.clone());
        }
    }
    status
}
