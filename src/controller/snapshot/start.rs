//! Starting an attempt: read the members (and ask MongoDB), check the job, choose the member
//! (pure), build the pod (pure), apply the agent's identity and the pod. In mode
//! volumeSnapshot an attempt starts twice: first its VolumeSnapshot is created
//! ([`super::cut`]), then (once plan() sees it ready) the claim restored from it and the pod
//! that reads that claim. In mode fsyncLock the member is locked before the pod is created.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use kube::{Api, ResourceExt};

use super::build::pod::{PodError, PodPlan, RunAs, member_run_as, record_capture, snapshot_pod};
use super::build::status::{Consistency, Step};
use super::build::volume::{self, volume_snapshot};
use super::cut::{Cut, start_cut};
use super::dereference::{connection_settings, list_member_pods};
use super::locking::{self, LOCK_RECHECK};
use super::{Error, QUEUE_RECHECK, RECHECK, write_status};
use crate::api::snapshot::{CaptureStatus, MemberChoice};
use crate::api::{BackupJob, Snapshot, SnapshotStatus};
use crate::controller::agent::identity::{RunObject, identity_changes};
use crate::controller::agent::job::{Blocked, Needs, check_job, job_kmip};
use crate::controller::context::Context;
use crate::controller::execute::{Change, execute};
use crate::controller::job_spec::consistency::{Capture, capture};
use crate::controller::reason::Reason;
use crate::mongo::{self, Answer, ConnectionSettings, MemberAddress, MemberPod, MemberReport};

/// The replica set as read for one attempt: its pods, and what each member said.
struct Members {
    pods: Vec<Pod>,
    members: Vec<MemberPod>,
    reports: Vec<MemberReport>,
    /// How they were reached (None: no connection configured).
    settings: Option<ConnectionSettings>,
}

impl Members {
    /// The address of member pod `pod`.
    fn host_of(&self, pod: &str) -> Option<String> {
        self.members
            .iter()
            .find(|m| m.name == pod)
            .and_then(|m| m.host.clone())
    }

    /// The tolerations of member pod `pod` (a snapshot pod pinned to its node needs them).
    fn tolerations_of(&self, pod: &str) -> Vec<Toleration> {
        self.pods
            .iter()
            .find(|p| p.name_any() == pod)
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default()
    }
}

/// What starting an attempt came to.
// One exists per reconcile, briefly: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Started {
    /// This status step; look again after the duration (None: on the next change).
    Step(Step, Option<Duration>),
    /// The attempt failed before its cut or copy began: the lock was not taken, or ended
    /// before the cut (plan's after_failure decides whether another attempt starts).
    AttemptFailed(String),
}

impl From<(Step, Option<Duration>)> for Started {
    fn from((step, requeue): (Step, Option<Duration>)) -> Self {
        Started::Step(step, requeue)
    }
}

/// The member an attempt copies, with everything its pod needs.
#[derive(Debug, PartialEq)]
struct Chosen {
    choice: mongo::Choice,
    node: String,
    data_claim: String,
    run_as: RunAs,
}

/// Start attempt `attempt`. Returns the step for status and when to look again. A lock on
/// the member is recorded in `prev` (written to status) before it is asked for.
pub(super) async fn start_attempt(
    snap: &Snapshot,
    job: &BackupJob,
    prev: &mut SnapshotStatus,
    attempt: u32,
    retry_after: Option<String>,
    ctx: &Context,
) -> Result<Started, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let name = snap.name_any();

    // Validate the job (pure) against what it references (read here).
    if let Some(b) = job_blocked(snap, job, ctx).await? {
        return Ok(wait(b).into());
    }

    // Read the members, ask them, and choose (pure).
    let members = match read_members(&name, &ns, job, ctx).await? {
        Ok(m) => m,
        Err(b) => return Ok(wait(b).into()),
    };
    let chosen = match choose(job, &members) {
        Ok(c) => c,
        Err(b) => return Ok(wait(b).into()),
    };
    let capture = capture(&job.spec.source);
    let member = MemberChoice {
        pod: chosen.choice.pod.clone(),
        node: Some(chosen.node.clone()),
        role: Some(chosen.choice.role.clone()),
        reason: chosen.choice.reason.clone(),
    };
    // The member's lock, when the capture takes one.
    let settings = members.settings.clone().unwrap_or_default();
    let host = members.host_of(&member.pod);
    let lock = match locking::member_lock(job, &capture, &member.pod, host, settings) {
        Ok(l) => l,
        Err(b) => return Ok(wait(b).into()),
    };

    // Mode volumeSnapshot: cut the VolumeSnapshot first; the pod comes once it is ready.
    if let Capture::VolumeSnapshot { class, .. } = &capture {
        let vs = match volume_snapshot(
            snap,
            attempt,
            &chosen.data_claim,
            class,
            &member,
            chosen.run_as,
        ) {
            Ok(vs) => vs,
            Err(e) => return Ok((invalid(e), None).into()),
        };
        let cut = Cut {
            attempt,
            vs: &vs,
            member: &member,
            capture: &capture,
            retry_after: retry_after.as_deref(),
        };
        return start_cut(snap, prev, cut, lock, ctx).await;
    }

    let started = Attempt {
        attempt,
        tolerations: members.tolerations_of(&member.pod),
        member,
        node: Some(chosen.node.as_str()),
        data_claim: &chosen.data_claim,
        run_as: chosen.run_as,
        retry_after,
        capture: CaptureStatus {
            mode: capture.mode(),
            attempt,
            ..Default::default()
        },
        consistency: Consistency::of(&capture),
    };
    match lock {
        None => start_pod(snap, job, started, ctx).await.map(Started::from),
        Some(lock) => start_locked_copy(snap, job, prev, started, lock, &capture, ctx).await,
    }
}

