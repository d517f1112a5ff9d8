//! Operator faults on the test ground (issue 12): the control plane and the nodes failing under
//! a running operator. Each test starts what it breaks (a second kube-apiserver, its own node),
//! so the tests running beside it keep theirs.
//!
//! DOUBLES (tests/README.md): mongod cannot run here; a member is a pause pod whose volume the
//! test fills, copied in mode stoppedMember. Nothing else is a double: the second API server,
//! the node lifecycle controller, the kubelets and the S3 server are the real ones.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Secret};
use kube::api::Api;
use serde_json::json;

use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::{BackupJob, Restore, Snapshot};
use support::cluster::{cluster_or_skip, wait_for, wait_for_deletion};
use support::control_plane::{NodeLifecycle, SecondApiServer};
use support::fault_proxy::{Fault, FaultProxy, Rule};
use support::ground::{Ground, Options};
use support::operator::{LONG, create, snapshot_condition, snapshot_finished, wait_for_success};
use support::real_nodes::{FrozenKubelet, HOST_ALIAS, RealNodes, volume_dir};
use support::s3::S3Server;

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
    g.fill_member();
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

/// The Ready condition of node `name`: (status, reason).
fn ready_of(node: &Node) -> (String, String) {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
        .unwrap_or_default()
}

/// A real S3 server behind the fault proxy, reachable from pods, that holds every write (PUT)
/// for 15 minutes: a copy into it hangs in the middle. Its credentials are Secret `s3-creds`.
/// Started with the ground's member filled, BackupJob `j` copying it there with `placement`,
/// and its Snapshot `j-1` created.
struct StalledStore {
    proxy: FaultProxy,
    _s3: S3Server,
    _work: tempfile::TempDir,
}

impl StalledStore {
    async fn start(g: &Ground, nodes: &RealNodes, placement: serde_json::Value) -> StalledStore {
        g.fill_member();
        let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let s3 = S3Server::start(&work.path().join("s3"), "backups");
        let proxy = FaultProxy::start(s3.port);
        nodes.expose(proxy.port);
        proxy.inject(Rule::new(
            Some("PUT"),
            "",
            Fault::Stall(Duration::from_secs(900)),
            usize::MAX,
        ));
        create::<Secret>(
            &g.ns.api(),
            json!({"metadata": {"name": "s3-creds"}, "stringData": {
                "AWS_ACCESS_KEY_ID": support::s3::ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": support::s3::SECRET_KEY}}),
        )
        .await;
        let store = StalledStore {
            proxy,
            _s3: s3,
            _work: work,
        };
        g.job_spec(
            "j",
            json!({"consistency": {"mode": "stoppedMember"}}),
            json!({"destination": store.destination(), "placement": placement}),
        )
        .await;
        g.snapshot("j-1", "j").await;
        store
    }

    /// A BackupJob's destination in it.
    fn destination(&self) -> serde_json::Value {
        json!({"s3": {"bucket": "backups", "prefix": "rs0", "pathStyle": true,
               "endpoint": format!("http://{HOST_ALIAS}:{}", self.proxy.port), "credentialsSecret": "s3-creds", "insecure": true}})
    }

    /// Wait until a copy has begun to write (and is held).
    async fn writing(&self) {
        support::cluster::eventually("the copy to write to the store", LONG, || async {
            if self.proxy.seen().iter().any(|s| s.method == "PUT") {
                Ok(())
            } else {
                Err("no PUT yet")
            }
        })
        .await;
    }
}

/// A copy that hangs (every write to its store held) is stopped by the kubelet at the job's
/// spec.placement.runTimeout (the pod's activeDeadlineSeconds), and the Snapshot fails naming
/// runTimeout and the kubelet's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_hangs_is_stopped_at_its_run_timeout() {
    let Some(g) = Ground::new("run-timeout").await else {
        return;
    };
    let Some(nodes) = RealNodes::get() else {
        return;
    };
    let store = StalledStore::start(&g, nodes, json!({"runTimeout": "20s"})).await;
    store.writing().await;
    let snaps: Api<Snapshot> = g.ns.api();
    let message = failed_message(&snaps, "j-1", "the hung copy to be stopped").await;
    assert!(
        message.contains("longer than spec.placement.runTimeout allows")
            && message.contains("deadline"),
        "{message}"
    );
}

/// BackupJob `j` of the ground's member, filled and copied in mode stoppedMember, with `spec`
/// merged into its spec.
async fn stopped_member_job(g: &Ground, spec: serde_json::Value) {
    g.fill_member();
    g.job_spec("j", json!({"consistency": {"mode": "stoppedMember"}}), spec)
        .await;
}

/// The agent process of Snapshot `snapshot` in namespace `ns` running on this host's real
/// nodes (their containers are processes here), and the termination message it has written
/// so far, read through its root.
fn agent_process(ns: &str, snapshot: &str) -> Option<(i32, String)> {
    let want = [
        format!("SNAPCRYPT_NAMESPACE={ns}"),
        format!("SNAPCRYPT_SNAPSHOT={snapshot}"),
    ];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        if !cmdline.windows(15).any(|w| w == b"agent\0snapshot\0") {
            return None;
        }
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if !want.iter().all(|w| vars.contains(&w.as_bytes())) {
            return None;
        }
        let message =
            std::fs::read_to_string(e.path().join("root/dev/termination-log")).unwrap_or_default();
        Some((pid, message))
    })
}

