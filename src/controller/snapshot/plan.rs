//! Decide (pure): what the current pod's state means for the Snapshot, whether an attempt may
//! start, what a lost status write would have recorded, and which finished Snapshots the
//! job's retention pass forgot.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::build::pod::made_by_job;
use super::build::status::Step;
use super::dereference::World;
use super::{QUEUE_RECHECK, RECHECK};
use crate::api::agent::SnapshotResult;
use crate::api::snapshot::{MemberChoice, RunPhase};
use crate::api::{BackupJob, Snapshot, SnapshotStatus};
use crate::controller::agent::run::{RunStep, run_step};
use crate::controller::names::ATTEMPT_LABEL;
use crate::controller::reason::Reason;

/// What a reconcile does next.
#[derive(Debug, PartialEq)]
pub(super) enum Plan {
    /// Write this status; look again after the duration (None: on the next change).
    Step(Step, Option<Duration>),
    /// Start attempt `attempt` (choose a member, create its pod).
    Start {
        attempt: u32,
        retry_after: Option<String>,
    },
}

/// Decide from the current pod (or its absence) and the other Snapshots of the job. Pure.
pub(super) fn plan(snap: &Snapshot, prev: &SnapshotStatus, world: &World) -> Plan {
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
    let current = world.pods.iter().max_by_key(|p| {
        p.labels()
            .get(ATTEMPT_LABEL)
            .and_then(|a| a.parse::<u32>().ok())
    });
    let failed = |message: String, finished| {
        if prev.attempts <= job.spec.backoff_limit {
            Plan::Start {
                attempt: prev.attempts + 1,
                retry_after: Some(message),
            }
        } else {
            let tries = prev.attempts;
            Plan::Step(
                Step::Failed {
                    reason: Reason::SnapshotFailed,
                    message: if tries > 1 {
                        format!(
                            "{message} (gave up after {tries} attempts, spec.backoffLimit {})",
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
    };
    if let Some(pod) = current {
        return match run_step::<SnapshotResult>(pod, "snapshot") {
            RunStep::Pending { message } => Plan::Step(Step::PodPending { message }, None),
            RunStep::Running { started } => Plan::Step(Step::PodRunning { started }, None),
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
        };
    }
    if prev.attempts > 0 && prev.pod_name.is_some() {
        return failed(
            format!(
                "pod {} disappeared before it finished (deleted, or its node was lost)",
                prev.pod_name.clone().unwrap_or_default()
            ),
            None,
        );
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

/// Fill what a lost status write would have recorded (attempt, pod, member) from the newest
/// snapshot pod, which carries it in its labels and annotations. Pure.
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
    if let Some((n, pod)) = newest
        && n > prev.attempts
    {
        let a = pod.annotations();
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
/// has forgotten. Snapshots a user created are never deleted (the pass does not forget them
/// either). Pure.
pub(super) fn forgotten_siblings<'a>(
    siblings: &'a [Snapshot],
    job: Option<&BackupJob>,
    result: &SnapshotResult,
) -> Vec<&'a Snapshot> {
    let (Some(r), Some(job)) = (&result.retention, job) else {
        return Vec::new();
    };
    let gone: BTreeSet<&str> = r.forgotten.iter().map(String::as_str).collect();
    siblings
        .iter()
        .filter(|s| made_by_job(s, job))
        .filter(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.phase == RunPhase::Succeeded
                    && st
                        .repository_snapshot_id
                        .as_deref()
                        .is_some_and(|id| gone.contains(id))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{self, agent_pod as pod, terminated};

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
                &world(Some(job(2)), vec![], vec![])
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
                    &world(Some(job(2)), vec![sib], vec![])
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
                &world(Some(job(1)), vec![], vec![pod(1, &failed())])
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
                &world(Some(job(0)), vec![], vec![pod(1, &failed())])
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
                &world(Some(job(2)), vec![], vec![pod(1, ok)])
            ),
            Plan::Step(Step::Succeeded { .. }, None)
        ));
        let garbled = &terminated("Succeeded", 0, "hello");
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![pod(1, garbled)])
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
                &world(Some(job(2)), vec![], vec![pod(1, "  phase: Running")])
            ),
            Plan::Step(Step::PodRunning { .. }, None)
        ));
        // The pod vanished: a failed attempt.
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![])
            ),
            Plan::Start {
                attempt: 2,
                retry_after: Some(_)
            }
        ));
    }
}