/// Mode fsyncLock: everything the pod needs first, then the lock, then the pod; the lock is
/// released once the pod has finished (the reconcile that sees it).
async fn start_locked_copy(
    snap: &Snapshot,
    job: &BackupJob,
    prev: &mut SnapshotStatus,
    mut started: Attempt<'_>,
    lock: locking::Lock,
    capture: &Capture,
    ctx: &Context,
) -> Result<Started, Error> {
    let pod = match prepare_pod(snap, job, &started, ctx).await? {
        Ok(p) => p,
        Err(step) => return Ok(step.into()),
    };
    let mut held = started.capture.clone();
    held.lock = Some(locking::asking(&started.member.pod));
    let message = format!(
        "locking writes on member {} (fsyncLock) for the copy",
        started.member.pod
    );
    let member = started.member.clone();
    let until = locking::pod_done(
        ctx.client.clone(),
        snap.namespace().unwrap_or_default(),
        pod.name_any(),
    );
    let (key, locked) = match locking::lock_member(
        snap, prev, lock, held, &member, capture, message, until, ctx,
    )
    .await?
    {
        Ok(l) => l,
        Err(why) => return Ok(Started::AttemptFailed(why)),
    };
    started.capture.lock = Some(locked.clone());
    match launch_pod(snap, pod, started, ctx).await {
        Ok((step, _)) => Ok(Started::Step(step, Some(LOCK_RECHECK))),
        Err(e) => {
            // No pod to copy: nothing to hold the member for. Status says so before the
            // error (one still saying Locking would read as a lost holder).
            if let Some((after, _)) =
                locking::release(snap, &key, &locked, capture.mode(), ctx).await
            {
                locking::set_lock(prev, after);
            }
            write_status(snap, prev, ctx).await?;
            Err(e)
        }
    }
}

/// Start the pod of attempt `attempt`, whose VolumeSnapshot `vs` is ready (cut at `cut`):
/// restore it into a claim, and copy that claim read-only on whichever node it attaches to.
pub(super) async fn start_from_volume(
    snap: &Snapshot,
    job: &BackupJob,
    attempt: u32,
    vs: &DynamicObject,
    cut: Option<Time>,
    ctx: &Context,
) -> Result<(Step, Option<Duration>), Error> {
    let ns = snap.namespace().unwrap_or_default();
    let name = snap.name_any();
    if let Some(b) = job_blocked(snap, job, ctx).await? {
        return Ok(wait(b));
    }
    let source_name = volume::source_claim(vs).unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(source) = claims
        .get_opt(&source_name)
        .await
        .map_err(Error::dereference(&name, "the member's data claim"))?
    else {
        return Ok(wait(Blocked {
            reason: Reason::NoDataClaim,
            message: format!(
                "the member's data claim {source_name} (of VolumeSnapshot {}) does not exist",
                vs.name_any()
            ),
        }));
    };
    let clone = match volume::clone_claim(snap, attempt, vs, &source) {
        Ok(c) => c,
        Err(e) => return Ok((invalid(e), None)),
    };
    execute(ctx, snap, vec![Change::apply("apply_capture", &clone)])
        .await
        .map_err(Error::execute(snap))?;
    let (member, run_as) = volume::recorded_member(vs);
    let capture = capture(&job.spec.source);
    let started = Attempt {
        attempt,
        tolerations: Vec::new(),
        member,
        node: None,
        data_claim: &clone.name_any(),
        run_as,
        retry_after: None,
        capture: CaptureStatus {
            mode: capture.mode(),
            attempt,
            volume_snapshot: Some(vs.name_any()),
            clone_claim: Some(clone.name_any()),
            point_in_time: cut,
            released: false,
            lock: None,
        },
        consistency: Consistency::of(&capture),
    };
    start_pod(snap, job, started, ctx).await
}

