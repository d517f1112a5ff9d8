//! Decide (pure): what the current pod's state means for the Snapshot, whether an attempt may
//! start, what a lost status write would have recorded, and which finished Snapshots the
//! job's retention pass forgot.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;

use super::build::pod::recorded_capture;
use super::build::status::{Consistency, Step};
use super::build::volume::{
    VolumeState, attempt_of, overdue, recorded_member, source_claim, volume_state,
};
use super::dereference::World;
use super::{CAPTURE_RECHECK, QUEUE_RECHECK, RECHECK};
use crate::api::agent::SnapshotResult;
use crate::api::snapshot::{CaptureStatus, MemberChoice, RunPhase};
use crate::api::{BackupJob, Snapshot, SnapshotStatus};
use crate::controller::agent::deadline::{Deadline, deadline};
use crate::controller::agent::node::{claims_mounted, has_ended};
use crate::controller::agent::run::{RunStep, run_step};
use crate::controller::job_spec::consistency::{Capture, DEFAULT_VOLUME_SNAPSHOT_TIMEOUT, capture};

use crate::controller::names::ATTEMPT_LABEL;
use crate::controller::reason::Reason;

/// What a reconcile does next.
// One Plan exists per reconcile, briefly: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub(super) enum Plan {
    /// Write this status; look again after the duration (None: on the next change).
    Step(Step, Option<Duration>),
    /// Start attempt `attempt`: choose a member, then create its pod (or, in mode
    /// volumeSnapshot, its VolumeSnapshot).
    Start {
        attempt: u32,
        retry_after: Option<String>,
    },
    /// Attempt `attempt`'s VolumeSnapshot `vs` is ready (cut at `cut`): restore it into a
    /// claim and create the pod that copies that claim.
    StartFromVolume {
        attempt: u32,
        vs: Box<DynamicObject>,
        cut: Option<Time>,
    },
}

/// Decide from the current pod or VolumeSnapshot (or their absence) and the other Snapshots
/// of the job. Pure.
pub(super) fn plan(
    snap: &Snapshot,
    prev: &SnapshotStatus,
    world: &World,
    now: jiff::Timestamp,
) -> Plan {
    let ns = snap.namespace().unwrap_or_default();
    let Some(job) = &world.job else {
        return Plan::Step(
            Step::Wait {
                reason: Reason::BackupJobNotFound,
                message: format!(
                    "spec.backupJobRef.name {:?}: BackupJob not found in namespace {ns}",
                    snap.spec.backup_job_ref.name
                ),
            },
            Some(RECHECK),
        );
    };
    let current = current_pod(&world.pods);
    let failed = |message: String, finished| after_failure(prev.attempts, job, message, finished);
    // A VolumeSnapshot newer than the newest pod: that attempt is capturing the volume.
    let pod_attempt = current.and_then(attempt_of).unwrap_or(0);
    if let Some((attempt, vs)) = world
        .volumes
        .iter()
        .filter_map(|v| Some((attempt_of(v)?, v)))
        .max_by_key(|(n, _)| *n)
        .filter(|(n, _)| *n > pod_attempt)
    {
        return capture_under_way(attempt, vs, job, now, failed);
    }
    if let Some(pod) = current {
        return pod_plan(pod, prev, job, world, now, failed);
    }
    if let Some(plan) = gone_pod_plan(prev, failed) {
        return plan;
    }
    // Not started: wait for any other unfinished Snapshot of the job that is running or older.
    let me = (
        snap.metadata.creation_timestamp.as_ref().map(|t| t.0),
        snap.name_any(),
    );
    let blocker = world
        .siblings
        .iter()
        .filter(|s| {
            !matches!(
                s.status.as_ref().map(|st| st.phase),
                Some(RunPhase::Succeeded | RunPhase::Failed)
            )
        })
        .filter(|s| {
            s.has_started()
                || (
                    s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    s.name_any(),
                ) < me
        })
        .min_by_key(|s| {
            (
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                s.name_any(),
            )
        });
    if let Some(b) = blocker {
        return Plan::Step(
            Step::Wait {
                reason: Reason::WaitingForOtherSnapshot,
                message: format!(
                    "waiting for Snapshot {} of BackupJob {} to finish (one Snapshot of a job runs at a time)",
                    b.name_any(),
                    job.name_any()
                ),
            },
            Some(QUEUE_RECHECK),
        );
    }
    Plan::Start {
        attempt: prev.attempts + 1,
        retry_after: None,
    }
}

