//! A Snapshot's tie to its BackupJob (#29): the Snapshot objects describe data that stays in
//! the repository, so by default (snapshotDeletionPolicy Retain) they outlive the job. A
//! Snapshot the job's schedule made carries the job's uid in an annotation and, only with
//! policy Delete, an owner reference (what makes the API server delete it with the job, under
//! any propagation policy: an Argo CD prune deletes in the foreground). A Snapshot whose job is
//! gone is labelled orphaned and says so in condition Orphaned; a job of the same name applied
//! again adopts it (its uid, its policy's owner reference, the label gone).
//!
//! The decisions are pure; [`tend_ties`] carries them out with one metadata merge patch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};

use super::{Error, write_status};
use crate::api::SnapshotStatus;
use crate::api::backup_job::SnapshotDeletionPolicy;
use crate::api::{BackupJob, Snapshot};
use crate::controller::conditions::CondType;
use crate::controller::conditions::{Cond, merge, transitions};
use crate::controller::context::Context;
use crate::controller::execute::{Change, execute};
use crate::controller::names::{MADE_BY_JOB_UID, ORPHANED_LABEL};
use crate::controller::reason::Reason;

/// Whether `snap` was made by a BackupJob's schedule (its uid annotation, or the controller
/// owner reference a Snapshot made before the policy existed has).
pub fn made_by_schedule(snap: &Snapshot) -> bool {
    snap.annotations().contains_key(MADE_BY_JOB_UID) || job_owner(snap).is_some()
}

/// The BackupJob that is `snap`'s controller owner (policy Delete, or made before the policy).
pub(super) fn job_owner(snap: &Snapshot) -> Option<&OwnerReference> {
    snap.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "BackupJob")
}

/// The metadata merge patch that makes `snap` agree with `job` (None: the job does not exist),
/// or None if it already does. Pure.
pub fn metadata_patch(snap: &Snapshot, job: Option<&BackupJob>) -> Option<Value> {
    let orphaned = snap.labels().contains_key(ORPHANED_LABEL);
    let mut meta = Map::new();
    let Some(job) = job else {
        // The job is gone: marked, never deleted here; one the job owns (policy Delete) is
        // the API server's garbage collector's to delete.
        let marked = orphaned || job_owner(snap).is_some();
        return (!marked).then(|| json!({"metadata": {"labels": {ORPHANED_LABEL: "true"}}}));
    };
    if orphaned {
        meta.insert("labels".into(), json!({ ORPHANED_LABEL: null }));
    }
    if made_by_schedule(snap)
        && let Some(owner) = job.controller_owner_ref(&())
    {
        if snap.annotations().get(MADE_BY_JOB_UID) != Some(&owner.uid) {
            meta.insert("annotations".into(), json!({ MADE_BY_JOB_UID: owner.uid }));
        }
        let mut owners: Vec<OwnerReference> = snap
            .owner_references()
            .iter()
            .filter(|o| !(o.controller == Some(true) && o.kind == "BackupJob"))
            .cloned()
            .collect();
        if job.spec.snapshot_deletion_policy == SnapshotDeletionPolicy::Delete {
            owners.push(owner);
        }
        if owners.as_slice() != snap.owner_references() {
            meta.insert("ownerReferences".into(), json!(owners));
        }
    }
    (!meta.is_empty()).then(|| json!({ "metadata": meta }))
}

/// The Orphaned condition of a finished Snapshot: True while its job is gone, False once a job
/// adopted it; None for a Snapshot that was never orphaned. Pure.
pub fn orphaned_condition(snap: &Snapshot, job: Option<&BackupJob>) -> Option<Cond> {
    let name = &snap.spec.backup_job_ref.name;
    let was = snap.labels().contains_key(ORPHANED_LABEL)
        || snap.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == CondType::Orphaned.as_str())
        });
    match job {
        // Owned by the job (policy Delete): deleted with it, not orphaned.
        None if job_owner(snap).is_some() => None,
        None => Some(Cond::new(
            CondType::Orphaned,
            true,
            Reason::BackupJobDeleted,
            format!(
                "BackupJob {name} no longer exists; this snapshot is still in the repository: apply a BackupJob named {name} again to adopt it (and restore through it), or restore with the snapcrypt CLI; deleting this Snapshot leaves the repository as it is"
            ),
        )),
        Some(job) if was => Some(Cond::new(
            CondType::Orphaned,
            false,
            Reason::Adopted,
            format!(
                "adopted by BackupJob {name} (uid {})",
                job.uid().unwrap_or_default()
            ),
        )),
        Some(_) => None,
    }
}

/// `conditions` with `cond` set in place of any condition of its type. Pure.
pub fn with_condition(
    conditions: &[Condition],
    cond: &Cond,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let set = merge(conditions, std::slice::from_ref(cond), generation, now);
    conditions
        .iter()
        .filter(|c| c.type_ != cond.type_.as_str())
        .cloned()
        .chain(set)
        .collect()
}

