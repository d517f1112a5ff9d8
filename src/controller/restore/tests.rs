//! The Restore controller's decisions without a cluster: plan tests on [`World`] fixtures, and
//! whole reconciles against the in-memory API (`controller::memory_api`), each the unit-level
//! twin of what tests/operator_e2e.rs, verification_e2e.rs and data_safety.rs do on a real one.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::runtime::controller::Action;

use super::build::Outcome;
use super::build::Step;
use super::dereference::World;
use super::plan::plan;
use super::*;
use crate::api::restore::RestoreStatus;
use crate::controller::context::OperatorConfig;
use crate::controller::fixtures::{
    agent_pod, claim, job, member_pod, restore, secret, succeeded_snapshot, terminated,
};
use crate::controller::memory_api::MemoryApi;
use crate::controller::reason::Reason;

const SNAP: &str = "rs0-202611270300";
const NOW: &str = "2026-12-07T10:00:00Z";

fn now() -> jiff::Timestamp {
    NOW.parse().expect("time")
}

/// What dereference reads for a Restore that can start: its Snapshot succeeded, the job's
/// references fit, a local key, the target claim exists and nobody mounts it.
fn ready_world() -> World {
    World {
        snapshot: Some(succeeded_snapshot(SNAP, "3f2a")),
        job: Some(job("")),
        kmip: Some(Ok(None)),
        target: Some(claim("data")),
        ..Default::default()
    }
}

fn planned(r: &Restore, prev: &RestoreStatus, w: &World) -> Outcome {
    plan(r, prev, w, &OperatorConfig::default(), now()).expect("plan")
}

fn summaries(o: &Outcome) -> Vec<String> {
    o.changes.iter().map(Change::summary).collect()
}

fn wait_reason(o: &Outcome) -> Option<Reason> {
    match &o.step {
        Step::Wait { reason, .. } => Some(*reason),
        _ => None,
    }
}

/// A Restore that can start applies the agent's identity, then its pod, and nothing else.
#[test]
fn a_restore_that_can_start_applies_identity_then_pod() {
    let r = restore("{claimName: data}");
    let o = planned(&r, &RestoreStatus::default(), &ready_world());
    assert_eq!(
        summaries(&o),
        [
            "apply ServiceAccount/snapcrypt-agent-rs0",
            "apply Role/snapcrypt-agent-rs0",
            "apply RoleBinding/snapcrypt-agent-rs0",
            "apply Role/snapcrypt-agent-run-r-uid",
            "apply RoleBinding/snapcrypt-agent-run-r-uid",
            "apply Pod/back-restore",
        ]
    );
    assert_eq!(
        o.step,
        Step::Started {
            pod: "back-restore".into()
        }
    );
}

/// Each reason not to start yet is a wait with its reason, and writes nothing: the Snapshot
/// missing or not finished, the job missing, its references, its KmipServer, the target
/// claim missing or mounted by a running pod.
#[test]
fn what_a_restore_waits_for_writes_nothing() {
    let r = restore("{claimName: data}");
    let prev = RestoreStatus::default();
    let mut running = succeeded_snapshot(SNAP, "3f2a");
    running.status.as_mut().expect("status").phase = RunPhase::Running;
    let blocked = crate::controller::agent::job::Blocked {
        reason: Reason::SecretNotFound,
        message: "BackupJob rs0: spec.encryption.localKeySecret.name: Secret k does not exist"
            .into(),
    };
    let cases: Vec<(World, Reason)> = vec![
        (World::default(), Reason::SnapshotNotFound),
        (
            World {
                snapshot: Some(running),
                ..ready_world()
            },
            Reason::SnapshotNotReady,
        ),
        (
            World {
                job: None,
                ..ready_world()
            },
            Reason::BackupJobNotFound,
        ),
        (
            World {
                blocked: Some(blocked),
                ..ready_world()
            },
            Reason::SecretNotFound,
        ),
        (
            World {
                target: None,
                ..ready_world()
            },
            Reason::TargetClaimNotFound,
        ),
        (
            World {
                namespace_pods: vec![member_pod("rs0-0", Some("n1"), Some("data"))],
                ..ready_world()
            },
            Reason::TargetInUse,
        ),
    ];
    for (w, want) in cases {
        let o = planned(&r, &prev, &w);
        assert_eq!(wait_reason(&o), Some(want), "{:?}", o.step);
        assert!(o.changes.is_empty(), "{want}: {:?}", summaries(&o));
        assert_eq!(o.requeue, Some(RECHECK), "{want}");
    }
}

