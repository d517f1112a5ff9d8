//! The Snapshot controller's fsync locks: where a member is reached, what status says about a
//! lock as it is taken and released (with an Event and the lock-duration metric), and how a
//! lock whose holder was lost (the operator restarted while it held it) is found and undone.
//!
//! The lock itself is [`crate::mongo::lock`]; the tasks holding locks between reconciles are
//! [`super::hold`].

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::build::status::{Consistency, Step, next_status};
use super::dereference::{connection_settings, list_member_pods};
use super::{Error, write_status};
use crate::api::snapshot::CaptureMode;
use crate::api::snapshot::{CaptureStatus, LockState, LockStatus, MemberChoice};
use crate::api::{BackupJob, Snapshot, SnapshotStatus};
use crate::controller::agent::job::Blocked;
use crate::controller::context::Context;
use crate::controller::hold::HoldKey;
use crate::controller::job_spec::consistency::Capture;
use crate::controller::reason::Reason;
use crate::mongo::lock::{LockError, LockLimits, LockReport, LockTarget, unlock_abandoned};
use crate::mongo::{self, ConnectionSettings};

/// How often a held lock asks its member whether it is still a secondary.
pub(super) const LOCK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a Snapshot copying under a lock looks at the lock (an election or an overrun ends
/// it without any change to the Snapshot's objects).
pub(super) const LOCK_RECHECK: Duration = Duration::from_secs(2);
/// A member lock to take: where, how, and for how long at most.
pub(super) struct Lock {
    pub target: LockTarget,
    pub settings: ConnectionSettings,
    pub max_lock: Duration,
}

/// The lock `capture` takes on member `member` (at `host`), if any. Pure.
pub(super) fn member_lock(
    job: &BackupJob,
    capture: &Capture,
    member: &str,
    host: Option<String>,
    settings: ConnectionSettings,
) -> Result<Option<Lock>, Blocked> {
    let Some(spec) = capture.lock() else {
        return Ok(None);
    };
    Ok(Some(Lock {
        target: target(job, member, host, spec.allow_primary)?,
        settings,
        max_lock: spec.max_lock,
    }))
}

/// Lock the member for `held`'s attempt: write the Quiescing status first (so that a lock
/// whose holder is lost is found) and make it `prev`, then take the lock, held until released
/// or until `until` ends. Returns the lock's key and status once taken, or why it was not
/// (recorded in `prev` and announced).
#[allow(clippy::too_many_arguments)]
pub(super) async fn lock_member(
    snap: &Snapshot,
    prev: &mut SnapshotStatus,
    lock: Lock,
    held: CaptureStatus,
    member: &MemberChoice,
    capture: &Capture,
    message: String,
    until: impl Future<Output = Result<(), String>> + Send + 'static,
    ctx: &Context,
) -> Result<Result<(HoldKey, LockStatus), String>, Error> {
    let attempt = held.attempt;
    let asked = held.lock.clone().unwrap_or_default();
    let step = Step::Quiescing {
        attempt,
        member: member.clone(),
        capture: held,
        consistency: Consistency::of(capture),
        message,
    };
    let status = next_status(
        prev,
        &step,
        snap.metadata.generation,
        jiff::Timestamp::now(),
    );
    write_status(snap, &status, ctx).await?;
    ctx.announce(snap, &prev.conditions, &status.conditions)
        .await;
    *prev = status;
    let key = key(snap, attempt);
    let taken_at = ctx
        .holds
        .take(
            key.clone(),
            lock.target,
            lock.settings,
            limits(lock.max_lock),
            until,
        )
        .await;
    tracing::info!(member = %member.pod, attempt, outcome = ?taken_at, "member lock asked for");
    match taken_at {
        Ok(before) => Ok(Ok((key, taken(&asked, before, jiff::Timestamp::now())))),
        Err(e) => {
            let why = e.to_string();
            let after = settled(&asked, &Err(e), jiff::Timestamp::now());
            announce(snap, attempt, &after, capture.mode(), ctx).await;
            set_lock(prev, after);
            Ok(Err(why))
        }
    }
}

/// Ends when pod `name` of `ns` has finished (Ok: its copy is done) or is gone or being
/// deleted (Err: the copy did not finish under the lock). Checked every few seconds; a copy
/// whose Snapshot was deleted (the reconciles stop) does not keep its member locked until
/// maxLockSeconds.
pub(super) async fn pod_done(client: kube::Client, ns: String, name: String) -> Result<(), String> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, &ns);
    loop {
        tokio::time::sleep(POD_CHECK).await;
        match pods.get_opt(&name).await {
            Ok(None) => return Err(format!("pod {name} is gone")),
            Ok(Some(p)) if p.metadata.deletion_timestamp.is_some() => {
                return Err(format!("pod {name} is being deleted"));
            }
            Ok(Some(p)) => {
                let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                if phase == "Succeeded" || phase == "Failed" {
                    return Ok(());
                }
            }
            Err(e) => tracing::debug!(error = %e, pod = %name, "checking a locked copy's pod"),
        }
    }
}