/// What the current attempt's pod says: its step, or the attempt's end (with `failed`) when a
/// deadline is overrun. A pod that ends without its result after its agent reported one
/// through the API (status.agentResult) has finished its backup. Pure.
fn pod_plan(
    pod: &Pod,
    prev: &SnapshotStatus,
    job: &BackupJob,
    world: &World,
    now: jiff::Timestamp,
    failed: impl Fn(String, Option<Time>) -> Plan,
) -> Plan {
    let reported = reported_result(prev, &pod.name_any());
    let step = match (
        run_step::<SnapshotResult>(pod, "snapshot"),
        reported.clone(),
    ) {
        // Ended without its termination message after reporting a complete backup: stopped
        // at its deadline or killed during retention.
        (RunStep::Failed { finished, .. }, Some(result)) => RunStep::Succeeded { result, finished },
        (step, _) => step,
    };
    let over = deadline(pod, &step, Some(job), world.node.as_ref(), now, "snapshot");
    let recheck = match (over, reported) {
        // Its node lost during retention: the backup is complete all the same.
        (Deadline::Overrun(_), Some(result)) => {
            return Plan::Step(
                Step::Succeeded {
                    result,
                    finished: None,
                },
                None,
            );
        }
        (Deadline::Overrun(why), None) => return failed(why, None),
        (Deadline::Within(recheck), _) => recheck,
    };
    match step {
        RunStep::Pending { message } => Plan::Step(Step::PodPending { message }, recheck),
        RunStep::Running { started } => Plan::Step(Step::PodRunning { started }, recheck),
        RunStep::Succeeded { result, finished } => {
            Plan::Step(Step::Succeeded { result, finished }, None)
        }
        RunStep::ResultUnreadable { message, finished } => Plan::Step(
            Step::Failed {
                reason: Reason::ResultUnreadable,
                message,
                finished,
            },
            None,
        ),
        RunStep::Failed { message, finished } => failed(message, finished),
    }
}

/// The attempt's pod is gone: a success if its agent reported a complete backup first, else
/// the attempt's end (with `failed`); None if no attempt has made a pod. Pure.
fn gone_pod_plan(
    prev: &SnapshotStatus,
    failed: impl Fn(String, Option<Time>) -> Plan,
) -> Option<Plan> {
    if prev.attempts > 0
        && let Some(result) = prev
            .pod_name
            .as_deref()
            .and_then(|pod| reported_result(prev, pod))
    {
        // Deleted (or its node's pods deleted) after reporting a complete backup.
        return Some(Plan::Step(
            Step::Succeeded {
                result,
                finished: None,
            },
            None,
        ));
    }
    if prev.attempts > 0 && prev.pod_name.is_some() {
        return Some(failed(
            format!(
                "pod {} disappeared before it finished (deleted, or its node was lost)",
                prev.pod_name.clone().unwrap_or_default()
            ),
            None,
        ));
    }
    None
}

/// The result the agent of `pod` reported through the API once its backup was complete
/// (status.agentResult), if it did: only that pod's, never an earlier attempt's.
fn reported_result(prev: &SnapshotStatus, pod: &str) -> Option<SnapshotResult> {
    prev.agent_result
        .as_ref()
        .filter(|r| r.pod == pod)
        .and_then(|r| SnapshotResult::parse(&r.result))
}

/// The pod of the newest attempt among `pods`.
pub(super) fn current_pod(pods: &[Pod]) -> Option<&Pod> {
    pods.iter().max_by_key(|p| {
        p.labels()
            .get(ATTEMPT_LABEL)
            .and_then(|a| a.parse::<u32>().ok())
    })
}

/// What attempt `attempt`'s VolumeSnapshot `vs` says: start the pod from it, wait, or fail
/// the attempt (with `failed`). Pure.
fn capture_under_way(
    attempt: u32,
    vs: &DynamicObject,
    job: &BackupJob,
    now: jiff::Timestamp,
    failed: impl Fn(String, Option<Time>) -> Plan,
) -> Plan {
    match volume_state(vs) {
        VolumeState::Failed(e) => failed(format!("VolumeSnapshot {}: {e}", vs.name_any()), None),
        VolumeState::Ready { cut } => Plan::StartFromVolume {
            attempt,
            vs: Box::new(vs.clone()),
            cut,
        },
        VolumeState::Pending => {
            let capture = capture(&job.spec.source);
            let timeout = match &capture {
                Capture::VolumeSnapshot { timeout, .. } => *timeout,
                _ => DEFAULT_VOLUME_SNAPSHOT_TIMEOUT,
            };
            match overdue(vs, timeout, now) {
                Some(message) => failed(message, None),
                None => Plan::Step(capturing(attempt, vs, &capture), Some(CAPTURE_RECHECK)),
            }
        }
    }
}

