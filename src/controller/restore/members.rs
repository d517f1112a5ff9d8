//! A Restore of several claims (spec.targets, every member of a replica set): one Restore per
//! claim, owned by this one and run by this same controller like any other (its pod on the
//! claim's node, its progress, its refusals), up to spec.targets.parallelism at once. Every
//! claim gets the same snapshot: with spec.source the first claim's pod chooses it (latest,
//! before:TIME) and the others are given its id. Before any is started, a claim a running pod
//! mounts holds them all back, naming the pods.
//!
//! dereference ([`dereference_members`]) -> plan ([`plan_members`], pure) -> execute, as every
//! reconcile.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, ObjectMeta};
use kube::{Api, Client, Resource, ResourceExt};

use super::start::claim_users;
use super::{Error, RECHECK};
use crate::api::common::Progress;
use crate::api::restore::{MemberRestore, RestoreStatus, RestoreTarget};
use crate::api::snapshot::RunPhase;
use crate::api::{Restore, RestoreSpec};
use crate::controller::conditions::{self, merge};
use crate::controller::execute::Change;
use crate::controller::job_spec::validate::label_selector_problem;
use crate::controller::names::{MANAGED_BY, PARENT_RESTORE_UID_LABEL, member_restore_name};
use crate::controller::reason::Reason;
use crate::engine::progress::human_bytes;

/// What a Restore of several claims reads.
#[derive(Clone, Debug, Default)]
pub struct MembersWorld {
    /// The claims, in order: spec.targets.claimNames as given, or the claims its selector
    /// matches by name (frozen in status.members once started).
    pub claims: Vec<String>,
    /// Its Restores, one per claim started.
    pub children: Vec<Restore>,
    /// Before any is started: the namespace's pods (who mounts the claims).
    pub pods: Vec<Pod>,
}

/// Read the claims, the Restores made for them, and (before any) who mounts the claims.
pub async fn dereference_members(r: &Restore, client: &Client) -> Result<MembersWorld, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let err = |what: &'static str| super::dereference_error(&name, what);
    let prev = r.status.clone().unwrap_or_default();
    let targets = r.spec.targets.clone().unwrap_or_default();
    let mut w = MembersWorld::default();
    w.claims = if !prev.members.is_empty() {
        prev.members.iter().map(|m| m.claim_name.clone()).collect()
    } else if let Some(selector) = targets.selector {
        // A selector the API server would refuse is the plan's to report, not a read's.
        if label_selector_problem("spec.targets.selector", &selector).is_some() {
            return Ok(w);
        }
        let Ok(selector) = kube::core::Selector::try_from(selector) else {
            return Ok(w);
        };
        let mut names: Vec<String> = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels_from(&selector))
            .await
            .map_err(err("the claims spec.targets.selector matches"))?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        names.sort();
        names
    } else {
        targets.claim_names
    };
    if let Some(uid) = r.uid() {
        w.children = Api::<Restore>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&format!("{PARENT_RESTORE_UID_LABEL}={uid}")))
            .await
            .map_err(err("the Restores of spec.targets' claims"))?
            .items;
    }
    if w.children.is_empty() {
        w.pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(err("the pods using the target claims"))?
            .items;
    }
    Ok(w)
}

