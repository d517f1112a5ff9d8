//! A Snapshot's status: what its pod's phase means, and the next status from the previous one
//! and what the reconcile found. Pure. Progress fields are never set here: the agent owns them
//! (its own field manager), so the operator's status apply leaves them alone.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::agent::{RetentionResult, SnapshotResult};
use crate::api::snapshot::{
    CaptureMode, CaptureStatus, LockState, MemberChoice, RunPhase, SnapshotStats, SnapshotStatus,
};
use crate::controller::conditions::CondType;
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

    /// The Consistent condition while attempt `attempt` is under way: Unknown (nothing is
    /// copied yet), or False for a capture that never makes a consistent copy.
    fn pending(&self, attempt: u32) -> Cond {
        if !self.consistent {
            return Cond::new(CondType::Consistent, false, self.reason, &self.message);
        }
        let from = match self.reason {
            Reason::VolumeSnapshotCut => "once its copy of the VolumeSnapshot's cut has finished",
            _ => "once its copy has finished under the member's fsyncLock",
        };
        Cond::unknown(
            CondType::Consistent,
            Reason::CaptureUnderWay,
            format!("attempt {attempt} is under way: this turns True {from}"),
        )
    }
}

/// The Consistent condition of a Snapshot whose copy finished, from what status records of its
/// capture (never from the job's plan): True only with the lock held or the cut taken. Pure.
fn achieved(capture: Option<&CaptureStatus>, prev: &SnapshotStatus) -> Cond {
    let locked = capture.and_then(|c| c.lock.as_ref()).filter(|l| {
        l.locked_at.is_some() && matches!(l.state, LockState::Released | LockState::UnlockFailed)
    });
    let attempt = capture.map_or(prev.attempts, |c| c.attempt);
    let missing = |what: &str| {
        Cond::new(
            CondType::Consistent,
            false,
            Reason::NotCaptured,
            format!(
                "attempt {attempt} finished, but no {what} is recorded for its copy: treat it as a copy of a running member and take a new Snapshot"
            ),
        )
    };
    match capture.map(|c| c.mode) {
        Some(CaptureMode::FsyncLock) => match locked {
            Some(l) => Cond::new(
                CondType::Consistent,
                true,
                Reason::CopiedUnderLock,
                format!(
                    "copied while member {} was fsyncLocked (writes held {:.1} s)",
                    l.member,
                    l.held_seconds.unwrap_or_default()
                ),
            ),
            None => missing("fsyncLock on the member"),
        },
        Some(CaptureMode::VolumeSnapshot) => {
            let Some(vs) = capture.and_then(|c| c.volume_snapshot.as_deref()) else {
                return missing("VolumeSnapshot");
            };
            let at = capture
                .and_then(|c| c.point_in_time.as_ref())
                .map(|t| format!(" cut at {}", t.0))
                .unwrap_or_default();
            let how = match locked {
                Some(l) => format!(" while member {} was fsyncLocked", l.member),
                None => " (crash-consistent: mongod recovers from it when its journal is on that volume, its default layout)".into(),
            };
            Cond::new(
                CondType::Consistent,
                true,
                Reason::VolumeSnapshotCut,
                format!("copied from VolumeSnapshot {vs}{at}{how}"),
            )
        }
        // A live copy: as its start said.
        _ => kept_consistency(prev)
            .filter(|c| c.known && !c.status)
            .unwrap_or_else(|| {
                Cond::new(
                    CondType::Consistent,
                    false,
                    Reason::CopiedLive,
                    "the files were copied as they are from the member",
                )
            }),
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
            c.into_iter()
                .chain([consistency.pending(*attempt)])
                .collect()
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
            c.into_iter()
                .chain([consistency.pending(*attempt)])
                .collect()
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
            s.completion_time = Some(finished.clone().unwrap_or_else(|| now_t.clone()));
            succeeded(&mut s, result, prev)
        }
        Step::Failed {
            reason,
            message,
            finished,
        } => {
            s.phase = RunPhase::Failed;
            s.completion_time = Some(finished.clone().unwrap_or_else(|| now_t.clone()));
            s.message = Some(message.clone());
            let mut conds = conditions::finished(false, *reason, message);
            conds.push(Cond::new(
                CondType::Consistent,
                false,
                Reason::NotCaptured,
                "no complete copy was made: the run failed (see condition Failed)",
            ));
            conds
        }
    };
    // The Consistent condition stays as the attempt's capture set it.
    if !conds.iter().any(|c| c.type_ == CondType::Consistent) {
        conds.extend(kept_consistency(prev));
    }
    s.conditions = merge(&prev.conditions, &conds, generation, &now_t);
    s
}