/// A scratch claim is created (with an Event) before the identity and the pod; one of that
/// name that is not this Restore's fails the Restore and writes nothing.
#[test]
fn a_scratch_claim_is_created_first_and_anothers_is_refused() {
    let r = restore("{claimName: scratch-back, scratch: {size: 1Gi}}");
    let w = World {
        target: None,
        ..ready_world()
    };
    let o = planned(&r, &RestoreStatus::default(), &w);
    let s = summaries(&o);
    assert_eq!(
        s[..2],
        [
            "apply PersistentVolumeClaim/scratch-back",
            "event ScratchClaimCreated"
        ]
    );
    assert_eq!(s.last().map(String::as_str), Some("apply Pod/back-restore"));
    let taken = World {
        target: Some(claim("scratch-back")),
        ..ready_world()
    };
    let o = planned(&r, &RestoreStatus::default(), &taken);
    assert!(
        matches!(
            &o.step,
            Step::Failed {
                reason: Reason::ScratchClaimExists,
                ..
            }
        ),
        "{:?}",
        o.step
    );
    assert!(o.changes.is_empty());
}

/// A restore pod Pending past the job's pendingTimeout is stopped and the Restore fails; a
/// pod named in status that is gone fails it as lost.
#[test]
fn an_overrun_pod_is_stopped_and_a_lost_one_fails_the_restore() {
    let r = restore("{claimName: data}");
    let mut pending = agent_pod(
        1,
        "  phase: Pending\n  conditions: [{type: PodScheduled, status: 'False', reason: Unschedulable, message: 'no node'}]",
    );
    pending.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-07T09:00:00Z".parse().expect("time"),
        ));
    let w = World {
        pod: Some(pending),
        job: Some(job("placement: {pendingTimeout: 10m}")),
        ..Default::default()
    };
    let o = planned(&r, &RestoreStatus::default(), &w);
    assert_eq!(summaries(&o), ["delete Pod/s-1"]);
    assert!(
        matches!(&o.step, Step::Failed { reason: Reason::RestoreFailed, message, .. } if message.contains("partial restore")),
        "{:?}",
        o.step
    );
    let prev = RestoreStatus {
        pod_name: Some("back-restore".into()),
        ..Default::default()
    };
    let o = planned(&r, &prev, &World::default());
    assert!(matches!(
        &o.step,
        Step::Failed {
            reason: Reason::PodLost,
            ..
        }
    ));
    assert!(o.changes.is_empty());
}

/// After a restore pod that succeeded, spec.check starts the check pod behind its
/// NetworkPolicy; the Restore is Checking, not Succeeded.
#[test]
fn a_successful_restore_with_a_check_starts_the_check_behind_its_policy() {
    let mut r = restore("{claimName: data}");
    r.spec.check =
        Some(serde_json::from_value(serde_json::json!({"image": "mongo:7"})).expect("check"));
    let done = agent_pod(
        1,
        &terminated(
            "Succeeded",
            0,
            r#"{"snapshot":"3f2a","files":9,"bytes":2048}"#,
        ),
    );
    let w = World {
        pod: Some(done),
        ..Default::default()
    };
    let o = planned(&r, &RestoreStatus::default(), &w);
    assert_eq!(
        summaries(&o),
        ["apply NetworkPolicy/back-check", "apply Pod/back-check"]
    );
    assert_eq!(
        o.step,
        Step::Checking {
            pod: "back-check".into()
        }
    );
}

/// A finished Restore's scratch claim goes after its pods, then status says so, with an
/// Event; a claim of that name the Restore did not make is never touched.
#[test]
fn a_finished_restore_deletes_its_scratch_claim_after_its_pods() {
    let r = restore("{claimName: scratch-back, scratch: {size: 1Gi}}");
    let own =
        super::check::scratch_claim(&r, r.spec.one_target().scratch.as_ref().expect("scratch"))
            .expect("claim");
    let j = job("");
    let mut pod = super::build::restore_pod(&super::build::RestorePlan {
        restore: &r,
        repo: crate::controller::agent::pod::AgentRepo::of_job(&j),
        snapshot: super::build::Chosen::Id("3f2a"),
        image: "i",
        progress_interval: 2.0,
        agent_env: &[],
        kmip: None,
    })
    .expect("pod");
    pod.metadata.uid = Some("uid-pod".into());
    let prev = RestoreStatus {
        phase: RunPhase::Succeeded,
        pod_name: Some("back-restore".into()),
        ..Default::default()
    };
    let w = World {
        target: Some(own),
        own_pods: vec![pod, member_pod("rs0-0", None, None)],
        ..Default::default()
    };
    let changes: Vec<String> = after::plan_finished(&r, &prev, &w)
        .iter()
        .map(Change::summary)
        .collect();
    assert_eq!(
        changes,
        [
            "delete Pod/back-restore",
            "delete PersistentVolumeClaim/scratch-back",
            "status Restore/back",
            "event ScratchClaimDeleted"
        ]
    );
    let foreign = World {
        target: Some(claim("scratch-back")),
        ..Default::default()
    };
    assert!(after::plan_finished(&r, &prev, &foreign).is_empty());
}

