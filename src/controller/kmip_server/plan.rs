//! Plan, pure: from what the KMIP side observed, the next status, the changes (the status
//! write and a rotation's Event) and when to look again.

use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action;

use super::build::{Observed, build_status};
use crate::api::KmipServer;
use crate::api::kmip_server::KmipServerStatus;
use crate::controller::execute::Change;
use crate::controller::job_spec::schedule::parse_period;
use crate::controller::reason::Reason;

/// What a reconcile of a KmipServer decided.
#[derive(Debug)]
pub struct Outcome {
    pub status: KmipServerStatus,
    /// The status write, then a rotation's Event.
    pub changes: Vec<Change>,
    pub requeue: Action,
}

pub fn plan(ks: &KmipServer, obs: &Observed, now: Timestamp) -> Outcome {
    let prev = ks.status.clone().unwrap_or_default();
    let status = build_status(&prev, &ks.spec, obs, ks.metadata.generation, now);
    let mut changes = vec![Change::status(ks, &status)];
    match (&obs.rotated, &obs.replaced) {
        (Some((old, new)), None) => changes.push(Change::event(
            Reason::Rotated,
            format!(
                "master key rotated from {old} to {new}; {old} is kept (never revoked) for the snapshots that need it"
            ),
        )),
        (Some((old, new)), Some(state)) => changes.push(Change::event(
            Reason::KeyReplaced,
            format!(
                "master key {old} is {state} on the KMIP server and protects nothing new: replaced by a new key {new}; {old} stays listed for the snapshots that need it"
            ),
        )),
        _ => {}
    }
    // Come back at the poll interval, or at the next rotation if sooner.
    let poll = parse_period(&ks.spec.poll_interval)
        .map(|d| d.unsigned_abs())
        .unwrap_or(Duration::from_secs(300));
    let until_rotation = status
        .next_rotation_time
        .as_ref()
        .map(|t| {
            let d = t.0.duration_since(now);
            if d.is_negative() {
                Duration::ZERO
            } else {
                d.unsigned_abs()
            }
        })
        .unwrap_or(poll);
    let requeue = Action::requeue(poll.min(until_rotation).max(Duration::from_secs(1)));
    Outcome {
        status,
        changes,
        requeue,
    }
}
