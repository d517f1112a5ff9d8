//! The Snapshot controller: one run of a BackupJob. It waits its turn (one running Snapshot per
//! job), chooses the member to copy from, starts the snapshot pod on that member's node, turns
//! the pod's phases into status, and retries a failed pod up to `spec.backoffLimit` times.
//!
//! dereference (job, sibling Snapshots, own pods) -> plan (pure: what the pod's state means)
//! -> [to start a pod: dereference members and references, ask MongoDB, validate, choose
//! (pure), build the pod (pure), apply RBAC and pod] -> update status, with Events.

pub mod build;
mod cut;
mod dereference;
mod imported;
mod locking;
pub mod ownership;
mod plan;
mod release;
mod start;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use self::build::status::{Step, next_status};
use self::dereference::{World, dereference};
use self::plan::{
    Plan, after_failure, forgotten_siblings, leftover_captures, plan, recover_from_pods,
};
use self::release::release;
use self::start::{Started, start_attempt, start_from_volume};
use super::agent::node::{needs_stopping, stop};
use super::agent::owning_agent_pods;
use super::context::Context;
use super::execute::{Change, ExecuteError, execute};
use super::kube_api::scoped_api;
use super::reason::Reason;
use crate::api::agent::SnapshotResult;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, Snapshot, SnapshotStatus};
use crate::mongo::lock::LockError;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "snapshot";

/// How often a waiting Snapshot looks again at what it waits for.
const RECHECK: Duration = Duration::from_secs(30);
/// How often a Snapshot whose VolumeSnapshot is being cut looks again (VolumeSnapshots are not
/// watched: a cluster without the snapshot API must not break the controller's watches).
const CAPTURE_RECHECK: Duration = Duration::from_secs(2);
/// How often a Snapshot queued behind another of its job looks again.
const QUEUE_RECHECK: Duration = Duration::from_secs(5);

/// A reconcile failure, by stage. A Snapshot that cannot start (missing job or Secret, no
/// member to copy from, KMIP) is not an error: that becomes its status.
#[derive(Debug, thiserror::Error, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Error {
    #[error("Snapshot {snapshot}: reading {what}: {source}")]
    Dereference {
        snapshot: String,
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    /// A change the reconcile asked for failed (its stage is the metrics label).
    #[error("Snapshot {snapshot}: {source}")]
    Execute {
        snapshot: String,
        #[source]
        source: ExecuteError,
    },
}

impl Error {
    /// The stage, as a metrics label: the variant's name in snake case.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Execute { source, .. } => source.stage,
            other => other.into(),
        }
    }

    /// An error for a failed change while reconciling Snapshot `snapshot`.
    fn execute(snapshot: &Snapshot) -> impl FnOnce(ExecuteError) -> Error + use<> {
        let snapshot = snapshot.name_any();
        move |source| Error::Execute { snapshot, source }
    }

    /// An error for a failed read of `what` while reconciling Snapshot `snapshot`.
    fn dereference(snapshot: &str, what: &'static str) -> impl FnOnce(kube::Error) -> Error {
        let snapshot = snapshot.to_string();
        move |source| Error::Dereference {
            snapshot,
            what,
            source,
        }
    }
}

/// The Snapshot controller's stream; it also wakes for every change of a snapshot pod.
pub fn controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    use futures::StreamExt;
    let ctl = owning_agent_pods::<Snapshot>(&ctx.client, namespace.as_deref(), "snapshot");
    ctx.metrics.watch_snapshots(ctl.store());
    // A job deleted, re-created or changed wakes its Snapshots (orphaned, adopted, owned).
    let store = ctl.store();
    let jobs = ownership::ownership_changes(scoped_api(&ctx.client, namespace.as_deref()));
    ctl.watches_stream(
        super::kube_api::quiet(jobs, "BackupJob".into()),
        move |job: BackupJob| {
            let ns = job.namespace();
            store
                .state()
                .iter()
                .filter(|s| s.namespace() == ns && s.spec.backup_job_ref.name == job.name_any())
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        },
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .map(super::kube_api::log_stream_error(CONTROLLER))
}

fn error_policy(snap: Arc<Snapshot>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_failure(CONTROLLER, snap.as_ref(), err.category(), err)
}

