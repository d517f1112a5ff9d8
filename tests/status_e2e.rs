//! Status that never claims what did not happen (issue 29), on real pods: a lock on a member
//! with nothing listening fails without saying Consistent, in words naming the member, its
//! address and the field to check; kubectl prints NEXT RUN as a time; a job waiting for its
//! Secret waits (not Failed) and starts within seconds of its creation; deleting a job keeps
//! its Snapshots under snapshotDeletionPolicy Retain (even a foreground deletion, as an Argo
//! CD prune does) and deletes them under Delete, and a job of the same name adopts the kept.
//!
//! DOUBLES (tests/README.md): mongod cannot run here; the member is a pause pod whose volume
//! the test fills, copied in mode stoppedMember, and the member with nothing listening is the
//! pause pod on its node's network with a port no process holds. Every message read here goes
//! through the support code's debug-dump check (tests/support/plain.rs).

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PropagationPolicy};
use serde_json::json;

use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::{BackupJob, Restore, Snapshot};
use support::cluster::{TestNamespace, wait_for, wait_for_deletion};
use support::ground::{Ground, Options};
use support::operator::{
    LONG, create, events_for, snapshot_condition, snapshot_finished, wait_for_success,
};
use support::plain::kubectl_column;

/// An fsyncLock job whose member has nothing listening on the connection's port: the run
/// fails, Consistent is never True, and the message and the LockFailed Event say "connection
/// refused" with the member, its address and the field to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_a_member_with_nothing_listening_fails_in_words_without_claiming_a_copy() {
    let opts = Options {
        host_network: true,
        ..Default::default()
    };
    let Some(g) = Ground::with("status-refused", opts).await else {
        return;
    };
    let port = support::free_port();
    g.job_with(
        "dead",
        json!({"connection": {"port": port, "authMechanism": "NONE"},
               "consistency": {"mode": "fsyncLock"}}),
        0,
    )
    .await;
    g.snapshot("dead-1", "dead").await;
    let snaps: Api<Snapshot> = g.ns.api();
    let s = wait_for(&snaps, "dead-1", "the Snapshot to fail", LONG, |s| {
        snapshot_finished(s)
    })
    .await;
    let st = s.status.expect("status");
    assert_eq!(st.phase, RunPhase::Failed, "{st:?}");
    let consistent = snapshot_condition(&st, "Consistent");
    assert!(
        consistent.starts_with("False NotCaptured"),
        "Consistent must not claim a copy: {consistent}"
    );
    let ip = g.member_ip().await;
    let message = st.message.clone().unwrap_or_default();
    let want = format!(
        "could not connect to mongod on member rs0-0 ({ip}:{port}): connection refused; is mongod running, and is spec.source.connection.port ({port}) right?"
    );
    assert!(message.contains(&want), "message: {message}\nwant: {want}");
    let failed = snapshot_condition(&st, "Failed");
    assert!(failed.contains(&want), "{failed}");
    let events = events_for(&g.ns, "dead-1").await;
    let lock_failed: Vec<_> = events.iter().filter(|(r, _)| r == "LockFailed").collect();
    assert!(!lock_failed.is_empty(), "{events:?}");
    for (_, note) in lock_failed {
        assert!(note.contains("connection refused"), "{note}");
        assert!(!note.contains("no reply within"), "{note}");
    }

    // The job's NEXT RUN (yearly schedule) as kubectl prints it: a time, not <invalid>.
    let next = kubectl_column(g.ns.name(), "backupjobs", "dead", "NEXT RUN");
    assert!(
        next.parse::<jiff::Timestamp>().is_ok(),
        "NEXT RUN printed as {next:?}"
    );
    let consistent = kubectl_column(g.ns.name(), "snapshots", "dead-1", "CONSISTENT");
    assert_eq!(consistent, "False");
    support::plain::kubectl_tables_read_right(g.ns.name());
}