/// After attempt `attempts` failed with `message`: the next attempt, or give up once
/// `spec.backoffLimit` retries are spent. Pure.
pub(super) fn after_failure(
    attempts: u32,
    job: &BackupJob,
    message: String,
    finished: Option<Time>,
) -> Plan {
    if attempts <= job.spec.backoff_limit {
        Plan::Start {
            attempt: attempts + 1,
            retry_after: Some(message),
        }
    } else {
        Plan::Step(
            Step::Failed {
                reason: Reason::SnapshotFailed,
                message: if attempts > 1 {
                    format!(
                        "{message} (gave up after {attempts} attempts, spec.backoffLimit {})",
                        job.spec.backoff_limit
                    )
                } else {
                    message
                },
                finished,
            },
            None,
        )
    }
}

/// What a volume capture leaves to delete.
#[derive(Debug, Default)]
pub(super) struct Leftovers<'a> {
    pub volumes: Vec<&'a DynamicObject>,
    pub clones: Vec<&'a PersistentVolumeClaim>,
    /// Finished pods that mount one of `clones`: while they exist the claim stays in use
    /// (before 1.21 the PVC protection counts finished pods too).
    pub pods: Vec<&'a Pod>,
}

/// The VolumeSnapshots, restored claims and the finished pods reading them to delete: every
/// one once the Snapshot has finished, else those of attempts before `current`. Pure.
pub(super) fn leftover_captures(world: &World, finished: bool, current: u32) -> Leftovers<'_> {
    fn done<K: kube::Resource>(obj: &K, finished: bool, current: u32) -> bool {
        obj.meta().deletion_timestamp.is_none()
            && (finished || attempt_of(obj).is_some_and(|n| n < current))
    }
    let clones: Vec<&PersistentVolumeClaim> = world
        .clones
        .iter()
        .filter(|c| done(*c, finished, current))
        .collect();
    let names: BTreeSet<String> = clones.iter().map(|c| c.name_any()).collect();
    let pods = world
        .pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| has_ended(p))
        .filter(|p| claims_mounted(p).any(|c| names.contains(c)))
        .collect();
    Leftovers {
        volumes: world
            .volumes
            .iter()
            .filter(|v| done(*v, finished, current))
            .collect(),
        clones,
        pods,
    }
}

/// The status step of attempt `attempt` waiting for its VolumeSnapshot `vs`. Pure.
pub(super) fn capturing(attempt: u32, vs: &DynamicObject, capture: &Capture) -> Step {
    let (member, _) = recorded_member(vs);
    let claim = source_claim(vs).unwrap_or_default();
    Step::Capturing {
        attempt,
        message: format!(
            "waiting for VolumeSnapshot {} of claim {claim} (member {}) to be readyToUse",
            vs.name_any(),
            member.pod
        ),
        member,
        capture: CaptureStatus {
            mode: capture.mode(),
            attempt,
            volume_snapshot: Some(vs.name_any()),
            clone_claim: None,
            point_in_time: None,
            released: false,
            lock: None,
        },
        consistency: Consistency::of(capture),
    }
}