/// How a test stops a snapshot pod in its retention pass.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGKILL to the agent, as the kernel's OOM killer kills one at its memory limit.
    Kill,
    /// The pod's activeDeadlineSeconds (what spec.placement.runTimeout sets) cut to just past
    /// now, so that the kubelet stops it at its deadline.
    Deadline,
}

/// A snapshot pod stopped (`how`) during its retention pass, held there by a lock another
/// process holds, had finished its backup: the Snapshot is Succeeded after one attempt, its
/// RetentionApplied condition says retention did not finish, and its repository snapshot
/// restores exactly.
async fn stopped_in_retention_keeps_its_complete_backup(name: &str, how: Stop) {
    let Some(g) = Ground::new(name).await else {
        return;
    };
    if RealNodes::get().is_none() {
        return;
    }
    stopped_member_job(&g, json!({"retention": {"keepLast": 1}})).await;
    let snaps: Api<Snapshot> = g.ns.api();
    g.snapshot("j-1", "j").await;
    wait_for_success(&snaps, "j-1", &g.ns).await;
    // A live shared lock (refreshed now): retention's exclusive lock waits 30 s for it.
    let busy = support::plant_shared_lock(&volume_dir(&g.ns, "backups").await.join("repo"), "busy");
    g.snapshot("j-2", "j").await;
    let mut pid = 0;
    support::wait_for(
        "the snapshot agent to write its result and wait for its retention lock",
        LONG,
        || match agent_process(g.ns.name(), "j-2") {
            Some((p, message)) if message.contains("retention did not finish") => {
                pid = p;
                true
            }
            _ => false,
        },
    );
    match how {
        Stop::Kill => {
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .expect("kill");
            assert!(killed.success());
        }
        Stop::Deadline => {
            // The kubelet reports a pod stopped at its deadline without the termination
            // message, so only the result the agent reported through the API tells.
            let reported = wait_for(
                &snaps,
                "j-2",
                "the snapshot agent to report its result into the Snapshot's status",
                LONG,
                |s| {
                    s.status
                        .as_ref()
                        .is_some_and(|st| st.agent_result.is_some())
                },
            )
            .await;
            let st = reported.status.expect("status");
            let pod_name = st.pod_name.expect("pod name");
            assert_eq!(st.agent_result.map(|r| r.pod), Some(pod_name.clone()));
            let pods: Api<Pod> = g.ns.api();
            // The kubelet posts the pod's status on its own schedule: the agent may report
            // before the API server has the pod's start time.
            let pod = wait_for(
                &pods,
                &pod_name,
                "the kubelet to post the snapshot pod's start time",
                LONG,
                |p| p.status.as_ref().is_some_and(|s| s.start_time.is_some()),
            )
            .await;
            let started = pod
                .status
                .and_then(|s| s.start_time)
                .expect("the pod's start time");
            let active = (jiff::Timestamp::now() - started.0).get_seconds();
            pods.patch(
                &pod_name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"activeDeadlineSeconds": active + 2}})),
            )
            .await
            .expect("shorten the pod's deadline");
            wait_for(
                &pods,
                &pod_name,
                "the kubelet to stop the pod at its deadline",
                LONG,
                |p| p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded"),
            )
            .await;
        }
    }
    let done = wait_for(
        &snaps,
        "j-2",
        "the Snapshot stopped in retention to finish",
        LONG,
        snapshot_finished,
    )
    .await;
    let st = done.status.expect("status");
    let retention = snapshot_condition(&st, "RetentionApplied");
    assert_eq!(st.phase, RunPhase::Succeeded, "{how:?}: {st:?}");
    assert_eq!(st.attempts, 1, "{st:?}");
    assert!(
        retention.starts_with("False") && retention.contains("retention did not finish"),
        "{retention}"
    );
    std::fs::remove_file(busy).expect("remove the lock");
    let id = st.repository_snapshot_id.clone().expect("id");
    assert!(repository_snapshots(&g).await.contains(&id));
    let out = tempfile::tempdir().expect("tempdir");
    g.restore(&id, out.path()).await;
    support::assert_same_tree(&g.data, out.path());
}

