//! The deadlines the operator itself holds a run's pod to before it finishes, the same for
//! every kind of run: Pending longer than `spec.placement.pendingTimeout` (unschedulable, a
//! volume that does not attach, an image that does not pull), or on a node lost for longer
//! than `spec.placement.nodeLostTimeout`. The third, `runTimeout`, is the kubelet's (the pod's
//! activeDeadlineSeconds). With these, no run stays in a phase that is not final forever.
//! Pure.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use super::node::node_lost;
use super::run::RunStep;
use crate::api::backup_job::BackupJob;
use crate::controller::job_spec::consistency::placement_timeout;

/// The default of `spec.placement.pendingTimeout`.
pub const DEFAULT_PENDING_TIMEOUT: Duration = Duration::from_secs(600);
/// The default of `spec.placement.nodeLostTimeout`: Kubernetes' own pod eviction timeout.
pub const DEFAULT_NODE_LOST_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a pod not running yet is looked at again: a pod stuck Pending may not change.
const PENDING_RECHECK: Duration = Duration::from_secs(30);

/// What the deadlines say of a run's pod.
#[derive(Debug, PartialEq)]
pub enum Deadline {
    /// One was overrun: the attempt is over, for this reason.
    Overrun(String),
    /// None was: look again after this long (None: on the next change of the pod).
    Within(Option<Duration>),
}

/// Judge `pod` of a `what` run ("snapshot", "restore"), in state `step`, of `job` (its
/// defaults where the job is gone), on `node` (None: unknown), at `now`.
pub fn deadline<R>(
    pod: &Pod,
    step: &RunStep<R>,
    job: Option<&BackupJob>,
    node: Option<&Node>,
    now: jiff::Timestamp,
    what: &str,
) -> Deadline {
    let limit = |pick: fn(&crate::api::backup_job::Placement) -> Option<&str>, default| {
        job.map_or(default, |j| placement_timeout(j, pick, default))
    };
    let pending = match step {
        RunStep::Pending { message } => Some(message),
        RunStep::Running { .. } => None,
        _ => return Deadline::Within(None),
    };
    let mut recheck = None;
    if let Some(node) = node {
        let lost = limit(
            |p| p.node_lost_timeout.as_deref(),
            DEFAULT_NODE_LOST_TIMEOUT,
        );
        match node_lost(node, lost, now) {
            (Some(why), _) => {
                return Deadline::Overrun(format!("{what} pod {}: {why}", pod.name_any()));
            }
            (None, again) => recheck = Some(again),
        }
    }
    if let Some(message) = pending {
        let limit = limit(|p| p.pending_timeout.as_deref(), DEFAULT_PENDING_TIMEOUT);
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if created.is_some_and(|c| now.duration_since(c).unsigned_abs() > limit) {
            return Deadline::Overrun(format!(
                "{what} pod {} stayed Pending for over {}s (spec.placement.pendingTimeout){}",
                pod.name_any(),
                limit.as_secs(),
                message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
        recheck = Some(recheck.map_or(PENDING_RECHECK, |r: Duration| r.min(PENDING_RECHECK)));
    }
    Deadline::Within(recheck)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agent::SnapshotResult;
    use crate::controller::fixtures;

    fn at(t: &str) -> jiff::Timestamp {
        t.parse().expect("time")
    }

    fn pending() -> RunStep<SnapshotResult> {
        RunStep::Pending {
            message: Some("Unschedulable: 0/2 nodes are available".into()),
        }
    }

    #[test]
    fn a_pod_pending_too_long_overruns_whatever_its_job() {
        let mut pod = fixtures::agent_pod(1, "  phase: Pending");
        pod.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at("2026-11-27T03:00:00Z")),
        );
        let job = fixtures::job("placement: {pendingTimeout: 90s}");
        assert_eq!(
            deadline(
                &pod,
                &pending(),
                Some(&job),
                None,
                at("2026-11-27T03:01:00Z"),
                "restore"
            ),
            Deadline::Within(Some(PENDING_RECHECK))
        );
        let Deadline::Overrun(why) = deadline(
            &pod,
            &pending(),
            Some(&job),
            None,
            at("2026-11-27T03:02:00Z"),
            "restore",
        ) else {
            panic!("within");
        };
        assert!(
            why.starts_with("restore pod ")
                && why.contains(
                    "stayed Pending for over 90s (spec.placement.pendingTimeout): Unschedulable"
                ),
            "{why}"
        );
        // The job gone: the default, 10m.
        assert!(matches!(
            deadline(
                &pod,
                &pending(),
                None,
                None,
                at("2026-11-27T03:09:00Z"),
                "restore"
            ),
            Deadline::Within(_)
        ));
        assert!(matches!(
            deadline(
                &pod,
                &pending(),
                None,
                None,
                at("2026-11-27T03:11:00Z"),
                "restore"
            ),
            Deadline::Overrun(_)
        ));
    }

    #[test]
    fn a_finished_pod_has_no_deadline() {
        let pod = fixtures::agent_pod(1, "  phase: Failed");
        let step: RunStep<SnapshotResult> = RunStep::Failed {
            message: "x".into(),
            finished: None,
        };
        assert_eq!(
            deadline(
                &pod,
                &step,
                None,
                None,
                at("2030-01-01T00:00:00Z"),
                "snapshot"
            ),
            Deadline::Within(None)
        );
    }
}
