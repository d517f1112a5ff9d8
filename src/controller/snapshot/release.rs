//! Releasing volume captures: the VolumeSnapshots, the claims restored from them and the
//! finished pods that read those claims, as [`leftover_captures`](super::plan) names them.
//! Each is deleted by uid (never an object that took the name since), and a missing one is
//! already gone. The Snapshot's owner reference also lets garbage collection take them with it.

use super::Error;
use super::build::volume::api_resource;
use super::plan::Leftovers;
use crate::api::Snapshot;
use crate::controller::context::Context;
use crate::controller::execute::{Change, execute};

pub(super) async fn release(
    snap: &Snapshot,
    leftovers: Leftovers<'_>,
    ctx: &Context,
) -> Result<(), Error> {
    execute(ctx, snap, release_changes(leftovers))
        .await
        .map_err(Error::execute(snap))
}

/// The deletions, in order: the pods first (a claim stays in use while a pod that mounts it
/// exists), then the claims, then the VolumeSnapshots. Pure.
pub(super) fn release_changes(leftovers: Leftovers<'_>) -> Vec<Change> {
    let stage = "clean_up_capture";
    let pods = leftovers.pods.iter().map(|p| Change::delete(stage, *p));
    let claims = leftovers.clones.iter().map(|c| Change::delete(stage, *c));
    let resource = api_resource();
    let volumes = leftovers
        .volumes
        .iter()
        .map(|v| Change::delete_dynamic(stage, v, &resource));
    pods.chain(claims).chain(volumes).collect()
}