/// Record `lock` as the current attempt's in `prev`.
pub(super) fn set_lock(prev: &mut SnapshotStatus, lock: LockStatus) {
    if let Some(c) = prev.capture.as_mut() {
        c.lock = Some(lock);
    }
}

/// How often a lock task looks at its copy's pod.
const POD_CHECK: Duration = Duration::from_secs(3);

/// How often an unlock that failed is tried again.
pub(super) const UNLOCK_RETRY: Duration = Duration::from_secs(30);

/// The key of attempt `attempt`'s lock of `snap`.
pub(super) fn key(snap: &Snapshot, attempt: u32) -> HoldKey {
    (snap.uid().unwrap_or_default(), attempt)
}

/// The key and the lock of the current attempt, as status records it.
pub(super) fn recorded(snap: &Snapshot, status: &SnapshotStatus) -> Option<(HoldKey, LockStatus)> {
    let c = status.capture.as_ref()?;
    Some((key(snap, c.attempt), c.lock.clone()?))
}

/// Where member `member` (at `host`) is locked, by the job's connection. Pure.
pub(super) fn target(
    job: &BackupJob,
    member: &str,
    host: Option<String>,
    allow_primary: bool,
) -> Result<LockTarget, Blocked> {
    let port = job
        .spec
        .source
        .connection
        .as_ref()
        .map_or(27017, |c| c.port);
    let host = host.ok_or_else(|| Blocked {
        reason: Reason::NoSyncSource,
        message: format!("member pod {member} has no address yet: it cannot be locked"),
    })?;
    Ok(LockTarget {
        member: member.to_string(),
        host,
        port,
        allow_primary,
    })
}

/// The limits of a lock that may last `max_lock`.
pub(super) fn limits(max_lock: Duration) -> LockLimits {
    LockLimits {
        max_lock,
        check_every: LOCK_CHECK_EVERY,
    }
}

/// A lock about to be asked for.
pub(super) fn asking(member: &str) -> LockStatus {
    LockStatus {
        member: member.to_string(),
        state: LockState::Locking,
        ..Default::default()
    }
}

/// `lock` once taken, with the member's count before it.
pub(super) fn taken(lock: &LockStatus, count_before: i64, now: jiff::Timestamp) -> LockStatus {
    LockStatus {
        state: LockState::Locked,
        count_before: Some(count_before),
        locked_at: Some(Time(now)),
        ..lock.clone()
    }
}

/// `lock` after its holder ended it with `result`. Pure.
pub(super) fn settled(
    lock: &LockStatus,
    result: &Result<LockReport, LockError>,
    now: jiff::Timestamp,
) -> LockStatus {
    let mut l = lock.clone();
    match result {
        Ok(report) => {
            l.state = LockState::Released;
            l.held_seconds = Some(round_ms(report.held.as_secs_f64()));
            l.released_at = Some(Time(now));
            l.message = None;
            // From the holder's own report, not only the record: a record read from a cache
            // behind this process's writes may still be the write-ahead (Locking, no time),
            // and Consistent=True needs to see when the lock was taken (seen in CI:
            // lock_e2e's copy said NotCaptured after a lock held around the whole copy).
            l.count_before = Some(report.count_before);
            if l.locked_at.is_none() {
                l.locked_at = now.checked_sub(report.held).ok().map(Time);
            }
        }
        Err(e @ LockError::Unlock { .. }) => {
            l.state = LockState::UnlockFailed;
            l.message = Some(e.to_string());
        }
        Err(e) => {
            // Every other error has unlocked (or never locked) before it was returned.
            l.state = LockState::Failed;
            if l.locked_at.is_some() {
                l.released_at = Some(Time(now));
                l.held_seconds = l
                    .locked_at
                    .as_ref()
                    .map(|t| round_ms(now.duration_since(t.0).as_secs_f64().max(0.0)));
            }
            l.message = Some(e.to_string());
        }
    }
    l
}

fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// What the lock was for, as the metric's label: the cut of a VolumeSnapshot or the copy.
fn purpose(mode: CaptureMode) -> &'static str {
    if mode == CaptureMode::VolumeSnapshot {
        "cut"
    } else {
        "copy"
    }
}

/// Release this process's lock `key` (None if it holds none), and say so: the lock's new
/// status, an Event with how long writes were held, the metric.
pub(super) async fn release(
    snap: &Snapshot,
    key: &HoldKey,
    lock: &LockStatus,
    mode: CaptureMode,
    ctx: &Context,
) -> Option<(LockStatus, Result<LockReport, LockError>)> {
    let result = ctx.holds.release(key, &lock.member).await?;
    tracing::info!(member = %lock.member, attempt = key.1, outcome = ?result, "member lock released");
    let now = jiff::Timestamp::now();
    let after = settled(lock, &result, now);
    announce(snap, key.1, &after, mode, ctx).await;
    Some((after, result))
}

/// The Event (and the metric) for a lock that ended as `lock` says.
pub(super) async fn announce(
    snap: &Snapshot,
    attempt: u32,
    lock: &LockStatus,
    mode: CaptureMode,
    ctx: &Context,
) {
    let purpose = purpose(mode);
    let held = lock
        .held_seconds
        .map(|s| format!("writes were held {s:.3} s"))
        .unwrap_or_else(|| "the lock was not taken".into());
    match lock.state {
        LockState::Released => {
            ctx.metrics
                .member_locked(purpose, lock.held_seconds.unwrap_or_default());
            let note = format!(
                "fsyncUnlock of member {} after the {purpose} of attempt {attempt}: {held}",
                lock.member
            );
            ctx.event(snap, Reason::MemberUnlocked, note).await;
        }
        LockState::Recovered => {
            let note = format!(
                "member {}: {}",
                lock.member,
                lock.message.clone().unwrap_or_default()
            );
            ctx.event(snap, Reason::MemberUnlocked, note).await;
        }
        LockState::Failed => {
            if let Some(s) = lock.held_seconds {
                ctx.metrics.member_locked(purpose, s);
            }
            let note = format!(
                "fsync lock of member {} for the {purpose} of attempt {attempt}: {} ({held})",
                lock.member,
                lock.message.clone().unwrap_or_default()
            );
            ctx.event(snap, Reason::LockFailed, note).await;
        }
        LockState::UnlockFailed => {
            let note = format!(
                "member {}: {}; the operator tries again every {} s",
                lock.member,
                lock.message.clone().unwrap_or_default(),
                UNLOCK_RETRY.as_secs()
            );
            ctx.event(snap, Reason::UnlockFailed, note).await;
        }
        LockState::Locking | LockState::Locked => {}
    }
}

/// Whether status says the member may still be locked by a lock this process does not hold:
/// its holder was lost (the operator restarted), or its unlock failed.
pub(super) fn lost(snap: &Snapshot, status: &SnapshotStatus, ctx: &Context) -> bool {
    recorded(snap, status)
        .is_some_and(|(key, lock)| lock.state.may_be_held() && !ctx.holds.holds(&key))
}

