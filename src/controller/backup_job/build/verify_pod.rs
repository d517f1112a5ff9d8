//! The verify pod of a BackupJob's scheduled data read (spec.verification.readData), and what
//! its run means for status. Pure.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};

use crate::api::agent::VerifyResult;
use crate::api::verification::{CheckResult, VerificationRun};
use crate::api::{BackupJob, KmipServer};
use crate::controller::agent::pod::{AgentRepo, JobAgentPod, PodError, job_agent_pod};
use crate::controller::agent::run::RunStep;
use crate::controller::names::{SCHEDULED_TIME, VERIFY_JOB_UID_LABEL, verify_pod_name};
use crate::engine::verify::DataSubset;

/// Everything the verify pod depends on, decided before building.
#[derive(Clone, Debug)]
pub struct VerifyPlan<'a> {
    pub job: &'a BackupJob,
    pub scheduled: jiff::Timestamp,
    pub subset: DataSubset,
    pub image: &'a str,
    /// Extra environment (the operator's --agent-env).
    pub agent_env: &'a [(String, String)],
    /// The KmipServer of a KMIP job (or copy), with its active master key id.
    pub kmip: Option<(&'a KmipServer, &'a str)>,
    /// The copy to read instead of the job's repository (spec.verification.copy).
    pub copy: Option<&'a crate::api::copy::CopySpec>,
}

/// The pack group a job's next run reads: runs so far mod n, plus one, of
/// n = ceil(100 / percent) groups.
pub fn next_subset(percent: u8, runs: u64) -> DataSubset {
    let n = 100u32.div_ceil(u32::from(percent.clamp(1, 100)));
    DataSubset {
        k: (runs % u64::from(n)) as u32 + 1,
        n,
    }
}

/// `snapcrypt agent verify --read-data-subset k/n` with the job's repository and key, owned by
/// the job, under its runTimeout.
pub fn verify_pod(p: &VerifyPlan) -> Result<Pod, PodError> {
    let job = p.job;
    let owner = job.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = job.uid().ok_or(PodError::NoOwner)?;
    let name = verify_pod_name(&job.name_any(), p.scheduled);
    let mut repo = AgentRepo::of_job(job);
    if let Some(c) = p.copy {
        repo.destination = &c.destination;
        repo.encryption = &c.encryption;
    }
    job_agent_pod(JobAgentPod {
        repo,
        kmip: p.kmip,
        image: p.image,
        agent_env: p.agent_env,
        name: name.clone(),
        namespace: job.namespace(),
        owner,
        component: "verify",
        run_label: (VERIFY_JOB_UID_LABEL, uid),
        annotations: Some([(SCHEDULED_TIME.to_string(), p.scheduled.to_string())].into()),
        object_env: ("SNAPCRYPT_VERIFY", &name),
        args: vec![
            "agent".into(),
            "verify".into(),
            "--read-data-subset".into(),
            p.subset.to_string(),
        ],
        volumes: Vec::new(),
        mounts: Vec::new(),
        target: None,
    })
}

/// A finished verify pod's run as status records it; `None` while it has not finished.
pub fn finished_run(pod: &Pod, step: &RunStep<VerifyResult>) -> Option<VerificationRun> {
    let started = pod.metadata.creation_timestamp.clone();
    let scheduled = pod
        .annotations()
        .get(SCHEDULED_TIME)
        .and_then(|t| t.parse().ok())
        .map(Time);
    let subset = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.as_ref())
        .and_then(|a| {
            a.iter()
                .skip_while(|x| *x != "--read-data-subset")
                .nth(1)
                .cloned()
        })
        .unwrap_or_default();
    let duration = |finished: &Option<Time>| match (&started, finished) {
        (Some(s), Some(f)) => Some(f.0.duration_since(s.0).as_secs_f64().max(0.0)),
        _ => None,
    };
    let base = VerificationRun {
        time: started.clone(),
        scheduled_time: scheduled,
        subset,
        pod: Some(pod.name_any()),
        ..Default::default()
    };
    match step {
        RunStep::Pending { .. } | RunStep::Running { .. } => None,
        RunStep::Succeeded { result, finished } => Some(VerificationRun {
            result: if result.problem_count == 0 {
                CheckResult::Succeeded
            } else {
                CheckResult::Failed
            },
            packs_read: result.packs_read,
            packs_total: result.packs,
            bytes_read: result.bytes_read,
            problem_count: result.problem_count,
            problems: result.problems.clone(),
            duration_seconds: duration(finished),
            subset: result.subset.clone().unwrap_or(base.subset.clone()),
            ..base
        }),
        RunStep::ResultUnreadable { message, finished } | RunStep::Failed { message, finished } => {
            Some(VerificationRun {
                result: CheckResult::Failed,
                message: Some(message.clone()),
                duration_seconds: duration(finished),
                ..base
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_rotate_so_every_pack_is_read_within_n_runs() {
        assert_eq!(next_subset(10, 0), DataSubset { k: 1, n: 10 });
        assert_eq!(next_subset(10, 9), DataSubset { k: 10, n: 10 });
        assert_eq!(next_subset(10, 10), DataSubset { k: 1, n: 10 });
        assert_eq!(next_subset(30, 5), DataSubset { k: 2, n: 4 });
        assert_eq!(next_subset(100, 7), DataSubset::ALL);
        // Every pack id falls in exactly one of the n groups.
        for id in ["00000000ab", "ffffffff00", "7a3b9c10ff", "zz"] {
            let n = 7;
            let hits = (1..=n)
                .filter(|k| DataSubset { k: *k, n }.contains(id))
                .count();
            assert_eq!(hits, 1, "{id}");
        }
    }
}