/// Fill what a lost (or not yet seen) status write would have recorded (attempt, pod, member,
/// capture) from the newest snapshot pod, which carries it in its labels and annotations. Pure.
pub(super) fn recover_from_pods(mut prev: SnapshotStatus, pods: &[Pod]) -> SnapshotStatus {
    use crate::controller::names::{
        MEMBER_ANNOTATION, MEMBER_REASON_ANNOTATION, MEMBER_ROLE_ANNOTATION,
    };
    let newest = pods
        .iter()
        .filter_map(|p| {
            let n = p.labels().get(ATTEMPT_LABEL)?.parse::<u32>().ok()?;
            Some((n, p))
        })
        .max_by_key(|(n, _)| *n);
    // A newer attempt than the status knows; or the status's own attempt without its pod (a
    // status written while quiescing, before the pod existed, read back after the pod's
    // creation: seen in CI as Running with no pod name).
    if let Some((n, pod)) = newest
        && (n > prev.attempts || (n == prev.attempts && prev.pod_name.is_none()))
    {
        let a = pod.annotations();
        if let Some(mut recorded) = recorded_capture(pod) {
            // The lock is not on the pod: the status's own, for the same attempt.
            recorded.lock = prev
                .capture
                .as_ref()
                .filter(|c| c.attempt == recorded.attempt)
                .and_then(|c| c.lock.clone());
            prev.capture = Some(recorded);
        }
        prev.attempts = n;
        prev.pod_name = Some(pod.name_any());
        if let Some(member) = a.get(MEMBER_ANNOTATION) {
            prev.member = Some(MemberChoice {
                pod: member.clone(),
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                role: a.get(MEMBER_ROLE_ANNOTATION).cloned(),
                reason: a.get(MEMBER_REASON_ANNOTATION).cloned().unwrap_or_default(),
            });
        }
    }
    prev
}