/// The jobs' changes that matter to their Snapshots' ties: a deletion, a new uid (re-created),
/// a new generation (snapshotDeletionPolicy changed). Status updates (every progress report)
/// are left out.
pub(super) fn ownership_changes(
    api: Api<BackupJob>,
) -> impl futures::Stream<Item = Result<BackupJob, kube::runtime::watcher::Error>> + Send + 'static
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let mut seen = std::collections::HashMap::new();
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .filter_map(move |event| {
            let out = match event {
                Ok(watcher::Event::Delete(job)) => {
                    seen.remove(&ObjectRef::from_obj(&job));
                    Some(Ok(job))
                }
                Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                    let now = (job.uid(), job.metadata.generation);
                    (seen.insert(ObjectRef::from_obj(&job), now.clone()) != Some(now))
                        .then_some(Ok(job))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(out)
        })
}

/// Make `snap`'s metadata agree with its job's existence and snapshotDeletionPolicy (a
/// Snapshot deleted meanwhile, by the garbage collector with policy Delete, has nothing to
/// tie).
pub(super) async fn tend_ties(
    snap: &Snapshot,
    job: Option<&BackupJob>,
    ctx: &Context,
) -> Result<(), Error> {
    let changes = metadata_patch(snap, job)
        .map(|patch| Change::merge("ownership", snap, patch))
        .into_iter()
        .collect();
    execute(ctx, snap, changes)
        .await
        .map_err(Error::execute(snap))
}

/// A finished Snapshot's tie to its job: the metadata, and condition Orphaned (written, and
/// announced, when it changes).
pub(super) async fn finished_ties(
    snap: &Snapshot,
    prev: &mut SnapshotStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = snap.namespace().unwrap_or_default();
    let jobs: Api<BackupJob> = Api::namespaced(ctx.client.clone(), &ns);
    let job = jobs
        .get_opt(&snap.spec.backup_job_ref.name)
        .await
        .map_err(Error::dereference(&snap.name_any(), "the BackupJob"))?;
    tend_ties(snap, job.as_ref(), ctx).await?;
    let Some(cond) = orphaned_condition(snap, job.as_ref()) else {
        return Ok(());
    };
    let now = Time(jiff::Timestamp::now());
    let conditions = with_condition(&prev.conditions, &cond, snap.metadata.generation, &now);
    if !transitions(&prev.conditions, &conditions).is_empty() {
        let before = std::mem::replace(&mut prev.conditions, conditions);
        write_status(snap, prev, ctx).await?;
        ctx.announce(snap, &before, &prev.conditions).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;

    fn job(policy: &str, uid: &str) -> BackupJob {
        let mut j = fixtures::job(&format!("snapshotDeletionPolicy: {policy}"));
        j.metadata.uid = Some(uid.into());
        j
    }

    fn scheduled(job: &BackupJob) -> Snapshot {
        crate::controller::backup_job::build::snapshot::scheduled_snapshot(
            job,
            "2026-11-27T03:00:00Z".parse().expect("t"),
        )
        .expect("snapshot")
    }

    /// RFC 7386, as the API server applies a merge patch.
    fn patched(snap: Snapshot, patch: &Value) -> Snapshot {
        let mut v = serde_json::to_value(&snap).expect("json");
        crate::controller::memory_api::merge(&mut v, patch);
        serde_json::from_value(v).expect("snapshot")
    }

    #[test]
    fn retained_snapshots_are_marked_orphaned_and_adopted_by_a_new_job_of_the_name() {
        let old = job("Retain", "uid-old");
        let s = scheduled(&old);
        assert!(s.owner_references().is_empty());
        assert_eq!(metadata_patch(&s, Some(&old)), None, "already agrees");
        // The job is deleted: labelled orphaned, condition Orphaned=True.
        let p = metadata_patch(&s, None).expect("patch");
        let s = patched(s, &p);
        assert_eq!(s.labels()[ORPHANED_LABEL], "true");
        assert_eq!(metadata_patch(&s, None), None);
        let c = orphaned_condition(&s, None).expect("condition");
        assert_eq!((c.status, c.reason), (true, Reason::BackupJobDeleted));
        // A job of the same name, with policy Delete, adopts it: its uid, its owner reference;
        // gone again, it is the garbage collector's (not marked orphaned).
        let new = job("Delete", "uid-new");
        let p = metadata_patch(&s, Some(&new)).expect("patch");
        let s = patched(s, &p);
        assert!(!s.labels().contains_key(ORPHANED_LABEL));
        assert_eq!(s.annotations()[MADE_BY_JOB_UID], "uid-new");
        assert_eq!(s.owner_references()[0].uid, "uid-new");
        assert_eq!(metadata_patch(&s, Some(&new)), None);
        assert_eq!(metadata_patch(&s, None), None);
        assert!(orphaned_condition(&s, None).is_none());
        let c = orphaned_condition(&s, Some(&new));
        assert!(c.is_none(), "never orphaned per status: {c:?}");
        // Back to Retain: the owner reference goes.
        let again = job("Retain", "uid-new");
        let s = patched(s.clone(), &metadata_patch(&s, Some(&again)).expect("patch"));
        assert!(s.owner_references().is_empty());
    }

    #[test]
    fn a_snapshot_a_user_made_keeps_its_owners() {
        let j = job("Delete", "uid-1");
        let mut s = fixtures::snapshot("mine", "2026-11-27T03:00:00Z");
        s.metadata.owner_references = None;
        assert_eq!(metadata_patch(&s, Some(&j)), None);
        assert!(!made_by_schedule(&s));
    }
}