/// Killed as the OOM killer kills: before, the pod's result was written only after retention,
/// so the killed pod failed the Snapshot (and, with retries, ran the backup again, to be
/// killed in the same place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_pod_killed_during_retention_keeps_its_complete_backup() {
    stopped_in_retention_keeps_its_complete_backup("retention-kill", Stop::Kill).await;
}

/// Stopped at its runTimeout: the kubelet marks the pod Failed (DeadlineExceeded) with no
/// termination message, and the Snapshot takes the result the agent reported into its status
/// before retention. Before, the Snapshot failed naming runTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_pod_stopped_at_its_deadline_during_retention_keeps_its_complete_backup() {
    stopped_in_retention_keeps_its_complete_backup("retention-deadline", Stop::Deadline).await;
}

/// A snapshot pod whose memory limit is too low for it is OOM-killed by the real node's
/// kernel, and the Snapshot fails naming the field to raise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_pod_oom_killed_names_the_memory_limit_to_raise() {
    let Some(g) = Ground::new("oom").await else {
        return;
    };
    if RealNodes::get().is_none() {
        return;
    }
    stopped_member_job(&g, json!({"resources": {"limits": {"memory": "8Mi"}}})).await;
    let snaps: Api<Snapshot> = g.ns.api();
    g.snapshot("j-1", "j").await;
    let message = failed_message(&snaps, "j-1", "the Snapshot to fail").await;
    assert!(
        message.contains("killed at its memory limit (OOMKilled)")
            && message.contains("raise the BackupJob's spec.resources.limits.memory"),
        "{message}"
    );
}

/// Wait (on `what`) until Snapshot `name` finishes, require that it failed; its message.
async fn failed_message(snaps: &Api<Snapshot>, name: &str, what: &str) -> String {
    let done = wait_for(snaps, name, what, LONG, snapshot_finished).await;
    let st = done.status.expect("status");
    assert_eq!(st.phase, RunPhase::Failed, "{st:?}");
    st.message.unwrap_or_default()
}

/// Whether `node` is Ready and carries none of the taints of a lost node.
fn healthy(node: &Node) -> bool {
    ready_of(node).0 == "True"
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key.starts_with("node.kubernetes.io/")))
}