/// A job whose key Secret does not exist yet is Waiting, not Failed; a run asked for meanwhile
/// waits as Pending and starts within seconds of the Secret's creation (a waiting Snapshot
/// looked again every 30 s before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_its_secret_waits_and_starts_once_it_exists() {
    let Some(g) = Ground::new("status-waiting").await else {
        return;
    };
    g.fill_member();
    g.job_spec(
        "late",
        json!({"consistency": {"mode": "stoppedMember"}}),
        json!({"encryption": {"localKeySecret": {"name": "late-key"}},
               "destination": {"pvc": {"claimName": "backups", "path": "late"}}}),
    )
    .await;
    let jobs: Api<BackupJob> = g.ns.api();
    let job = wait_for(&jobs, "late", "the job to wait for its Secret", LONG, |j| {
        j.status
            .as_ref()
            .is_some_and(|s| s.observed_generation.is_some())
    })
    .await;
    let st = job.status.expect("status");
    assert_eq!(format!("{:?}", st.phase), "Waiting", "{st:?}");
    let degraded = st.conditions.iter().find(|c| c.type_ == "Degraded");
    assert!(
        degraded.is_some_and(|c| c.status == "False" && c.message.contains("late-key")),
        "{degraded:?}"
    );
    assert_eq!(
        kubectl_column(g.ns.name(), "backupjobs", "late", "PHASE"),
        "Waiting"
    );

    // A run asked for now waits too, as Pending (not Failed), naming the Secret.
    g.snapshot("late-1", "late").await;
    let snaps: Api<Snapshot> = g.ns.api();
    let waiting = wait_for(
        &snaps,
        "late-1",
        "the run to wait for the Secret",
        LONG,
        |s| {
            s.status.as_ref().is_some_and(|st| {
                st.phase == RunPhase::Pending
                    && st
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains("late-key"))
            })
        },
    )
    .await;
    assert!(waiting.status.is_some_and(|st| st.pod_name.is_none()));

    // The Secret appears: the run starts (its pod created) within seconds.
    let secrets: Api<Secret> = g.ns.api();
    let mut key = secrets.get("rs0-key").await.expect("key Secret");
    key.metadata = kube::api::ObjectMeta {
        name: Some("late-key".into()),
        ..Default::default()
    };
    secrets
        .create(&Default::default(), &key)
        .await
        .expect("create late-key");
    let created = Instant::now();
    wait_for(
        &snaps,
        "late-1",
        "the run to start once the Secret exists",
        Duration::from_secs(20),
        |s| s.status.as_ref().is_some_and(|st| st.pod_name.is_some()),
    )
    .await;
    let started = created.elapsed();
    let job = jobs.get("late").await.expect("job");
    let phase = job.status.map(|s| format!("{:?}", s.phase));
    assert!(
        matches!(phase.as_deref(), Some("Ready" | "Running")),
        "{phase:?} {started:?}"
    );
    wait_for_success(&snaps, "late-1", &g.ns).await;

    a_restore_into_a_running_members_claim_waits_for_it(&g.ns).await;
}

/// A Restore into the member's claim while the member runs: it waits, naming the pod and
/// what to do, and goes ahead once the pod is gone.
async fn a_restore_into_a_running_members_claim_waits_for_it(ns: &TestNamespace) {
    let restores: Api<Restore> = ns.api();
    create::<Restore>(
        &restores,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "back"},
               "spec": {"snapshotRef": {"name": "late-1"},
                        "target": {"claimName": "mongo-data-rs0-0", "path": "restored"}}}),
    )
    .await;
    let r = wait_for(
        &restores,
        "back",
        "the Restore to wait for the member",
        LONG,
        |r| {
            r.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "Progressing" && c.reason == "TargetInUse")
            })
        },
    )
    .await;
    let st = r.status.expect("status");
    assert_eq!(
        (st.phase, st.pod_name.as_deref()),
        (RunPhase::Pending, None)
    );
    let message = st.message.unwrap_or_default();
    assert!(
        message.contains("PersistentVolumeClaim mongo-data-rs0-0 is in use by pod rs0-0")
            && message.contains("scale its StatefulSet to 0"),
        "{message}"
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    pods.delete("rs0-0", &DeleteParams::default())
        .await
        .expect("delete the member");
    wait_for(
        &restores,
        "back",
        "the Restore once the member is gone",
        LONG,
        |r| {
            r.status
                .as_ref()
                .is_some_and(|st| st.phase == RunPhase::Succeeded)
        },
    )
    .await;
}