/// The Restore that restores `claim`, owned by `r`; with spec.source, `pinned` is the snapshot
/// id every claim after the first gets. Pure.
pub fn member_restore(r: &Restore, claim: &str, pinned: Option<&str>) -> Option<Restore> {
    let owner = r.controller_owner_ref(&())?;
    let uid = r.uid()?;
    let targets = r.spec.targets.clone().unwrap_or_default();
    let mut source = r.spec.source.clone();
    if let (Some(s), Some(id)) = (source.as_mut(), pinned) {
        s.snapshot = id.to_string();
    }
    Some(Restore {
        metadata: ObjectMeta {
            name: Some(member_restore_name(&r.name_any(), claim)),
            namespace: r.namespace(),
            labels: Some(BTreeMap::from([
                (PARENT_RESTORE_UID_LABEL.to_string(), uid),
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: RestoreSpec {
            snapshot_ref: r.spec.snapshot_ref.clone(),
            source,
            target: Some(RestoreTarget {
                claim_name: claim.to_string(),
                path: targets.path,
                force: targets.force,
                delete_extra: targets.delete_extra,
                scratch: None,
            }),
            targets: None,
            verify_restored: r.spec.verify_restored,
            check: r.spec.check.clone(),
        },
        status: None,
    })
}

/// What a Restore of several claims does now: the Restores to create, its next status, when
/// to look again. Pure.
pub fn plan_members(
    r: &Restore,
    prev: &RestoreStatus,
    w: &MembersWorld,
    now: jiff::Timestamp,
) -> (RestoreStatus, Vec<Change>, Option<Duration>) {
    let ns = r.namespace().unwrap_or_default();
    let of_claim: BTreeMap<&str, &Restore> = w
        .children
        .iter()
        .map(|c| (c.spec.one_target().claim_name.as_str(), c))
        .collect();
    let phase_of = |c: &Restore| c.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let finished = |c: &Restore| matches!(phase_of(c), RunPhase::Succeeded | RunPhase::Failed);
    let mut changes = Vec::new();
    let mut requeue = None;
    let mut wait: Option<(Reason, String)> = None;
    let mut failed_early: Option<String> = None;

    if let Some(problem) = super::start::shape_problem(&r.spec) {
        failed_early = Some(problem);
    } else if w.claims.is_empty() {
        failed_early = Some(format!(
            "spec.targets.selector: matches no PersistentVolumeClaim in namespace {ns}; name the claims in spec.targets.claimNames, or label them"
        ));
    } else if w.children.is_empty() {
        // Nothing started yet: no claim may be in use by a running pod.
        let in_use: Vec<String> = w
            .claims
            .iter()
            .filter_map(|c| {
                let users = claim_users(c, &w.pods, &[]);
                (!users.is_empty()).then(|| format!("{c} by pod {}", users.join(", pod ")))
            })
            .collect();
        if !in_use.is_empty() {
            wait = Some((
                Reason::TargetInUse,
                format!(
                    "spec.targets: claims in use: {}; a restore would replace files under a running mongod (it cannot recover from that); stop it first (scale its StatefulSet to 0), and the restore starts once no pod uses them",
                    in_use.join("; ")
                ),
            ));
            requeue = Some(RECHECK);
        }
    }

    // The snapshot every claim after the first gets (spec.source: what the first pod chose).
    let first = w.claims.first().and_then(|c| of_claim.get(c.as_str()));
    let pinned = first.and_then(|c| c.status.as_ref()?.snapshot_id.clone());
    let needs_pin = r.spec.source.is_some();
    if let (true, None, Some(c)) = (needs_pin, &pinned, first)
        && phase_of(c) == RunPhase::Failed
    {
        failed_early = Some(format!(
            "claim {}: {}",
            c.spec.one_target().claim_name,
            c.status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default()
        ));
    }
    if wait.is_none() && failed_early.is_none() {
        let parallelism = r.spec.targets.as_ref().map_or(1, |t| t.parallelism.max(1)) as usize;
        let mut active = w.children.iter().filter(|c| !finished(c)).count();
        for (i, claim) in w.claims.iter().enumerate() {
            if of_claim.contains_key(claim.as_str()) || active >= parallelism {
                continue;
            }
            // With spec.source, the first claim alone until its pod has chosen the snapshot.
            let pin = match (needs_pin, i, &pinned) {
                (false, _, _) | (true, 0, _) => None,
                (true, _, Some(id)) => Some(id.as_str()),
                (true, _, None) => break,
            };
            if let Some(child) = member_restore(r, claim, pin) {
                changes.push(Change::create("create_member_restore", &child));
                active += 1;
            }
        }
    }
    let status = members_status(r, prev, w, pinned, wait, failed_early, now);
    (status, changes, requeue)
}

/// The status of a Restore of several claims, from its Restores. Pure.
fn members_status(
    r: &Restore,
    prev: &RestoreStatus,
    w: &MembersWorld,
    pinned: Option<String>,
    wait: Option<(Reason, String)>,
    failed_early: Option<String>,
    now: jiff::Timestamp,
) -> RestoreStatus {
    let mut s = prev.clone();
    s.observed_generation = r.metadata.generation;
    s.snapshot_id = pinned.or(s.snapshot_id);
    let of_claim: BTreeMap<&str, &Restore> = w
        .children
        .iter()
        .map(|c| (c.spec.one_target().claim_name.as_str(), c))
        .collect();
    s.members = w
        .claims
        .iter()
        .map(|claim| {
            let child = of_claim.get(claim.as_str());
            let st = child.and_then(|c| c.status.clone()).unwrap_or_default();
            MemberRestore {
                claim_name: claim.clone(),
                restore: child.map(|c| c.name_any()),
                phase: st.phase,
                progress_summary: st.progress_summary,
                message: st.message,
            }
        })
        .collect();
    let count = |p: RunPhase| s.members.iter().filter(|m| m.phase == p).count();
    let (ok, bad, running) = (
        count(RunPhase::Succeeded),
        count(RunPhase::Failed),
        count(RunPhase::Running),
    );
    let total = s.members.len();
    let started = s.members.iter().filter(|m| m.restore.is_some()).count();
    s.progress = sum_progress(&w.children);
    s.progress_summary = Some(format!("{ok}/{total} claims restored"));
    if s.start_time.is_none() && started > 0 {
        s.start_time = Some(Time(now));
    }
    let id = s.snapshot_id.clone().unwrap_or_else(|| "?".into());
    let conds = if let Some(message) = failed_early {
        s.phase = RunPhase::Failed;
        s.completion_time = Some(Time(now));
        s.message = Some(message.clone());
        conditions::finished(false, Reason::RestoreFailed, &message)
    } else if let Some((reason, message)) = wait {
        s.phase = RunPhase::Pending;
        s.message = Some(message.clone());
        conditions::waiting(reason, &message)
    } else if total > 0 && ok + bad == total {
        s.completion_time = s.completion_time.or(Some(Time(now)));
        if bad == 0 {
            s.phase = RunPhase::Succeeded;
            let bytes: u64 = s.progress.as_ref().map_or(0, |p| p.bytes_done);
            let message = format!(
                "restored snapshot {id} into {total} claims ({}): {}",
                human_bytes(bytes),
                s.members
                    .iter()
                    .map(|m| m.claim_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            s.message = Some(message.clone());
            conditions::finished(true, Reason::Restored, &message)
        } else {
            s.phase = RunPhase::Failed;
            let failed: Vec<String> = s
                .members
                .iter()
                .filter(|m| m.phase == RunPhase::Failed)
                .map(|m| {
                    format!(
                        "claim {}: {}",
                        m.claim_name,
                        m.message.clone().unwrap_or_default()
                    )
                })
                .collect();
            let message = format!(
                "{bad} of {total} claims failed ({ok} restored): {}",
                failed.join("; ")
            );
            s.message = Some(message.clone());
            conditions::finished(false, Reason::RestoreFailed, &message)
        }
    } else {
        let waiting: Vec<String> = s
            .members
            .iter()
            .filter(|m| m.phase == RunPhase::Pending)
            .filter_map(|m| Some(format!("claim {}: {}", m.claim_name, m.message.clone()?)))
            .collect();
        let message = format!(
            "restoring snapshot {id} into {total} claims: {ok} restored, {running} restoring, {} not started{}",
            total - started,
            if waiting.is_empty() {
                String::new()
            } else {
                format!("; {}", waiting.join("; "))
            }
        );
        s.phase = if running > 0 || ok > 0 {
            RunPhase::Running
        } else {
            RunPhase::Pending
        };
        s.message = Some(message.clone());
        conditions::under_way(Reason::Restoring, Reason::Restoring, &message)
    };
    s.conditions = merge(&prev.conditions, &conds, r.metadata.generation, &Time(now));
    s
}

/// The members' progress added up (a finished member counts as done).
fn sum_progress(children: &[Restore]) -> Option<Progress> {
    let all: Vec<&Progress> = children
        .iter()
        .filter_map(|c| c.status.as_ref()?.progress.as_ref())
        .collect();
    if all.is_empty() {
        return None;
    }
    let mut p = Progress::default();
    for c in &all {
        p.bytes_done += c.bytes_done;
        p.bytes_total += c.bytes_total;
        p.files_done += c.files_done;
        p.files_total += c.files_total;
        p.bytes_per_second += c.bytes_per_second;
        p.eta_seconds = p.eta_seconds.max(c.eta_seconds);
    }
    p.percent = if p.bytes_total == 0 {
        0.0
    } else {
        (p.bytes_done as f64 * 1000.0 / p.bytes_total as f64).round() / 10.0
    };
    p.updated_at = all.iter().filter_map(|c| c.updated_at.clone()).max();
    Some(p)
}
