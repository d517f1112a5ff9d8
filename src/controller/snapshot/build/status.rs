//! A Snapshot's status: what its pod's phase means, and the next status from the previous one
//! and what the reconcile found. Pure. Progress fields are never set here: the agent owns them
//! (its own field manager), so the operator's status apply leaves them alone.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::agent::{RetentionResult, SnapshotResult};
use crate::api::snapshot::{CaptureStatus, MemberChoice, RunPhase, SnapshotStats, SnapshotStatus};
use crate::controller::conditions::{self, Cond, merge};
use crate::controller::job_spec::consistency::Capture;
use crate::controller::reason::Reason;
use crate::engine::progress::human_bytes;

/// What happened in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No pod can start yet (job missing, a problem in the spec, another run first, no member).
    Wait { reason: Reason, message: String },
    /// The member's writes are being locked for attempt `attempt` (the status is written
    /// before the lock is asked for, so that a lost holder's lock is found).
    Quiescing {
        attempt: u32,
        member: MemberChoice,
        capture: CaptureStatus,
        consistency: Consistency,
        message: String,
    },
    /// The member's data volume is being snapshotted for attempt `attempt` (mode
    /// volumeSnapshot); the pod starts once the VolumeSnapshot is ready.
    Capturing {
        attempt: u32,
        member: MemberChoice,
        capture: CaptureStatus,
        consistency: Consistency,
        message: String,
    },
    /// A pod was created for attempt `attempt`; `retry_after` is the previous attempt's failure.
    Started {
        attempt: u32,
        pod: String,
        member: MemberChoice,
        retry_after: Option<String>,
        capture: CaptureStatus,
        consistency: Consistency,
    },
    /// The current pod has not started yet.
    PodPending { message: Option<String> },
    /// The current pod is copying.
    PodRunning { started: Option<Time> },
    /// The pod succeeded with this result.
    Succeeded {
        result: SnapshotResult,
        finished: Option<Time>,
    },
    /// Given up.
    Failed {
        reason: Reason,
        message: String,
        finished: Option<Time>,
    },
}

/// Whether an attempt's copy is one mongod can recover from: the Consistent condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Consistency {
    pub consistent: bool,
    pub reason: Reason,
    pub message: String,
}

impl Consistency {
    /// What copies made by `capture` are.
    pub fn of(capture: &Capture) -> Consistency {
        Consistency {
            consistent: capture.is_consistent(),
            reason: match capture {
                Capture::VolumeSnapshot { .. } => Reason::VolumeSnapshotCut,
                Capture::FsyncLock { .. } => Reason::CopiedUnderLock,
                Capture::StoppedMember { .. } => Reason::CopiedLive,
            },
            message: capture.explanation(),
        }
    }

    fn cond(&self) -> Cond {
        Cond::new("Consistent", self.consistent, self.reason, &self.message)
    }
}

