//! Operator faults on the test ground (issue 12): the control plane and the nodes failing under
//! a running operator. Each test starts what it breaks (a second kube-apiserver, its own node),
//! so the tests running beside it keep theirs.
//!
//! DOUBLES (tests/README.md): mongod cannot run here; a member is a pause pod whose volume the
//! test fills, copied in mode stoppedMember.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;

use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::{BackupJob, Snapshot};
use support::cluster::{cluster_or_skip, wait_for};
use support::control_plane::SecondApiServer;
use support::ground::{Ground, Options};
use support::operator::{LONG, snapshot_finished, wait_for_success};
use support::real_nodes::{RealNodes, volume_dir};

/// The repository snapshots of the ground's repository claim.
async fn repository_snapshots(g: &Ground) -> Vec<String> {
    let repo = volume_dir(&g.ns, "backups").await.join("repo");
    support::snapshot_ids(
        &repo.display().to_string(),
        &g.key.display().to_string(),
        &[],
    )
}

/// The API server the operator talks to is killed (SIGKILL) while a snapshot pod runs, and
/// the pod finishes while it is down: once it is back, the operator's watches recover, the
/// Snapshot's status catches up with the pod's result (one attempt, one repository snapshot),
/// and the next Snapshot runs as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_mid_run_loses_no_result() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    if RealNodes::get().is_none() {
        return;
    }
    let mut api = SecondApiServer::start(cluster.kubeconfig()).await;
    let opts = Options {
        operator_kubeconfig: Some(&api.kubeconfig),
        ..Default::default()
    };
    let Some(g) = Ground::with("apiserver-restart", opts).await else {
        return;
    };
    support::make_source(&g.data);
    std::fs::write(
        g.data.join("collection-big.wt"),
        support::pseudo_random(7, 64 << 20),
    )
    .expect("big");
    support::chown_mongodb(&g.data);
    g.job("j", json!({"mode": "stoppedMember"})).await;
    g.snapshot("j-1", "j").await;

    // The operator created the pod: kill its API server before the pod can have finished.
    let snaps: Api<Snapshot> = g.ns.api();
    let s = wait_for(&snaps, "j-1", "the snapshot pod to be created", LONG, |s| {
        s.status.as_ref().is_some_and(|st| st.pod_name.is_some())
    })
    .await;
    api.kill();
    let pod = s.status.and_then(|st| st.pod_name).expect("pod name");
    let pods: Api<Pod> = g.ns.api();
    wait_for(
        &pods,
        &pod,
        "the snapshot pod to finish with the operator's API server down",
        LONG,
        |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"),
    )
    .await;
    let before = snaps.get("j-1").await.expect("snapshot");
    assert!(
        !snapshot_finished(&before),
        "the operator wrote a final status without its API server: {:?}",
        before.status
    );

    api.restart().await;
    let st = wait_for_success(&snaps, "j-1", &g.ns).await;
    assert_eq!(st.attempts, 1, "{st:?}");
    let id = st.repository_snapshot_id.clone().expect("snapshot id");
    assert_eq!(repository_snapshots(&g).await, vec![id.clone()]);

    // The watches are live again: a new Snapshot starts and finishes.
    g.snapshot("j-2", "j").await;
    let st = wait_for_success(&snaps, "j-2", &g.ns).await;
    assert_eq!(st.phase, RunPhase::Succeeded);
    assert_eq!(repository_snapshots(&g).await.len(), 2);
    let out = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    g.restore(&id, out.path()).await;
    support::assert_same_tree(&g.data, out.path());
}

/// Fifty BackupJobs applied at once, each with a schedule: every one is reconciled (its status
/// describes its generation and names its next run) and none starves: an on-demand Snapshot
/// of the last one applied runs to the end while the rest are being reconciled; the operator
/// never restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_backup_jobs_applied_at_once_all_reconcile() {
    const JOBS: usize = 50;
    let Some(mut g) = Ground::new("fifty-jobs").await else {
        return;
    };
    support::make_source(&g.data);
    support::chown_mongodb(&g.data);
    let names: Vec<String> = (0..JOBS).map(|i| format!("job-{i:02}")).collect();
    let started = std::time::Instant::now();
    futures::future::join_all(
        names
            .iter()
            .map(|n| g.job(n, json!({"mode": "stoppedMember"}))),
    )
    .await;
    let last = names.last().expect("a job");
    g.snapshot("last-1", last).await;

    let jobs: Api<BackupJob> = g.ns.api();
    for name in &names {
        wait_for(&jobs, name, "the BackupJob to be reconciled", LONG, |j| {
            j.status.as_ref().is_some_and(|st| {
                st.observed_generation == j.metadata.generation && st.next_schedule_time.is_some()
            })
        })
        .await;
    }
    println!(
        "{JOBS} BackupJobs reconciled {:.1} s after they were applied",
        started.elapsed().as_secs_f64()
    );
    let snaps: Api<Snapshot> = g.ns.api();
    wait_for_success(&snaps, "last-1", &g.ns).await;
    assert!(
        g.operator.as_mut().is_some_and(|o| o.is_running()),
        "the operator exited while reconciling {JOBS} BackupJobs"
    );
}
