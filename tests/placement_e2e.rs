//! Snapshot pods on real clusters' nodes (issue 17, placement), on real pods: a member on a
//! tainted node gets its snapshot pod there (the member pod's tolerations copied), and a
//! snapshot pod that cannot be scheduled ends its attempt with the scheduler's reason after
//! `spec.placement.pendingTimeout`, without blocking the job's next run.
//!
//! This binary taints node real-b for its run (removed when it ends); cargo runs test binaries
//! one at a time, so no other test sees the taint. DOUBLES as in tests/README.md: the member is
//! a pause pod, the volumes come from the provisioner double.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;

use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::{BackupJob, Snapshot};
use support::cluster::{TestNamespace, cluster_or_skip, wait_for};
use support::operator::{
    LONG, Operator, claim, create, key_secret, snapshot_finished, wait_for_success,
};
use support::real_nodes::{PAUSE_IMAGE, RealNodes, SHARED_CLASS, volume_dir};

const TAINT: &str = "snapcrypt.test/database=only:NoSchedule";

/// The taint on real-b, removed when dropped.
struct Tainted;

impl Tainted {
    fn on_real_b() -> Tainted {
        let out = std::process::Command::new("kubectl")
            .args(["taint", "nodes", "real-b", TAINT, "--overwrite"])
            .output()
            .expect("kubectl taint");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tainted
    }
}

impl Drop for Tainted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .args([
                "taint",
                "nodes",
                "real-b",
                "snapcrypt.test/database:NoSchedule-",
            ])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_pods_tolerate_the_members_taints_and_give_up_when_unschedulable() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    if RealNodes::get().is_none() {
        return;
    }
    cluster.apply_crds().await;
    let _taint = Tainted::on_real_b();
    let ns = cluster.namespace("placement").await;

    a_member_on_the_tainted_node(&ns).await;
    let pods: Api<Pod> = ns.api();
    claim(&ns, "backups", Some(SHARED_CLASS)).await;
    let work = tempfile::tempdir().expect("tempdir");
    key_secret(&ns, work.path()).await;
    let _operator = Operator::start(cluster.kubeconfig(), ns.name());
    let job = |name: &str, placement: serde_json::Value| {
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": name},
            "spec": {
                "source": {"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                           "syncSource": {"mode": "member", "member": "rs0-0"},
                           "consistency": {"mode": "stoppedMember"}},
                "destination": {"pvc": {"claimName": "backups", "path": "repo"}},
                "encryption": {"localKeySecret": {"name": "rs0-key"}},
                // Yearly: only the test's own Snapshots run (no run-once Snapshot racing them).
                "schedule": {"cron": "0 0 1 1 *"},
                "backoffLimit": 0, "placement": placement}})
    };
    let snaps: Api<Snapshot> = ns.api();
    let on_demand = |name: &str, job: &str| {
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
               "metadata": {"name": name}, "spec": {"backupJobRef": {"name": job}}})
    };

    // 1. The snapshot pod lands on the tainted node with the member's toleration.
    create::<BackupJob>(&ns.api(), job("tolerant", json!({}))).await;
    create::<Snapshot>(&snaps, on_demand("tolerant-1", "tolerant")).await;
    let st = wait_for_success(&snaps, "tolerant-1", &ns).await;
    let pod = pods
        .get(st.pod_name.as_deref().expect("pod"))
        .await
        .expect("pod");
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some("real-b"));
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.key.as_deref() == Some("snapcrypt.test/database")),
        "{:?}",
        spec.tolerations
    );

    // 2. A pod no node takes: the attempt ends after the pending timeout with the
    //    scheduler's words.
    create::<BackupJob>(&ns.api(), job("stuck", json!({"pendingTimeout": "5s"}))).await;
    // The member pins the pod to real-b; a second taint there, which nothing tolerates,
    // makes it unschedulable.
    let out = std::process::Command::new("kubectl")
        .args([
            "taint",
            "nodes",
            "real-b",
            "snapcrypt.test/maintenance=now:NoSchedule",
            "--overwrite",
        ])
        .output()
        .expect("kubectl taint");
    assert!(out.status.success());
    create::<Snapshot>(&snaps, on_demand("stuck-1", "stuck")).await;
    let done = wait_for(
        &snaps,
        "stuck-1",
        "the stuck Snapshot to fail",
        LONG,
        snapshot_finished,
    )
    .await;
    let _ = std::process::Command::new("kubectl")
        .args([
            "taint",
            "nodes",
            "real-b",
            "snapcrypt.test/maintenance:NoSchedule-",
        ])
        .output();
    let st = done.status.expect("status");
    assert_eq!(st.phase, RunPhase::Failed, "{st:?}");
    let msg = st.message.unwrap_or_default();
    assert!(
        msg.starts_with("snapshot pod stuck-1-1 stayed Pending for over 5s (spec.placement.pendingTimeout): Unschedulable"),
        "{msg}"
    );
    // Its pod goes with it: left Pending, it would start once the node is free and write into
    // the repository for a Snapshot that failed.
    support::cluster::wait_for_deletion(&pods, "stuck-1-1", LONG).await;

    // 3. The job is not blocked: its next run starts and, the node free again, succeeds.
    create::<Snapshot>(&snaps, on_demand("stuck-2", "stuck")).await;
    wait_for_success(&snaps, "stuck-2", &ns).await;
}

/// A member on the tainted node, tolerating it as a database pod would.
async fn a_member_on_the_tainted_node(ns: &TestNamespace) {
    claim(ns, "mongo-data-rs0-0", None).await;
    create::<Pod>(
        &ns.api(),
        json!({"metadata": {"name": "rs0-0", "labels": {"app": "rs-e2e"}}, "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "real-b"},
            "tolerations": [{"key": "snapcrypt.test/database", "operator": "Equal", "value": "only", "effect": "NoSchedule"}],
            "containers": [{"name": "mongod", "image": PAUSE_IMAGE, "imagePullPolicy": "Never",
                "volumeMounts": [{"name": "mongo-data", "mountPath": "/data/db"}]}],
            "volumes": [{"name": "mongo-data", "persistentVolumeClaim": {"claimName": "mongo-data-rs0-0"}}]}}),
    )
    .await;
    let pods: Api<Pod> = ns.api();
    wait_for(
        &pods,
        "rs0-0",
        "the member to run on the tainted node",
        LONG,
        |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"),
    )
    .await;
    let data = volume_dir(ns, "mongo-data-rs0-0").await;
    support::make_source(&data);
    support::chown_mongodb(&data);
}