/// The next status.
pub fn next_status(
    prev: &SnapshotStatus,
    step: &Step,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> SnapshotStatus {
    let now_t = Time(now);
    // progress and agentResult belong to the agent (its own field manager): left out, they stay.
    let mut s = SnapshotStatus {
        progress: None,
        progress_summary: None,
        agent_result: None,
        observed_generation: generation,
        ..prev.clone()
    };
    let mut conds: Vec<Cond> = match step {
        Step::Wait { reason, message } => {
            s.phase = RunPhase::Pending;
            s.message = Some(message.clone());
            conditions::waiting(*reason, message)
        }
        Step::Quiescing {
            attempt,
            member,
            capture,
            consistency,
            message,
        }
        | Step::Capturing {
            attempt,
            member,
            capture,
            consistency,
            message,
        } => {
            let (phase, reason) = match step {
                Step::Quiescing { .. } => (RunPhase::Quiescing, Reason::Quiescing),
                _ => (RunPhase::SnapshottingVolume, Reason::SnapshottingVolume),
            };
            s.phase = phase;
            s.attempts = *attempt;
            s.member = Some(member.clone());
            s.pod_name = None;
            s.capture = Some(keep_lock(prev, capture));
            s.message = Some(format!("attempt {attempt}: {message}"));
            let c = conditions::under_way(Reason::Starting, reason, message);
            c.into_iter().chain([consistency.cond()]).collect()
        }
        Step::Started {
            attempt,
            pod,
            member,
            retry_after,
            capture,
            consistency,
        } => {
            s.phase = RunPhase::Pending;
            s.attempts = *attempt;
            s.pod_name = Some(pod.clone());
            s.member = Some(member.clone());
            s.capture = Some(keep_lock(prev, capture));
            let msg = started_message(*attempt, pod, member, retry_after.as_deref(), capture);
            s.message = Some(msg.clone());
            let c = conditions::under_way(Reason::Starting, Reason::PodCreated, &msg);
            c.into_iter().chain([consistency.cond()]).collect()
        }
        Step::PodPending { message } => {
            s.phase = RunPhase::Pending;
            let why = message.as_ref().map(|m| format!(": {m}"));
            let pod = s.pod_name.clone().unwrap_or_default();
            let msg = format!("pod {pod} is starting{}", why.unwrap_or_default());
            s.message = Some(msg.clone());
            conditions::under_way(Reason::Starting, Reason::PodCreated, &msg)
        }
        Step::PodRunning { started } => {
            s.phase = RunPhase::Running;
            if s.start_time.is_none() {
                s.start_time = Some(started.clone().unwrap_or_else(|| now_t.clone()));
            }
            let msg = running_message(&s);
            s.message = Some(msg.clone());
            conditions::under_way(Reason::Running, Reason::Running, &msg)
        }
        Step::Succeeded { result, finished } => {
            s.phase = RunPhase::Succeeded;
            s.completion_time = Some(finished.clone().unwrap_or_else(|| now_t.clone()));
            if s.start_time.is_none() {
                s.start_time = s.completion_time.clone();
            }
            s.repository_snapshot_id = Some(result.id.clone());
            s.key_id = Some(result.key_id.clone());
            s.stats = Some(stats(result));
            let msg = succeeded_message(result);
            s.message = Some(msg.clone());
            let mut conds = conditions::finished(true, Reason::Succeeded, &msg);
            if let Some(r) = &result.retention {
                conds.push(retention_condition(r));
            }
            conds
        }
        Step::Failed {
            reason,
            message,
            finished,
        } => {
            s.phase = RunPhase::Failed;
            s.completion_time = Some(finished.clone().unwrap_or_else(|| now_t.clone()));
            s.message = Some(message.clone());
            conditions::finished(false, *reason, message)
        }
    };
    // The Consistent condition stays as the attempt's capture set it.
    if !conds.iter().any(|c| c.type_ == "Consistent") {
        conds.extend(kept_consistency(prev));
    }
    s.conditions = merge(&prev.conditions, &conds, generation, &now_t);
    s
}

/// What a Running status says.
fn running_message(s: &SnapshotStatus) -> String {
    format!(
        "copying member {} in pod {} (attempt {})",
        s.member.as_ref().map(|m| m.pod.as_str()).unwrap_or("?"),
        s.pod_name.clone().unwrap_or_default(),
        s.attempts
    )
}

/// What a Succeeded status says.
fn succeeded_message(result: &SnapshotResult) -> String {
    format!(
        "snapshot {} in the repository: {} files, {}, {} added",
        result.id,
        result.files,
        human_bytes(result.logical_bytes),
        human_bytes(result.stored_bytes)
    )
}

/// A step's capture, with the lock the previous status recorded for the same attempt when the
/// step knows none (a step rebuilt from the VolumeSnapshot does not know the cut's lock).
fn keep_lock(prev: &SnapshotStatus, capture: &CaptureStatus) -> CaptureStatus {
    let mut c = capture.clone();
    if c.lock.is_none() {
        c.lock = prev
            .capture
            .as_ref()
            .filter(|p| p.attempt == c.attempt)
            .and_then(|p| p.lock.clone());
    }
    c
}

/// What a Started step says.
fn started_message(
    attempt: u32,
    pod: &str,
    member: &MemberChoice,
    retry_after: Option<&str>,
    capture: &CaptureStatus,
) -> String {
    match (retry_after, &capture.volume_snapshot) {
        (_, Some(vs)) => format!(
            "pod {pod} created to copy VolumeSnapshot {vs} of member {} (restored into claim {})",
            member.pod,
            capture.clone_claim.as_deref().unwrap_or("?")
        ),
        (Some(why), None) => format!(
            "attempt {} failed: {why}; retrying: pod {pod} on node {}",
            attempt - 1,
            member.node.as_deref().unwrap_or("?")
        ),
        (None, None) => format!(
            "pod {pod} created on node {} to copy member {} ({})",
            member.node.as_deref().unwrap_or("?"),
            member.pod,
            member.reason
        ),
    }
}

/// The previous status's Consistent condition, carried over.
fn kept_consistency(prev: &SnapshotStatus) -> Option<Cond> {
    let c = conditions::get(&prev.conditions, "Consistent")?;
    Some(Cond::new(
        "Consistent",
        c.status == crate::api::common::condition_status::TRUE,
        Reason::parse(&c.reason)?,
        c.message.clone(),
    ))
}

/// The RetentionApplied condition from the agent's retention pass.
pub fn retention_condition(r: &RetentionResult) -> Cond {
    match &r.error {
        Some(e) => Cond::new(
            "RetentionApplied",
            false,
            Reason::PruneFailed,
            format!("the snapshot is complete, but the retention policy was not applied: {e}"),
        ),
        None => Cond::new(
            "RetentionApplied",
            true,
            Reason::Pruned,
            format!(
                "kept {} snapshot(s) of the job, forgot {}, freed {}",
                r.kept,
                r.forgotten_total,
                human_bytes(r.bytes_freed)
            ),
        ),
    }
}

/// Totals for status from the agent's result.
pub fn stats(r: &SnapshotResult) -> SnapshotStats {
    let ratio = r.logical_bytes as f64 / r.stored_bytes.max(1) as f64;
    SnapshotStats {
        files: r.files,
        logical_bytes: r.logical_bytes,
        logical_size: Some(human_bytes(r.logical_bytes)),
        stored_bytes: r.stored_bytes,
        dedup_ratio: (ratio * 100.0).round() / 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-11-27T03:10:00Z".parse().expect("t")
    }

    fn member() -> MemberChoice {
        MemberChoice {
            pod: "rs0-1".into(),
            node: Some("node-b".into()),
            role: Some("SECONDARY".into()),
            reason: "least lag".into(),
        }
    }

    fn live_capture() -> CaptureStatus {
        CaptureStatus {
            mode: "stoppedMember".into(),
            attempt: 1,
            ..Default::default()
        }
    }

    fn cond(s: &SnapshotStatus, t: &str) -> String {
        let c = s.conditions.iter().find(|c| c.type_ == t).expect("cond");
        format!("{} {}", c.status, c.reason)
    }

    #[test]
    fn life_of_a_snapshot() {
        let started = next_status(
            &SnapshotStatus::default(),
            &Step::Started {
                attempt: 1,
                pod: "s-1".into(),
                member: member(),
                retry_after: None,
                capture: live_capture(),
                consistency: Consistency::of(&Capture::StoppedMember {
                    why: crate::controller::job_spec::consistency::StoppedWhy::Chosen,
                }),
            },
            Some(1),
            now(),
        );
        assert_eq!((started.phase, started.attempts), (RunPhase::Pending, 1));
        assert_eq!(started.pod_name.as_deref(), Some("s-1"));
        assert_eq!(cond(&started, "Progressing"), "True PodCreated");
        let running = next_status(
            &started,
            &Step::PodRunning { started: None },
            Some(1),
            now(),
        );
        assert_eq!(running.phase, RunPhase::Running);
        assert_eq!(running.start_time, Some(Time(now())));
        assert_eq!(running.member, Some(member()));
        let done = next_status(
            &running,
            &Step::Succeeded {
                result: SnapshotResult {
                    id: "abc".into(),
                    files: 8,
                    logical_bytes: 4 * 1024 * 1024,
                    stored_bytes: 1024 * 1024,
                    key_id: "local:k".into(),
                    retention: Some(RetentionResult {
                        kept: 3,
                        forgotten: vec!["old".into()],
                        forgotten_total: 1,
                        bytes_freed: 2048,
                        error: None,
                    }),
                },
                finished: None,
            },
            Some(1),
            now(),
        );
        assert_eq!(done.phase, RunPhase::Succeeded);
        assert_eq!(done.repository_snapshot_id.as_deref(), Some("abc"));
        // The copy's consistency, set when the pod was created, stays to the end.
        assert_eq!(cond(&started, "Consistent"), "False CopiedLive");
        assert_eq!(cond(&running, "Consistent"), "False CopiedLive");
        assert_eq!(cond(&done, "Consistent"), "False CopiedLive");
        assert_eq!(done.key_id.as_deref(), Some("local:k"));
        let st = done.stats.clone().expect("stats");
        assert_eq!((st.files, st.dedup_ratio), (8, 4.0));
        assert_eq!(st.logical_size.as_deref(), Some("4.0 MiB"));
        assert_eq!(cond(&done, "Ready"), "True Succeeded");
        assert_eq!(cond(&done, "Progressing"), "False Finished");
        assert_eq!(cond(&done, "RetentionApplied"), "True Pruned");
        assert_eq!(done.progress, None, "progress belongs to the agent");
        let failed = retention_condition(&RetentionResult {
            error: Some("lock held by another backup".into()),
            ..Default::default()
        });
        assert_eq!((failed.status, failed.reason), (false, Reason::PruneFailed));
        assert!(failed.message.contains("lock held"), "{}", failed.message);
    }

    #[test]
    fn retry_and_give_up() {
        let retry = next_status(
            &SnapshotStatus {
                attempts: 1,
                ..Default::default()
            },
            &Step::Started {
                attempt: 2,
                pod: "s-2".into(),
                member: member(),
                retry_after: Some("disk full".into()),
                capture: live_capture(),
                consistency: Consistency::of(&Capture::StoppedMember {
                    why: crate::controller::job_spec::consistency::StoppedWhy::Chosen,
                }),
            },
            None,
            now(),
        );
        assert_eq!(retry.attempts, 2);
        assert!(
            retry
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("attempt 1 failed: disk full; retrying")),
            "{:?}",
            retry.message
        );
        let failed = next_status(
            &retry,
            &Step::Failed {
                reason: Reason::SnapshotFailed,
                message: "disk full".into(),
                finished: None,
            },
            None,
            now(),
        );
        assert_eq!(failed.phase, RunPhase::Failed);
        assert_eq!(cond(&failed, "Failed"), "True SnapshotFailed");
        assert_eq!(failed.completion_time, Some(Time(now())));
    }

    #[test]
    fn full_dedup_has_a_finite_ratio() {
        let s = stats(&SnapshotResult {
            id: "x".into(),
            files: 1,
            logical_bytes: 1000,
            stored_bytes: 0,
            key_id: "k".into(),
            retention: None,
        });
        assert_eq!(s.dedup_ratio, 1000.0);
    }
}