/// The member's node is lost while a snapshot pod copies from it (its kubelet stops, the node
/// lifecycle controller marks it Ready=Unknown): once spec.placement.nodeLostTimeout has
/// passed, the pod is deleted and the Snapshot fails naming the node, instead of staying
/// Running for as long as the node is gone. Once the node is back, the next Snapshot succeeds.
/// The copy is held in the middle by a store that stalls every write (the fault proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_node_lost_mid_copy_fails_the_attempt_naming_the_node() {
    const NODE: &str = "real-c";
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    let Some(nodes) = RealNodes::get() else {
        return;
    };
    nodes.add_dedicated(NODE);
    let _lifecycle = NodeLifecycle::start("20s");
    // Ready, and without the taints of an earlier loss (the controller lifts them).
    let nodes_api: Api<Node> = Api::all(cluster.client.clone());
    wait_for(
        &nodes_api,
        NODE,
        "the dedicated node to be healthy",
        LONG,
        healthy,
    )
    .await;
    let opts = Options {
        member_node: Some(NODE),
        ..Default::default()
    };
    let Some(g) = Ground::with("node-lost", opts).await else {
        return;
    };
    let store = StalledStore::start(&g, nodes, json!({"nodeLostTimeout": "10s"})).await;
    let snaps: Api<Snapshot> = g.ns.api();
    wait_for(&snaps, "j-1", "the copy to run", LONG, |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.phase == RunPhase::Running)
    })
    .await;
    store.writing().await;
    let pod = snaps
        .get("j-1")
        .await
        .expect("snapshot")
        .status
        .and_then(|s| s.pod_name)
        .expect("pod name");

    let frozen = FrozenKubelet::freeze(NODE);
    wait_for(&nodes_api, NODE, "the node to be marked lost", LONG, |n| {
        ready_of(n).0 == "Unknown"
    })
    .await;
    let message = failed_message(&snaps, "j-1", "the Snapshot to give the copy up").await;
    assert!(
        message.contains(&format!(
            "node {NODE} has not been Ready for over 10s (spec.placement.nodeLostTimeout)"
        )),
        "{message}"
    );
    let pods: Api<Pod> = g.ns.api();
    wait_for_deletion(&pods, &pod, LONG).await;

    // The node comes back: the next Snapshot runs there and succeeds.
    drop(frozen);
    wait_for(
        &nodes_api,
        NODE,
        "the node to be Ready again",
        LONG,
        healthy,
    )
    .await;
    store.proxy.clear();
    g.snapshot("j-2", "j").await;
    wait_for_success(&snaps, "j-2", &g.ns).await;
}

/// A Restore whose pod can never start (its target claim's StorageClass provisions nothing)
/// does not stay Pending forever: at the BackupJob's spec.placement.pendingTimeout its pod is
/// deleted and the Restore fails, naming the timeout and the kubelet's or scheduler's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_pod_cannot_start_fails_at_its_pending_timeout() {
    let Some(g) = Ground::new("restore-pending").await else {
        return;
    };
    support::make_source(&g.data);
    support::chown_mongodb(&g.data);
    g.job_spec(
        "j",
        json!({"consistency": {"mode": "stoppedMember"}}),
        json!({"placement": {"pendingTimeout": "20s"}}),
    )
    .await;
    g.snapshot("j-1", "j").await;
    let snaps: Api<Snapshot> = g.ns.api();
    wait_for_success(&snaps, "j-1", &g.ns).await;
    create::<PersistentVolumeClaim>(
        &g.ns.api(),
        json!({"metadata": {"name": "nowhere"}, "spec": {"accessModes": ["ReadWriteOnce"],
               "storageClassName": "snapcrypt-no-such-class",
               "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    let restores: Api<Restore> = g.ns.api();
    create::<Restore>(
        &restores,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "back"},
               "spec": {"snapshotRef": {"name": "j-1"}, "target": {"claimName": "nowhere"}}}),
    )
    .await;
    let r = wait_for(
        &restores,
        "back",
        "the Restore to give up",
        LONG,
        support::operator::restore_finished,
    )
    .await;
    let st = r.status.expect("status");
    assert_eq!(st.phase, RunPhase::Failed, "{st:?}");
    let message = st.message.clone().unwrap_or_default();
    assert!(
        message.contains("stayed Pending for over 20s (spec.placement.pendingTimeout)")
            && message.contains("unbound"),
        "{message}"
    );
    let pods: Api<Pod> = g.ns.api();
    wait_for_deletion(&pods, &st.pod_name.expect("pod name"), LONG).await;
}