#[tracing::instrument(name = "reconcile", skip_all, fields(
    controller = CONTROLLER,
    namespace = %snap.namespace().unwrap_or_default(),
    name = %snap.name_any(),
))]
async fn reconcile(snap: Arc<Snapshot>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let mut prev = snap.status.clone().unwrap_or_default();
    let original = prev.clone();
    if snap.metadata.deletion_timestamp.is_some() || record_imported(&snap, &ctx).await? {
        return Ok(Action::await_change());
    }
    let finished = |s: &SnapshotStatus| matches!(s.phase, RunPhase::Succeeded | RunPhase::Failed);

    // 0. A lock on the member that this process does not hold (its holder was lost when the
    //    operator restarted, or its unlock failed) is undone first; the attempt it was for
    //    cannot count on it any more.
    let lock_lost = undo_lost_lock(&snap, &mut prev, &ctx).await?;
    if lock_lost.is_some() && finished(&prev) {
        write_status(&snap, &prev, &ctx).await?;
        return Ok(Action::requeue(locking::UNLOCK_RETRY));
    }

    if finished(&prev) {
        ownership::finished_ties(&snap, &mut prev, &ctx).await?;
        // A finished Snapshot's volume capture (VolumeSnapshot, restored claim, the pods
        // reading it) goes once; status says when it has.
        if prev
            .capture
            .as_ref()
            .is_some_and(|c| c.volume_snapshot.is_some() && !c.released)
        {
            let world = dereference(&snap, &ctx.client).await?;
            release(&snap, leftover_captures(&world, true, 0), &ctx).await?;
            let mut status = prev.clone();
            if let Some(c) = status.capture.as_mut() {
                c.released = true;
            }
            write_status(&snap, &status, &ctx).await?;
        }
        return Ok(Action::await_change());
    }
    let now = jiff::Timestamp::now();

    // 1. Dereference: the job, its other Snapshots, this Snapshot's pods; the tie to the job.
    let world = dereference(&snap, &ctx.client).await?;
    ownership::tend_ties(&snap, world.job.as_ref(), &ctx).await?;
    let mut prev = recover_from_pods(prev, &world.pods);

    // 2. Plan (pure): what the current pod's state means, or whether a pod may start.
    let mut next = plan(&snap, &prev, &world, now);
    //    The copy's lock (mode fsyncLock) goes once the attempt is over; a lock that ended
    //    before the copy did (maxLockSeconds, an election), or was lost, fails the attempt.
    if let Some(job) = world.job.as_ref() {
        let ended_early = match lock_lost {
            Some(why) => Some(why),
            None => release_copy_lock(&snap, &mut prev, &next, &ctx).await,
        };
        if let Some(why) = ended_early
            && copy_under_way(&next)
        {
            next = after_failure(prev.attempts, job, why, None);
        }
    }
    //    An attempt that is over leaves no pod running unsupervised: one still Pending (past
    //    its pendingTimeout) or still copying (its lock ended) would start or go on later and
    //    write into the repository for an attempt that failed.
    if attempt_over(&next) {
        stop_pods(&snap, &world, &ctx).await?;
    }

    // 3-5. Validate, choose a member, lock it if the capture says, build and apply the pod.
    let Some((step, requeue)) = run_plan(&snap, &world, &mut prev, next, &ctx).await? else {
        return Ok(Action::requeue(RECHECK));
    };

    // 6. Retention: Snapshots whose repository snapshot the agent's retention pass forgot go
    //    too, before the status write (a lost write makes the next reconcile redo this).
    if let Step::Succeeded { result, .. } = &step {
        delete_forgotten(&snap, &world, result, &ctx).await?;
    }

    // 7. Update status, and announce transitions. Captures of earlier attempts go first; the
    //    last one goes once the finished status is written (the branch at the top).
    let status = next_status(&prev, &step, snap.metadata.generation, now);
    let done = finished(&status);
    let current = status
        .capture
        .as_ref()
        .map_or(status.attempts, |c| c.attempt);
    if !done {
        release(&snap, leftover_captures(&world, false, current), &ctx).await?;
    }
    if status != original {
        write_status(&snap, &status, &ctx).await?;
    }
    announce(&snap, &prev, &status, &step, &ctx).await;
    if done && prev.phase != status.phase {
        ctx.metrics.finished(&format!("{:?}", status.phase));
    }
    ctx.reconciled(CONTROLLER, snap.as_ref());
    // A finished volume capture is released by the next reconcile (the status write wakes it;
    // the requeue is for a missed wake).
    if done
        && status
            .capture
            .as_ref()
            .is_some_and(|c| c.volume_snapshot.is_some())
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // A copy under a lock is looked at often: the lock can end without any object changing.
    if locking::recorded(&snap, &status).is_some_and(|(key, _)| ctx.holds.holds(&key)) {
        return Ok(Action::requeue(locking::LOCK_RECHECK));
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Undo a lock status records and this process does not hold (see [`locking::lost`]),
/// recording the outcome in `prev`. Returns what happened to it, if there was one.
async fn undo_lost_lock(
    snap: &Snapshot,
    prev: &mut SnapshotStatus,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    if !locking::lost(snap, prev, ctx) {
        return Ok(None);
    }
    // The cache may be behind this process's own writes (a lock it took and released in the
    // reconcile before): judge by the status as it is now.
    let api: Api<Snapshot> =
        Api::namespaced(ctx.client.clone(), &snap.namespace().unwrap_or_default());
    let Some(fresh) = api
        .get_opt(&snap.name_any())
        .await
        .map_err(Error::dereference(&snap.name_any(), "the Snapshot"))?
    else {
        return Ok(None);
    };
    let now = fresh.status.clone().unwrap_or_default();
    if !locking::lost(&fresh, &now, ctx) {
        // Newer than the cache: reconcile from it.
        *prev = now;
        return Ok(None);
    }
    *prev = now;
    let Some((_, lock)) = locking::recorded(snap, prev) else {
        return Ok(None);
    };
    tracing::warn!(member = %lock.member, state = ?lock.state, "a lock this process does not hold: undoing it");
    let world = dereference(snap, &ctx.client).await?;
    let capture = prev.capture.clone().unwrap_or_default();
    let after = locking::recover(
        snap,
        world.job.as_ref(),
        &lock,
        capture.mode,
        capture.attempt,
        ctx,
    )
    .await?;
    let what = after.message.clone();
    locking::set_lock(prev, after);
    Ok(what)
}

/// Carry out `next`: a step as it is, or start an attempt (validate, choose a member, lock it
/// if the capture says, build and apply the pod). An attempt whose lock was not taken fails,
/// and the next one (if any) starts. None: there is no job to start from.
async fn run_plan(
    snap: &Snapshot,
    world: &World,
    prev: &mut SnapshotStatus,
    mut next: Plan,
    ctx: &Context,
) -> Result<Option<(Step, Option<Duration>)>, Error> {
    loop {
        match (next, world.job.as_ref()) {
            (Plan::Step(step, requeue), _) => return Ok(Some((step, requeue))),
            (
                Plan::Start {
                    attempt,
                    retry_after,
                },
                Some(job),
            ) => match start_attempt(snap, job, prev, attempt, retry_after, ctx).await? {
                Started::Step(step, requeue) => return Ok(Some((step, requeue))),
                Started::AttemptFailed(why) => next = after_failure(attempt, job, why, None),
            },
            (Plan::StartFromVolume { attempt, vs, cut }, Some(job)) => {
                return start_from_volume(snap, job, attempt, &vs, cut, ctx)
                    .await
                    .map(Some);
            }
            // plan() starts nothing without a job.
            (Plan::Start { .. } | Plan::StartFromVolume { .. }, None) => return Ok(None),
        }
    }
}

/// Whether `next` ends the current attempt as failed: a retry, or the Snapshot's failure.
fn attempt_over(next: &Plan) -> bool {
    matches!(
        next,
        Plan::Start {
            retry_after: Some(_),
            ..
        } | Plan::Step(Step::Failed { .. }, _)
    )
}

/// Whether `next` is the current attempt's copy going on or just finished well (what a lock
/// that ended early must fail).
fn copy_under_way(next: &Plan) -> bool {
    matches!(
        next,
        Plan::Step(
            Step::PodPending { .. } | Step::PodRunning { .. } | Step::Succeeded { .. },
            _
        )
    )
}

/// Release the current attempt's copy lock if this process holds it and the attempt is over
/// (or the lock ended on its own), recording it in `prev`. Returns why the lock ended before
/// the copy did, if it did.
async fn release_copy_lock(
    snap: &Snapshot,
    prev: &mut SnapshotStatus,
    next: &Plan,
    ctx: &Context,
) -> Option<String> {
    let (key, lock) = locking::recorded(snap, prev)?;
    if !ctx.holds.holds(&key) {
        return None;
    }
    let copying = matches!(
        next,
        Plan::Step(Step::PodPending { .. } | Step::PodRunning { .. }, _)
    );
    if copying && !ctx.holds.ended(&key) {
        return None;
    }
    let mode = prev.capture.as_ref().map(|c| c.mode).unwrap_or_default();
    let (after, result) = locking::release(snap, &key, &lock, mode, ctx).await?;
    if let Some(c) = prev.capture.as_mut() {
        c.lock = Some(after);
    }
    match result {
        // The copy was whole under the lock; an unlock that failed is retried (step 0).
        Ok(_) | Err(LockError::Unlock { .. }) => None,
        Err(e) => Some(format!("the copy's lock ended before the copy did: {e}")),
    }
}

/// Delete this Snapshot's unfinished pods (a copy that can no longer be consistent).
async fn stop_pods(snap: &Snapshot, world: &World, ctx: &Context) -> Result<(), Error> {
    let changes = world
        .pods
        .iter()
        .filter(|p| needs_stopping(p, world.node.as_ref()))
        .map(|p| stop("stop_pod", p, world.node.as_ref()))
        .collect();
    execute(ctx, snap, changes)
        .await
        .map_err(Error::execute(snap))
}

/// Write `status` (server-side apply of the status subresource).
/// An imported Snapshot (a BackupJob's catalog) without its status: nothing runs, its status
/// is the repository's record, written here. False for any other Snapshot.
async fn record_imported(snap: &Snapshot, ctx: &Context) -> Result<bool, Error> {
    let prev = snap.status.clone().unwrap_or_default();
    if matches!(prev.phase, RunPhase::Succeeded | RunPhase::Failed) {
        return Ok(false);
    }
    let Some(status) = imported::imported_status(snap, jiff::Timestamp::now()) else {
        return Ok(false);
    };
    write_status(snap, &status, ctx).await?;
    ctx.announce(snap, &prev.conditions, &status.conditions)
        .await;
    Ok(true)
}

async fn write_status(
    snap: &Snapshot,
    status: &SnapshotStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let changes = vec![Change::status(snap, status)];
    execute(ctx, snap, changes)
        .await
        .map_err(Error::execute(snap))
}

/// Delete the Snapshots [`forgotten_siblings`] names (each by uid, so a re-created one of the
/// same name stays), with one Event.
async fn delete_forgotten(
    snap: &Snapshot,
    world: &World,
    result: &SnapshotResult,
    ctx: &Context,
) -> Result<(), Error> {
    let doomed = forgotten_siblings(&world.siblings, world.job.as_ref(), result);
    if doomed.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = doomed.iter().map(|s| s.name_any()).collect();
    let mut changes: Vec<Change> = doomed
        .into_iter()
        .map(|s| Change::delete("delete_forgotten", s))
        .collect();
    changes.push(Change::event(
        Reason::ForgottenSnapshotsDeleted,
        format!(
            "deleted Snapshot {}: the BackupJob's retention policy forgot them in the repository",
            names.join(", ")
        ),
    ));
    execute(ctx, snap, changes)
        .await
        .map_err(Error::execute(snap))
}

/// Events: a retry, then the one policy for condition transitions.
async fn announce(
    snap: &Snapshot,
    prev: &crate::api::SnapshotStatus,
    status: &crate::api::SnapshotStatus,
    step: &Step,
    ctx: &Context,
) {
    if let Step::Started {
        retry_after: Some(why),
        attempt,
        pod,
        ..
    } = step
    {
        let note = format!(
            "attempt {} failed: {why}; started pod {pod} (attempt {attempt})",
            attempt - 1
        );
        ctx.event(snap, Reason::Retrying, note).await;
    }
    ctx.announce(snap, &prev.conditions, &status.conditions)
        .await;
}