/// What an attempt's pod is started with.
struct Attempt<'a> {
    attempt: u32,
    /// The member pod's tolerations (a pod pinned to its node needs them).
    tolerations: Vec<Toleration>,
    member: MemberChoice,
    node: Option<&'a str>,
    data_claim: &'a str,
    run_as: RunAs,
    retry_after: Option<String>,
    capture: CaptureStatus,
    consistency: Consistency,
}

/// The job's KmipServer (if any), then build the pod (pure), then apply the agent's identity
/// and the pod.
async fn start_pod(
    snap: &Snapshot,
    job: &BackupJob,
    a: Attempt<'_>,
    ctx: &Context,
) -> Result<(Step, Option<Duration>), Error> {
    match prepare_pod(snap, job, &a, ctx).await? {
        Ok(pod) => launch_pod(snap, pod, a, ctx).await,
        Err(step) => Ok(step),
    }
}

/// The attempt's pod, built (pure) with the job's KmipServer and its active key, and the
/// agent's identity applied; or the step saying why the pod cannot be.
async fn prepare_pod(
    snap: &Snapshot,
    job: &BackupJob,
    a: &Attempt<'_>,
    ctx: &Context,
) -> Result<Result<Pod, (Step, Option<Duration>)>, Error> {
    let ns = snap.namespace().unwrap_or_default();
    // A KMIP job needs its KmipServer, with an active master key.
    let kmip = match job_kmip(&ctx.client, &ns, job)
        .await
        .map_err(Error::dereference(&snap.name_any(), "KmipServer"))?
    {
        Ok(k) => k,
        Err(b) => return Ok(Err(wait(b))),
    };
    let role = a.member.role.clone().unwrap_or_default();
    let pod = snapshot_pod(&PodPlan {
        snapshot: snap,
        job,
        attempt: a.attempt,
        member: &a.member.pod,
        member_role: &role,
        member_reason: &a.member.reason,
        node: a.node,
        data_claim: a.data_claim,
        run_as: a.run_as,
        image: &ctx.config.agent_image,
        progress_interval: ctx.config.agent_progress_interval,
        agent_env: &ctx.config.agent_env,
        kmip: kmip.as_ref().map(|(ks, key)| (ks, key.as_str())),
        member_tolerations: &a.tolerations,
        cluster: &ctx.config.cluster_id,
    })
    .map_err(|e| (invalid(e), None));
    if pod.is_ok() {
        // The agent's ServiceAccount, Role and RoleBinding before any lock: only the pod is
        // left to create while the member is locked.
        let identity =
            identity_changes("apply_rbac", job, RunObject::of(snap, "snapshots").as_ref());
        execute(ctx, snap, identity)
            .await
            .map_err(Error::execute(snap))?;
    }
    Ok(pod)
}

/// Create `pod` (built by [`prepare_pod`]).
async fn launch_pod(
    snap: &Snapshot,
    pod: Pod,
    a: Attempt<'_>,
    ctx: &Context,
) -> Result<(Step, Option<Duration>), Error> {
    let mut pod = pod;
    record_capture(&mut pod, &a.capture);
    execute(ctx, snap, vec![Change::apply("apply_pod", &pod)])
        .await
        .map_err(Error::execute(snap))?;
    let step = Step::Started {
        attempt: a.attempt,
        pod: pod.name_any(),
        member: a.member,
        retry_after: a.retry_after,
        capture: a.capture,
        consistency: a.consistency,
    };
    Ok((step, None))
}

/// What keeps the job from starting an attempt (a problem in its spec, a missing
/// reference), if anything.
async fn job_blocked(
    snap: &Snapshot,
    job: &BackupJob,
    ctx: &Context,
) -> Result<Option<Blocked>, Error> {
    check_job(
        &ctx.client,
        &snap.namespace().unwrap_or_default(),
        job,
        Needs::Everything,
    )
    .await
    .map_err(Error::dereference(&snap.name_any(), "referenced objects"))
}

/// A wait for what `b` names.
pub(super) fn wait(b: Blocked) -> (Step, Option<Duration>) {
    // A missing Secret, claim or KmipServer: looked for again soon (it starts by itself).
    let again = if b.reason.is_missing_reference() {
        QUEUE_RECHECK
    } else {
        RECHECK
    };
    (
        Step::Wait {
            reason: b.reason,
            message: b.message,
        },
        Some(again),
    )
}

/// The attempt cannot be built from this spec.
fn invalid(e: PodError) -> Step {
    Step::Failed {
        reason: Reason::InvalidSpec,
        message: e.to_string(),
        finished: None,
    }
}