/// The in-memory API with what a Restore of [`SNAP`] into claim `data` needs.
fn cluster() -> MemoryApi {
    let mem = MemoryApi::new();
    mem.put(&job(""));
    mem.put(&succeeded_snapshot(SNAP, "3f2a"));
    mem.put(&secret("k", "key"));
    mem.put(&claim("backups"));
    mem.put(&claim("data"));
    mem
}

/// One reconcile of the Restore as the API holds it now.
async fn reconcile_once(mem: &MemoryApi, ctx: &Arc<Context>) -> Action {
    let r: Restore = mem.get("db", "back").expect("the Restore");
    reconcile(Arc::new(r), ctx.clone())
        .await
        .expect("reconcile")
}

/// A whole Restore through the real reconcile, against the in-memory API: the first
/// reconcile writes the identity, the pod and the status in that order; the pod's success
/// becomes Succeeded with the agent's figures and a Restored Event.
#[tokio::test]
async fn a_restore_runs_through_reconcile_against_the_in_memory_api() {
    let mem = cluster();
    mem.put(&restore("{claimName: data}"));
    let ctx = mem.context();
    reconcile_once(&mem, &ctx).await;
    let writes = mem.take_writes();
    assert_eq!(
        writes,
        [
            "apply serviceaccounts/snapcrypt-agent-rs0",
            "apply roles/snapcrypt-agent-rs0",
            "apply rolebindings/snapcrypt-agent-rs0",
            "apply roles/snapcrypt-agent-run-r-uid",
            "apply rolebindings/snapcrypt-agent-run-r-uid",
            "apply pods/back-restore",
            "status restores/back",
        ]
    );
    let r: Restore = mem.get("db", "back").expect("Restore");
    let st = r.status.clone().unwrap_or_default();
    assert_eq!(st.phase, RunPhase::Pending);
    assert_eq!(st.pod_name.as_deref(), Some("back-restore"));

    // The agent finishes: its result line in the termination message.
    let mut pod: Pod = mem.get("db", "back-restore").expect("restore pod");
    let finished = agent_pod(
        1,
        &terminated(
            "Succeeded",
            0,
            r#"{"snapshot":"3f2a","files":9,"bytes":2048}"#,
        ),
    );
    pod.status = finished.status;
    mem.put(&pod);
    let action = reconcile_once(&mem, &ctx).await;
    assert_eq!(action, Action::await_change());
    let r: Restore = mem.get("db", "back").expect("Restore");
    let st = r.status.unwrap_or_default();
    assert_eq!(st.phase, RunPhase::Succeeded, "{:?}", st.message);
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.starts_with("restored snapshot 3f2a into data: 9 files")),
        "{:?}",
        st.message
    );
    assert_eq!(
        mem.event_reasons().last().map(String::as_str),
        Some("Restored")
    );
    // Finished: the next reconcile writes nothing.
    mem.take_writes();
    reconcile_once(&mem, &ctx).await;
    assert_eq!(mem.take_writes(), Vec::<String>::new());
}

/// A scratch Restore against the in-memory API: the claim is created before the pod, and
/// once the Restore is over its pod and claim are deleted and status says so.
#[tokio::test]
async fn a_scratch_restore_creates_then_deletes_its_claim() {
    let mem = cluster();
    mem.put(&restore("{claimName: scratch-back, scratch: {size: 1Gi}}"));
    let ctx = mem.context();
    reconcile_once(&mem, &ctx).await;
    let writes = mem.take_writes();
    assert_eq!(writes[0], "apply persistentvolumeclaims/scratch-back");
    assert!(
        writes.contains(&"apply pods/back-restore".to_string()),
        "{writes:?}"
    );
    assert!(
        mem.get::<PersistentVolumeClaim>("db", "scratch-back")
            .is_some()
    );

    let mut r: Restore = mem.get("db", "back").expect("Restore");
    let mut st = r.status.clone().unwrap_or_default();
    st.phase = RunPhase::Failed;
    r.status = Some(st);
    mem.put(&r);
    reconcile_once(&mem, &ctx).await;
    assert_eq!(
        mem.take_writes(),
        [
            "delete pods/back-restore",
            "delete persistentvolumeclaims/scratch-back",
            "status restores/back",
        ]
    );
    assert_eq!(
        mem.event_reasons().last().map(String::as_str),
        Some("ScratchClaimDeleted")
    );
    assert!(
        mem.get::<PersistentVolumeClaim>("db", "scratch-back")
            .is_none()
    );
    let r: Restore = mem.get("db", "back").expect("Restore");
    assert!(r.status.unwrap_or_default().scratch_claim_deleted);
}
