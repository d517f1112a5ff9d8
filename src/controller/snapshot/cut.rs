//! Starting an attempt in mode volumeSnapshot: create its VolumeSnapshot, under a lock on the
//! member when `quiesce` says (lock, cut, unlock: the lock lasts as long as the cut). The pod
//! that copies it starts once plan() sees it ready ([`super::start::start_from_volume`]).

use std::time::Duration;

use kube::api::DynamicObject;
use kube::{Api, ResourceExt};

use super::build::status::Step;
use super::build::volume::{self, cut_or_failed};
use super::locking::{self, Lock};
use super::plan::capturing;
use super::start::{Started, wait};
use super::{CAPTURE_RECHECK, Error};
use crate::api::snapshot::{CaptureStatus, MemberChoice};
use crate::api::{Snapshot, SnapshotStatus};
use crate::controller::agent::job::Blocked;
use crate::controller::context::Context;
use crate::controller::execute::{Change, execute};
use crate::controller::hold::HoldKey;
use crate::controller::job_spec::consistency::Capture;
use crate::controller::reason::Reason;

/// How often the cut of a VolumeSnapshot taken under a lock is looked at.
const CUT_POLL: Duration = Duration::from_millis(200);

/// The VolumeSnapshot of an attempt, and what its status step says.
pub(super) struct Cut<'a> {
    pub attempt: u32,
    pub vs: &'a DynamicObject,
    pub member: &'a MemberChoice,
    pub capture: &'a Capture,
    /// The previous attempt's failure, for the message.
    pub retry_after: Option<&'a str>,
}

/// Create the attempt's VolumeSnapshot, under `lock` if there is one. A lock that was not
/// taken, or ended before the cut, fails the attempt.
pub(super) async fn start_cut(
    snap: &Snapshot,
    prev: &mut SnapshotStatus,
    cut: Cut<'_>,
    lock: Option<Lock>,
    ctx: &Context,
) -> Result<Started, Error> {
    let vs = cut.vs;
    let capture_step = || {
        let mut step = capturing(cut.attempt, vs, cut.capture);
        if let (Step::Capturing { message, .. }, Some(why)) = (&mut step, cut.retry_after) {
            *message = format!(
                "attempt {} failed: {why}; retrying: {message}",
                cut.attempt - 1
            );
        }
        Started::Step(step, Some(CAPTURE_RECHECK))
    };
    let blocked = |b: Blocked| Started::from(wait(b));
    let Some(lock) = lock else {
        return Ok(match cut_volume(snap, vs, None, ctx).await? {
            Ok(()) => capture_step(),
            Err(b) => blocked(b),
        });
    };
    let held = CaptureStatus {
        mode: cut.capture.mode(),
        attempt: cut.attempt,
        volume_snapshot: Some(vs.name_any()),
        lock: Some(locking::asking(&cut.member.pod)),
        ..Default::default()
    };
    let message = format!(
        "locking writes on member {} (fsyncLock) to cut VolumeSnapshot {}",
        cut.member.pod,
        vs.name_any()
    );
    let (key, locked) = match locking::lock_member(
        snap,
        prev,
        lock,
        held,
        cut.member,
        cut.capture,
        message,
        // Released by this function once the cut is made.
        std::future::pending(),
        ctx,
    )
    .await?
    {
        Ok(l) => l,
        Err(why) => return Ok(Started::AttemptFailed(why)),
    };
    let made = cut_volume(snap, vs, Some(&key), ctx).await;
    let released = locking::release(snap, &key, &locked, cut.capture.mode(), ctx).await;
    if let Some((after, _)) = &released {
        locking::set_lock(prev, after.clone());
    }
    Ok(match (made?, released) {
        (Err(b), _) => blocked(b),
        (Ok(()), Some((_, Err(e)))) => {
            Started::AttemptFailed(format!("VolumeSnapshot {}: {e}", vs.name_any()))
        }
        (Ok(()), _) => capture_step(),
    })
}

/// Create VolumeSnapshot `vs` (an existing one of the same name is this attempt's). Under a
/// lock (`held`), wait until the snapshotter has cut it, failed it, or the lock ended.
async fn cut_volume(
    snap: &Snapshot,
    vs: &DynamicObject,
    held: Option<&HoldKey>,
    ctx: &Context,
) -> Result<Result<(), Blocked>, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let resource = volume::api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &resource);
    let create = vec![Change::create_dynamic("apply_capture", vs, &resource)];
    match execute(ctx, snap, create).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(404) => {
            return Ok(Err(Blocked {
                reason: Reason::VolumeSnapshotsUnavailable,
                message: "spec.source.consistency.mode volumeSnapshot: this cluster serves no snapshot.storage.k8s.io/v1 VolumeSnapshot API (install the CSI external-snapshotter and a driver that supports snapshots)".into(),
            }));
        }
        Err(e) => return Err(Error::execute(snap)(e)),
    }
    let Some(key) = held else {
        return Ok(Ok(()));
    };
    // The lock's own deadline (maxLockSeconds) ends this wait: its task stops on it.
    while !ctx.holds.ended(key) {
        match api.get_opt(&vs.name_any()).await {
            Ok(Some(now)) if cut_or_failed(&now) => break,
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "reading the VolumeSnapshot being cut"),
        }
        tokio::time::sleep(CUT_POLL).await;
    }
    Ok(Ok(()))
}