/// Two one-off jobs' Snapshots: deleting the Retain job (in the foreground, as an Argo CD
/// prune does) keeps its Snapshot, labelled orphaned with condition Orphaned; deleting the
/// Delete job deletes its Snapshot; a job of the Retain one's name applied again adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_job_keeps_or_deletes_its_snapshots_by_policy_and_a_new_job_adopts() {
    let Some(g) = Ground::new("status-orphans").await else {
        return;
    };
    g.fill_member();
    // One-off jobs (no schedule): each makes its one Snapshot itself.
    let one_off = |policy: &str, path: &str| {
        json!({"schedule": null, "snapshotDeletionPolicy": policy,
               "destination": {"pvc": {"claimName": "backups", "path": path}}})
    };
    let src = json!({"consistency": {"mode": "stoppedMember"}});
    g.job_spec("keep", src.clone(), one_off("Retain", "keep"))
        .await;
    g.job_spec("drop", src.clone(), one_off("Delete", "drop"))
        .await;
    let snaps: Api<Snapshot> = g.ns.api();
    let jobs: Api<BackupJob> = g.ns.api();
    let mut made = Vec::new();
    for job in ["keep", "drop"] {
        let j = wait_for(&jobs, job, "the one-off job's Snapshot", LONG, |j| {
            j.status.as_ref().is_some_and(|s| s.last_snapshot.is_some())
        })
        .await;
        let name = j.status.and_then(|s| s.last_snapshot).expect("snapshot");
        wait_for_success(&snaps, &name, &g.ns).await;
        made.push(name);
    }
    let (kept, dropped) = (made[0].clone(), made[1].clone());
    let foreground = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..Default::default()
    };
    jobs.delete("keep", &foreground).await.expect("delete keep");
    jobs.delete("drop", &DeleteParams::default())
        .await
        .expect("delete drop");
    wait_for_deletion(&jobs, "keep", LONG).await;
    wait_for_deletion(&snaps, &dropped, LONG).await;
    let orphan = wait_for(
        &snaps,
        &kept,
        "the kept Snapshot to be orphaned",
        LONG,
        |s| {
            s.labels().get("snapcrypt.dev/orphaned").map(String::as_str) == Some("true")
                && s.status.as_ref().is_some_and(|st| {
                    snapshot_condition(st, "Orphaned").starts_with("True BackupJobDeleted")
                })
        },
    )
    .await;
    assert_eq!(
        orphan.status.as_ref().map(|s| s.phase),
        Some(RunPhase::Succeeded)
    );

    // The job applied again (same name, new uid) adopts it.
    g.job_spec("keep", src, one_off("Retain", "keep")).await;
    let uid = jobs.get("keep").await.expect("job").uid().expect("uid");
    let adopted = wait_for(
        &snaps,
        &kept,
        "the new job to adopt the Snapshot",
        LONG,
        |s| {
            !s.labels().contains_key("snapcrypt.dev/orphaned")
                && s.annotations().get("snapcrypt.dev/backup-job-uid") == Some(&uid)
                && s.status.as_ref().is_some_and(|st| {
                    snapshot_condition(st, "Orphaned").starts_with("False Adopted")
                })
        },
    )
    .await;
    assert!(adopted.owner_references().is_empty(), "Retain: no owner");
    support::plain::kubectl_tables_read_right(g.ns.name());
}