/// The finished Snapshots the job made whose repository snapshot the agent's retention pass
/// has forgotten. Pure.
pub(super) fn forgotten_siblings<'a>(
    siblings: &'a [Snapshot],
    job: Option<&BackupJob>,
    result: &SnapshotResult,
) -> Vec<&'a Snapshot> {
    let (Some(r), Some(job)) = (&result.retention, job) else {
        return Vec::new();
    };
    crate::controller::job_spec::retention::forgotten_snapshots(siblings, job, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{self, agent_pod as pod, terminated};
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2026-11-27T03:30:00Z".parse().expect("now")
    }

    fn job(backoff: u32) -> BackupJob {
        fixtures::job(&format!("backoffLimit: {backoff}"))
    }

    fn snap(name: &str, created: &str, status: Option<SnapshotStatus>) -> Snapshot {
        let mut s = fixtures::snapshot(name, created);
        s.status = status;
        s
    }

    fn world(job: Option<BackupJob>, siblings: Vec<Snapshot>, pods: Vec<Pod>) -> World {
        World {
            job,
            siblings,
            pods,
            volumes: Vec::new(),
            clones: Vec::new(),
            node: None,
        }
    }

    fn running(attempts: u32) -> Option<SnapshotStatus> {
        Some(SnapshotStatus {
            phase: RunPhase::Running,
            attempts,
            pod_name: Some(format!("s-{attempts}")),
            ..Default::default()
        })
    }

    fn failed() -> String {
        terminated("Failed", 1, "snapcrypt: error: disk full")
    }

    #[test]
    fn first_attempt_starts_when_nothing_is_ahead() {
        let s = snap("s", "2026-11-27T03:00:00Z", None);
        assert_eq!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![]),
                now(),
            ),
            Plan::Start {
                attempt: 1,
                retry_after: None
            }
        );
    }

    #[test]
    fn missing_job_waits_with_a_condition() {
        let s = snap("s", "2026-11-27T03:00:00Z", None);
        let Plan::Step(Step::Wait { reason, message }, Some(_)) = plan(
            &s,
            &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
            &world(None, vec![], vec![]),
            now(),
        ) else {
            panic!("should wait")
        };
        assert_eq!(reason, Reason::BackupJobNotFound);
        assert_eq!(
            message,
            "spec.backupJobRef.name \"rs0\": BackupJob not found in namespace db"
        );
    }

    #[test]
    fn one_running_snapshot_per_job() {
        let me = snap("b", "2026-11-27T04:00:00Z", None);
        let older_running = snap("a", "2026-11-27T03:00:00Z", running(1));
        let older_done = snap(
            "a",
            "2026-11-27T03:00:00Z",
            Some(SnapshotStatus {
                phase: RunPhase::Succeeded,
                ..Default::default()
            }),
        );
        let older_pending = snap("a", "2026-11-27T03:00:00Z", None);
        let newer_pending = snap("c", "2026-11-27T05:00:00Z", None);
        let newer_running = snap("c", "2026-11-27T05:00:00Z", running(1));
        let waits = |sib: Snapshot| {
            matches!(
                plan(
                    &me,
                    &Default::default(),
                    &world(Some(job(2)), vec![sib], vec![]),
                    now(),
                ),
                Plan::Step(
                    Step::Wait {
                        reason: Reason::WaitingForOtherSnapshot,
                        ..
                    },
                    _
                )
            )
        };
        assert!(waits(older_running));
        assert!(waits(older_pending), "the older one goes first");
        assert!(waits(newer_running), "never two running");
        assert!(!waits(older_done));
        assert!(!waits(newer_pending));
    }

    #[test]
    fn failed_pod_is_retried_up_to_the_backoff_limit() {
        let s = snap("s", "2026-11-27T03:00:00Z", running(1));
        assert_eq!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(1)), vec![], vec![pod(1, &failed())]),
                now(),
            ),
            Plan::Start {
                attempt: 2,
                retry_after: Some("disk full".into())
            }
        );
        let s = snap("s", "2026-11-27T03:00:00Z", running(2));
        let Plan::Step(
            Step::Failed {
                reason, message, ..
            },
            None,
        ) = plan(
            &s,
            &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
            &world(
                Some(job(1)),
                vec![],
                vec![pod(1, &failed()), pod(2, &failed())],
            ),
            now(),
        )
        else {
            panic!("should fail")
        };
        assert_eq!(reason, Reason::SnapshotFailed);
        assert_eq!(
            message,
            "disk full (gave up after 2 attempts, spec.backoffLimit 1)"
        );
        let s = snap("s", "2026-11-27T03:00:00Z", running(1));
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(0)), vec![], vec![pod(1, &failed())]),
                now(),
            ),
            Plan::Step(Step::Failed { .. }, None)
        ));
    }

    #[test]
    fn retention_deletes_only_finished_forgotten_snapshots() {
        use crate::api::agent::RetentionResult;
        let done = |id: &str, phase: RunPhase| {
            Some(SnapshotStatus {
                phase,
                repository_snapshot_id: Some(id.into()),
                ..Default::default()
            })
        };
        let job = job(0);
        let owned = |mut s: Snapshot| {
            s.metadata.owner_references = Some(vec![
                kube::Resource::controller_owner_ref(&job, &()).expect("ref"),
            ]);
            s
        };
        let siblings = vec![
            owned(snap(
                "old",
                "2026-11-01T00:00:00Z",
                done("aa", RunPhase::Succeeded),
            )),
            owned(snap(
                "kept",
                "2026-11-02T00:00:00Z",
                done("bb", RunPhase::Succeeded),
            )),
            // A failed run that somehow carries a forgotten id is not the retention's to delete.
            owned(snap(
                "odd",
                "2026-11-03T00:00:00Z",
                done("cc", RunPhase::Failed),
            )),
            owned(snap("queued", "2026-11-04T00:00:00Z", None)),
            // A Snapshot a user created (no owner) is never deleted.
            snap(
                "mine",
                "2026-11-05T00:00:00Z",
                done("ee", RunPhase::Succeeded),
            ),
        ];
        let mut result = SnapshotResult {
            id: "dd".into(),
            files: 1,
            logical_bytes: 1,
            stored_bytes: 1,
            key_id: "k".into(),
            retention: None,
        };
        assert!(forgotten_siblings(&siblings, Some(&job), &result).is_empty());
        result.retention = Some(RetentionResult {
            kept: 2,
            forgotten: vec!["aa".into(), "cc".into(), "ee".into(), "zz".into()],
            forgotten_total: 4,
            ..Default::default()
        });
        assert!(forgotten_siblings(&siblings, None, &result).is_empty());
        let names: Vec<String> = forgotten_siblings(&siblings, Some(&job), &result)
            .iter()
            .map(|s| s.name_any())
            .collect();
        assert_eq!(names, ["old"]);
    }

    #[test]
    fn a_pod_of_the_current_attempt_fills_a_missing_pod_name() {
        let prev = SnapshotStatus {
            phase: RunPhase::Quiescing,
            attempts: 1,
            ..Default::default()
        };
        let p = pod(1, "  phase: Running");
        let got = recover_from_pods(prev.clone(), std::slice::from_ref(&p));
        assert_eq!(got.pod_name, Some(p.name_any()));
        // A status that names its pod keeps it.
        let named = SnapshotStatus {
            pod_name: Some("other".into()),
            ..prev
        };
        assert_eq!(
            recover_from_pods(named, &[p]).pod_name.as_deref(),
            Some("other")
        );
    }

    /// The status as the cache held it while the VolumeSnapshot was being cut (no clone, no
    /// instant, the cut's lock released), read after the pod of the same attempt was created:
    /// the pod's recorded capture fills what the lost or unseen write had, the lock stays.
    #[test]
    fn a_pod_of_the_current_attempt_restores_the_capture_a_stale_status_lacks() {
        let lock = crate::api::snapshot::LockStatus {
            member: "rs0-0".into(),
            state: crate::api::snapshot::LockState::Released,
            ..Default::default()
        };
        let capturing = CaptureStatus {
            mode: crate::api::snapshot::CaptureMode::VolumeSnapshot,
            attempt: 1,
            volume_snapshot: Some("s-1".into()),
            lock: Some(lock.clone()),
            ..Default::default()
        };
        let prev = SnapshotStatus {
            phase: RunPhase::SnapshottingVolume,
            attempts: 1,
            capture: Some(capturing.clone()),
            ..Default::default()
        };
        let started = CaptureStatus {
            clone_claim: Some("s-1-clone".into()),
            point_in_time: Some(Time("2026-11-27T03:29:00Z".parse().expect("time"))),
            lock: None,
            ..capturing
        };
        let mut p = pod(1, "  phase: Succeeded");
        crate::controller::snapshot::build::pod::record_capture(&mut p, &started);
        let got = recover_from_pods(prev, std::slice::from_ref(&p));
        assert_eq!(
            got.capture,
            Some(CaptureStatus {
                lock: Some(lock),
                ..started
            })
        );
        assert_eq!(got.pod_name, Some(p.name_any()));
    }

    #[test]
    fn pod_phases_become_steps() {
        let s = snap("s", "2026-11-27T03:00:00Z", running(1));
        let ok = &terminated(
            "Succeeded",
            0,
            r#"{"id":"abc","files":3,"logical_bytes":30,"stored_bytes":10,"key_id":"local:k"}"#,
        );
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![pod(1, ok)]),
                now(),
            ),
            Plan::Step(Step::Succeeded { .. }, None)
        ));
        let garbled = &terminated("Succeeded", 0, "hello");
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![pod(1, garbled)]),
                now(),
            ),
            Plan::Step(
                Step::Failed {
                    reason: Reason::ResultUnreadable,
                    ..
                },
                None
            )
        ));
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![pod(1, "  phase: Running")]),
                now(),
            ),
            Plan::Step(Step::PodRunning { .. }, _)
        ));
        // The pod vanished: a failed attempt.
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![]),
                now(),
            ),
            Plan::Start {
                attempt: 2,
                retry_after: Some(_)
            }
        ));
    }

    /// A volumeSnapshot job's VolumeSnapshot of attempt `attempt`, with `status`.
    fn volume(attempt: u32, created: &str, status: serde_json::Value) -> DynamicObject {
        use crate::controller::snapshot::build::pod::RunAs;
        use crate::controller::snapshot::build::volume::volume_snapshot;
        let s = fixtures::snapshot("s", "2026-11-27T03:00:00Z");
        let member = MemberChoice {
            pod: "rs0-1".into(),
            node: Some("node-b".into()),
            role: None,
            reason: "named".into(),
        };
        let mut vs = volume_snapshot(
            &s,
            attempt,
            "data-rs0-1",
            "csi",
            &member,
            RunAs { uid: 999, gid: 999 },
        )
        .expect("vs");
        vs.metadata.creation_timestamp = Some(Time(created.parse().expect("t")));
        vs.data["status"] = status;
        vs
    }

    #[test]
    fn a_capture_under_way_decides_before_the_pods() {
        let job = fixtures::job(
            "backoffLimit: 1\nsource: {statefulSetName: rs0, dataVolumeName: data, consistency: {mode: volumeSnapshot, volumeSnapshotClassName: csi}}",
        );
        let s = snap("s", "2026-11-27T03:00:00Z", None);
        let capturing1 = SnapshotStatus {
            phase: RunPhase::SnapshottingVolume,
            attempts: 1,
            ..Default::default()
        };
        let with = |volumes: Vec<DynamicObject>, pods: Vec<Pod>| World {
            volumes,
            ..world(Some(job.clone()), vec![], pods)
        };
        // Pending: wait, with the member the VolumeSnapshot recorded.
        let pending = volume(1, "2026-11-27T03:29:00Z", json!({}));
        let Plan::Step(
            Step::Capturing {
                attempt,
                member,
                capture,
                consistency,
                ..
            },
            Some(_),
        ) = plan(&s, &capturing1, &with(vec![pending.clone()], vec![]), now())
        else {
            panic!("should be capturing")
        };
        assert_eq!((attempt, member.pod.as_str()), (1, "rs0-1"));
        assert_eq!(capture.volume_snapshot.as_deref(), Some("s-1"));
        assert!(consistency.consistent);
        // Ready: start the pod from it.
        let ready = volume(
            1,
            "2026-11-27T03:29:00Z",
            json!({"readyToUse": true, "creationTime": "2026-11-27T03:29:01Z"}),
        );
        assert!(matches!(
            plan(&s, &capturing1, &with(vec![ready.clone()], vec![]), now()),
            Plan::StartFromVolume {
                attempt: 1,
                cut: Some(_),
                ..
            }
        ));
        // The snapshotter's error, or no readiness within the timeout: a failed attempt,
        // retried as a new one.
        let broken = volume(
            1,
            "2026-11-27T03:29:00Z",
            json!({"error": {"message": "no space"}}),
        );
        assert_eq!(
            plan(&s, &capturing1, &with(vec![broken], vec![]), now()),
            Plan::Start {
                attempt: 2,
                retry_after: Some("VolumeSnapshot s-1: no space".into())
            }
        );
        let stale = volume(1, "2026-11-27T03:00:00Z", json!({}));
        let Plan::Start {
            attempt: 2,
            retry_after: Some(why),
        } = plan(&s, &capturing1, &with(vec![stale], vec![]), now())
        else {
            panic!("should retry")
        };
        assert!(why.contains("was not readyToUse after 600s"), "{why}");
        // Once attempt 1's pod exists, the pod decides; its capture is then a leftover only
        // when the Snapshot finishes or a later attempt runs.
        let w = with(vec![ready], vec![pod(1, "  phase: Running")]);
        assert!(matches!(
            plan(&s, &capturing1, &w, now()),
            Plan::Step(Step::PodRunning { .. }, _)
        ));
        assert!(leftover_captures(&w, false, 1).volumes.is_empty());
        assert_eq!(leftover_captures(&w, false, 2).volumes.len(), 1);
        assert_eq!(leftover_captures(&w, true, 1).volumes.len(), 1);
    }

    #[test]
    fn a_pod_pending_past_its_deadline_ends_the_attempt_with_the_reason() {
        let job = fixtures::job("backoffLimit: 1\nplacement: {pendingTimeout: 5m}");
        let s = snap("s", "2026-11-27T03:00:00Z", running(1));
        let mut stuck = pod(
            1,
            "  phase: Pending\n  conditions:\n  - {type: PodScheduled, status: 'False', reason: Unschedulable, message: '0/2 nodes are available: 2 node(s) had taint {db: }, that the pod did not tolerate.'}",
        );
        stuck.metadata.creation_timestamp = Some(Time("2026-11-27T03:27:00Z".parse().expect("t")));
        let w = world(Some(job.clone()), vec![], vec![stuck.clone()]);
        assert!(matches!(
            plan(&s, &s.status.clone().unwrap_or_default(), &w, now()),
            Plan::Step(Step::PodPending { .. }, Some(_))
        ));
        stuck.metadata.creation_timestamp = Some(Time("2026-11-27T03:10:00Z".parse().expect("t")));
        let w = world(Some(job), vec![], vec![stuck]);
        let Plan::Start {
            attempt: 2,
            retry_after: Some(why),
        } = plan(&s, &s.status.clone().unwrap_or_default(), &w, now())
        else {
            panic!("should retry")
        };
        assert!(
            why.starts_with("snapshot pod s-1 stayed Pending for over 300s (spec.placement.pendingTimeout): Unschedulable: 0/2 nodes"),
            "{why}"
        );
    }

    #[test]
    fn a_pod_on_a_lost_node_ends_its_attempt_naming_the_node() {
        let node = |ready: &str| -> k8s_openapi::api::core::v1::Node {
            serde_yaml::from_str(&format!(
                "metadata: {{name: real-c}}\nstatus:\n  conditions:\n  - {{type: Ready, status: '{ready}', lastTransitionTime: '2026-11-27T03:20:00Z', reason: NodeStatusUnknown, message: Kubelet stopped posting node status.}}"
            ))
            .expect("node")
        };
        let mut w = world(Some(job(0)), vec![], vec![pod(1, "  phase: Running")]);
        let s = snap("s", "2026-11-27T03:00:00Z", running(1));
        // Ready: the pod runs on, and the node is looked at again.
        w.node = Some(node("True"));
        assert!(matches!(
            plan(&s, &s.status.clone().unwrap_or_default(), &w, now()),
            Plan::Step(Step::PodRunning { .. }, Some(_))
        ));
        // Unknown for 10 minutes, past the default 5m: the attempt fails naming the node.
        w.node = Some(node("Unknown"));
        let Plan::Step(Step::Failed { message, .. }, _) =
            plan(&s, &s.status.clone().unwrap_or_default(), &w, now())
        else {
            panic!("the attempt goes on");
        };
        assert!(
            message.contains(
                "node real-c has not been Ready for over 300s (spec.placement.nodeLostTimeout)"
            ),
            "{message}"
        );
    }

    /// A pod that ends without its termination message after its agent reported a complete
    /// backup through the API (stopped at runTimeout in retention, its node lost, deleted) is a
    /// Succeeded Snapshot with that result; a report from another attempt's pod changes nothing.
    #[test]
    fn a_pod_that_reported_its_backup_then_stopped_succeeds_with_that_result() {
        let result = SnapshotResult {
            id: "3f2a".into(),
            files: 2,
            logical_bytes: 10,
            stored_bytes: 5,
            key_id: "kmip:1".into(),
            retention: Some(crate::api::agent::RetentionResult {
                error: Some(crate::api::agent::RETENTION_INTERRUPTED.into()),
                ..Default::default()
            }),
        };
        let reported_by = |pod: &str| {
            let mut st = running(1).unwrap_or_default();
            st.agent_result = Some(crate::api::snapshot::AgentResult {
                pod: pod.into(),
                result: serde_json::to_string(&result).expect("json"),
            });
            st
        };
        // The kubelet's reading of a pod stopped at its activeDeadlineSeconds: Failed, its
        // container not ended yet, no message.
        let stopped = pod(
            1,
            "  phase: Failed\n  reason: DeadlineExceeded\n  message: Pod was active on the node longer than the specified deadline\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: true, restartCount: 0, state: {running: {startedAt: '2026-11-27T03:00:00Z'}}}",
        );
        let s = snap("s", "2026-11-27T03:00:00Z", None);
        let decide = |st: &SnapshotStatus, pods: Vec<Pod>, node| {
            let mut w = world(Some(job(0)), vec![], pods);
            w.node = node;
            plan(&s, st, &w, now())
        };
        let succeeded = Plan::Step(
            Step::Succeeded {
                result: result.clone(),
                finished: None,
            },
            None,
        );
        assert_eq!(
            decide(&reported_by("s-1"), vec![stopped.clone()], None),
            succeeded
        );
        // Without the report (or with an earlier attempt's), it fails naming runTimeout.
        for st in [running(1).unwrap_or_default(), reported_by("s-0")] {
            let Plan::Step(Step::Failed { message, .. }, _) =
                decide(&st, vec![stopped.clone()], None)
            else {
                panic!("a stopped pod without its report is not a success");
            };
            assert!(message.contains("spec.placement.runTimeout"), "{message}");
        }
        // Its node lost while retention ran.
        let lost: k8s_openapi::api::core::v1::Node = serde_yaml::from_str(
            "metadata: {name: real-c}\nstatus:\n  conditions:\n  - {type: Ready, status: Unknown, lastTransitionTime: '2026-11-27T03:20:00Z'}",
        )
        .expect("node");
        let running_pod = pod(1, "  phase: Running");
        assert_eq!(
            decide(
                &reported_by("s-1"),
                vec![running_pod.clone()],
                Some(lost.clone())
            ),
            succeeded
        );
        assert!(matches!(
            decide(
                &running(1).unwrap_or_default(),
                vec![running_pod.clone()],
                Some(lost)
            ),
            Plan::Step(Step::Failed { .. }, _)
        ));
        // Still running on a healthy node: retention goes on.
        assert!(matches!(
            decide(&reported_by("s-1"), vec![running_pod], None),
            Plan::Step(Step::PodRunning { .. }, _)
        ));
        // The pod deleted after its report.
        assert_eq!(decide(&reported_by("s-1"), vec![], None), succeeded);
        assert!(matches!(
            decide(&reported_by("s-0"), vec![], None),
            Plan::Step(Step::Failed { .. }, _)
        ));
    }
}