/// Unlock the member of a lost lock (see [`lost`]): down to the count before it when that was
/// recorded, else at most once. Returns the lock's new status (announced).
pub(super) async fn recover(
    snap: &Snapshot,
    job: Option<&BackupJob>,
    lock: &LockStatus,
    mode: CaptureMode,
    attempt: u32,
    ctx: &Context,
) -> Result<LockStatus, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let name = snap.name_any();
    let mut after = lock.clone();
    let outcome = match job {
        None => Err(format!(
            "BackupJob {} is gone: its connection to reach the member is unknown",
            snap.spec.backup_job_ref.name
        )),
        Some(job) => {
            let pods = list_member_pods(&ctx.client, &ns, &job.spec.source)
                .await
                .map_err(Error::dereference(&name, "member pods"))?
                .unwrap_or_default();
            let members = mongo::member_pods(
                &pods,
                &job.spec.source.data_volume_name,
                &ctx.config.cluster_domain,
            );
            match members.iter().find(|m| m.name == lock.member) {
                // A member that restarted holds no lock: fsyncLock does not survive mongod.
                None => Ok(false),
                Some(m) => {
                    let settings: ConnectionSettings =
                        connection_settings(&ctx.client, &ns, &job.spec.source, ctx)
                            .await
                            .map_err(Error::dereference(&name, "MongoDB credentials"))?;
                    match target(job, &m.name, m.host.clone(), true) {
                        Err(b) => Err(b.message),
                        Ok(t) => unlock_abandoned(&t, &settings, lock.count_before)
                            .await
                            .map_err(|e| e.to_string()),
                    }
                }
            }
        }
    };
    let now = Time(jiff::Timestamp::now());
    match outcome {
        Ok(was_locked) => {
            after.state = LockState::Recovered;
            after.released_at = Some(now.clone());
            after.held_seconds = lock
                .locked_at
                .as_ref()
                .map(|t| round_ms(now.0.duration_since(t.0).as_secs_f64().max(0.0)));
            after.message = Some(if was_locked {
                format!(
                    "the holder of attempt {attempt}'s lock was lost (operator restarted) while the member was locked; the operator unlocked it"
                )
            } else {
                format!(
                    "the holder of attempt {attempt}'s lock was lost (operator restarted); the member was found not locked"
                )
            });
        }
        Err(why) => {
            after.state = LockState::UnlockFailed;
            after.message = Some(format!(
                "the holder of attempt {attempt}'s lock was lost, and unlocking the member failed: {why}"
            ));
        }
    }
    if after.state != lock.state || after.message != lock.message {
        announce(snap, attempt, &after, mode, ctx).await;
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The release seen by a reconcile whose status still holds the write-ahead record
    /// (Locking, no time): the released lock says when it was taken and the count before it,
    /// from the holder's report.
    #[test]
    fn a_lock_released_from_a_stale_record_still_says_when_it_was_taken() {
        let t0: jiff::Timestamp = "2026-12-02T03:00:10Z".parse().expect("time");
        let ok = settled(
            &asking("rs0-1"),
            &Ok(LockReport {
                held: Duration::from_secs(4),
                count_before: 1,
            }),
            t0,
        );
        assert_eq!(ok.state, LockState::Released);
        assert_eq!(
            ok.locked_at,
            Some(Time("2026-12-02T03:00:06Z".parse().expect("time")))
        );
        assert_eq!(ok.count_before, Some(1));
        assert_eq!(ok.held_seconds, Some(4.0));
    }

    #[test]
    fn a_lock_settles_by_how_it_ended() {
        let t0: jiff::Timestamp = "2026-12-02T03:00:00Z".parse().expect("time");
        let locked = taken(&asking("rs0-1"), 0, t0);
        assert_eq!(locked.state, LockState::Locked);
        let later = t0 + jiff::SignedDuration::from_millis(2500);
        let ok = settled(
            &locked,
            &Ok(LockReport {
                held: Duration::from_millis(2400),
                count_before: 0,
            }),
            later,
        );
        assert_eq!(
            (ok.state, ok.held_seconds),
            (LockState::Released, Some(2.4))
        );
        let overran = settled(
            &locked,
            &Err(LockError::Overran {
                member: "rs0-1".into(),
                limit_secs: 2,
            }),
            later,
        );
        assert_eq!(overran.state, LockState::Failed);
        assert!(!overran.state.may_be_held());
        assert_eq!(overran.held_seconds, Some(2.5));
        assert!(
            overran
                .message
                .unwrap_or_default()
                .contains("maxLockSeconds")
        );
        let stuck = settled(
            &locked,
            &Err(LockError::Unlock {
                member: "rs0-1".into(),
                reason: "connection reset".into(),
            }),
            later,
        );
        assert!(
            stuck.state.may_be_held(),
            "an unlock that failed is retried"
        );
        // Never locked: no duration.
        let refused = settled(
            &asking("rs0-1"),
            &Err(LockError::NotSecondary {
                member: "rs0-1".into(),
                role: "PRIMARY".into(),
            }),
            later,
        );
        assert_eq!(
            (refused.state, refused.held_seconds),
            (LockState::Failed, None)
        );
    }
}