/// A Succeeded status (its completion time already set) from the agent's `result`, and its
/// conditions: Consistent from what status records of the capture.
fn succeeded(s: &mut SnapshotStatus, result: &SnapshotResult, prev: &SnapshotStatus) -> Vec<Cond> {
    s.phase = RunPhase::Succeeded;
    if s.start_time.is_none() {
        s.start_time = s.completion_time.clone();
    }
    s.repository_snapshot_id = Some(result.id.clone());
    s.key_id = Some(result.key_id.clone());
    s.stats = Some(stats(result));
    let msg = succeeded_message(result);
    s.message = Some(msg.clone());
    let mut conds = conditions::finished(true, Reason::Succeeded, &msg);
    conds.push(achieved(s.capture.as_ref(), prev));
    if let Some(r) = &result.retention {
        conds.push(retention_condition(r));
    }
    conds
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
    let reason = Reason::parse(&c.reason)?;
    Some(match c.status.as_str() {
        crate::api::common::condition_status::TRUE => {
            Cond::new(CondType::Consistent, true, reason, c.message.clone())
        }
        crate::api::common::condition_status::FALSE => {
            Cond::new(CondType::Consistent, false, reason, c.message.clone())
        }
        _ => Cond::unknown(CondType::Consistent, reason, c.message.clone()),
    })
}

/// The RetentionApplied condition from the agent's retention pass.
pub fn retention_condition(r: &RetentionResult) -> Cond {
    match &r.error {
        Some(e) => Cond::new(
            CondType::RetentionApplied,
            false,
            Reason::PruneFailed,
            format!("the snapshot is complete, but the retention policy was not applied: {e}"),
        ),
        None => Cond::new(
            CondType::RetentionApplied,
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
            mode: CaptureMode::StoppedMember,
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

    fn fsync_lock_capture() -> Capture {
        Capture::FsyncLock {
            lock: crate::controller::job_spec::consistency::LockSpec {
                max_lock: std::time::Duration::from_secs(60),
                allow_primary: false,
            },
        }
    }

    fn succeeded() -> Step {
        Step::Succeeded {
            result: SnapshotResult {
                id: "abc".into(),
                files: 1,
                logical_bytes: 1,
                stored_bytes: 1,
                key_id: "local:k".into(),
                retention: None,
            },
            finished: None,
        }
    }

    /// #29: a run whose fsyncLock was never taken (the member refused the connection) never
    /// says Consistent=True: Unknown while under way, False when it fails; True only when the
    /// copy finished with a lock recorded as taken and released.
    #[test]
    fn consistent_follows_what_the_run_did_never_the_plan() {
        let capture = CaptureStatus {
            mode: CaptureMode::FsyncLock,
            attempt: 1,
            ..Default::default()
        };
        let quiescing = next_status(
            &SnapshotStatus::default(),
            &Step::Quiescing {
                attempt: 1,
                member: member(),
                capture: capture.clone(),
                consistency: Consistency::of(&fsync_lock_capture()),
                message: "locking writes on member rs0-1".into(),
            },
            Some(1),
            now(),
        );
        assert_eq!(cond(&quiescing, "Consistent"), "Unknown CaptureUnderWay");
        let failed = next_status(
            &quiescing,
            &Step::Failed {
                reason: Reason::LockFailed,
                message: "could not connect to mongod on member rs0-1".into(),
                finished: None,
            },
            Some(1),
            now(),
        );
        assert_eq!(cond(&failed, "Consistent"), "False NotCaptured");
        // Succeeded, but status records no lock taken: not True either.
        let started = next_status(
            &quiescing,
            &Step::Started {
                attempt: 1,
                pod: "s-1".into(),
                member: member(),
                retry_after: None,
                capture: capture.clone(),
                consistency: Consistency::of(&fsync_lock_capture()),
            },
            Some(1),
            now(),
        );
        assert_eq!(cond(&started, "Consistent"), "Unknown CaptureUnderWay");
        let unlocked = next_status(&started, &succeeded(), Some(1), now());
        assert_eq!(cond(&unlocked, "Consistent"), "False NotCaptured");
        // The lock taken and released around the copy: True, naming the member.
        let mut held = started.clone();
        held.capture = Some(CaptureStatus {
            lock: Some(crate::api::snapshot::LockStatus {
                member: "rs0-1".into(),
                state: LockState::Released,
                locked_at: Some(Time(now())),
                held_seconds: Some(2.5),
                ..Default::default()
            }),
            ..capture
        });
        let done = next_status(&held, &succeeded(), Some(1), now());
        assert_eq!(cond(&done, "Consistent"), "True CopiedUnderLock");
        let msg = &done.conditions.iter().find(|c| c.type_ == "Consistent");
        assert!(
            msg.is_some_and(|c| c.message.contains("member rs0-1 was fsyncLocked")),
            "{msg:?}"
        );
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