/// Read the replica set's pods and, when a connection is configured, ask each member.
async fn read_members(
    snapshot: &str,
    ns: &str,
    job: &BackupJob,
    ctx: &Context,
) -> Result<Result<Members, Blocked>, Error> {
    let source = &job.spec.source;
    let Some(pods) = list_member_pods(&ctx.client, ns, source)
        .await
        .map_err(Error::dereference(snapshot, "member pods"))?
    else {
        return Ok(Err(Blocked {
            reason: Reason::StatefulSetNotFound,
            message: format!(
                "spec.source.statefulSetName {:?}: StatefulSet not found in namespace {ns}",
                source.stateful_set_name.clone().unwrap_or_default()
            ),
        }));
    };
    let members = mongo::member_pods(&pods, &source.data_volume_name, &ctx.config.cluster_domain);
    let (reports, settings) = match &source.connection {
        Some(_) => {
            let settings = connection_settings(&ctx.client, ns, source, ctx)
                .await
                .map_err(Error::dereference(snapshot, "MongoDB credentials"))?;
            let addrs: Vec<MemberAddress> = members
                .iter()
                .map(|m| MemberAddress {
                    pod: m.name.clone(),
                    node: m.node.clone(),
                    host: m.host.clone(),
                    port: None,
                })
                .collect();
            (mongo::ask_members(&addrs, &settings).await, Some(settings))
        }
        None => (not_asked(&members), None),
    };
    Ok(Ok(Members {
        pods,
        members,
        reports,
        settings,
    }))
}

/// Reports for members MongoDB was not asked about (no connection configured).
fn not_asked(members: &[MemberPod]) -> Vec<MemberReport> {
    members
        .iter()
        .map(|m| MemberReport {
            pod: m.name.clone(),
            node: m.node.clone(),
            answer: Answer::NotAsked,
            delay_secs: None,
        })
        .collect()
}

/// The member to copy by the job's sync source, on a node and with a data claim, or why
/// there is none. Pure.
fn choose(job: &BackupJob, m: &Members) -> Result<Chosen, Blocked> {
    let source = &job.spec.source;
    let sync = source.sync_source.clone().unwrap_or_default();
    let no_source = |message: String| Blocked {
        reason: Reason::NoSyncSource,
        message,
    };
    let mode = crate::controller::job_spec::member::sync_source_mode(sync.mode);
    let choice = mongo::choose(mode, sync.member.as_deref(), &m.reports)
        .map_err(|e| no_source(e.to_string()))?;
    let member_pod = m
        .pods
        .iter()
        .find(|p| p.name_any() == choice.pod)
        .ok_or_else(|| no_source(format!("member pod {} vanished", choice.pod)))?;
    let Some(node) = choice.node.clone() else {
        return Err(Blocked {
            reason: Reason::MemberNotScheduled,
            message: format!("member pod {} is not on a node yet", choice.pod),
        });
    };
    let Some(data_claim) = m
        .members
        .iter()
        .find(|x| x.name == choice.pod)
        .and_then(|x| x.data_claim.clone())
    else {
        return Err(Blocked {
            reason: Reason::NoDataClaim,
            message: format!(
                "member pod {} has no volume {:?} backed by a PersistentVolumeClaim (spec.source.dataVolumeName)",
                choice.pod, source.data_volume_name
            ),
        });
    };
    Ok(Chosen {
        run_as: member_run_as(member_pod, &source.data_volume_name),
        choice,
        node,
        data_claim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;

    fn members(pods: Vec<Pod>) -> Members {
        let members = mongo::member_pods(&pods, "data", "cluster.local");
        let reports = not_asked(&members);
        Members {
            pods,
            members,
            reports,
            settings: None,
        }
    }

    #[test]
    fn choose_names_why_no_member_can_be_copied() {
        let job = fixtures::job(
            "source: {statefulSetName: rs0, dataVolumeName: data, syncSource: {mode: member, member: rs0-1}}",
        );
        let on_node = fixtures::member_pod("rs0-1", Some("node-b"), Some("mongo-data-rs0-1"));
        let c = choose(&job, &members(vec![on_node])).expect("chosen");
        assert_eq!(
            (
                c.choice.pod.as_str(),
                c.node.as_str(),
                c.data_claim.as_str()
            ),
            ("rs0-1", "node-b", "mongo-data-rs0-1")
        );
        let unscheduled = fixtures::member_pod("rs0-1", None, Some("mongo-data-rs0-1"));
        assert_eq!(
            choose(&job, &members(vec![unscheduled]))
                .map(|_| ())
                .unwrap_err()
                .reason,
            Reason::MemberNotScheduled
        );
        let no_claim = fixtures::member_pod("rs0-1", Some("node-b"), None);
        let b = choose(&job, &members(vec![no_claim]))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(b.reason, Reason::NoDataClaim);
        assert!(
            b.message.contains("spec.source.dataVolumeName"),
            "{}",
            b.message
        );
        let b = choose(&job, &members(vec![])).map(|_| ()).unwrap_err();
        assert_eq!(b.reason, Reason::NoSyncSource);
    }
}
