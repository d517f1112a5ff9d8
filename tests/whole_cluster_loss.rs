//! #31, the disaster: a whole cluster lost, and its replica set brought back in a new one from
//! what lives outside it (the object store, the KMIP server, the manifests in Git). On the
//! real-pods ground (tests/cluster/node.sh: a scheduler, two kubelets with containerd): a
//! BackupJob backs up a member of a three-member replica set spread over two nodes into an S3
//! repository whose data keys a PyKMIP master key wraps; then the ground is stopped and its
//! etcd data deleted (tests/cluster/stop.sh) and a new one started; the chart, the Secrets, the
//! KmipServer and the same BackupJob applied there bring the Snapshot objects back; one
//! Restore with spec.source and spec.targets restores all three members' claims in parallel;
//! every file is identical and WiredTiger opens the restored files. The time from the first
//! apply to the restored claims is printed (docs/DISASTER-RECOVERY.md quotes it).
//!
//! This binary restarts the shared test ground, so it holds this one test, and its name sorts
//! it after every other test binary (cargo runs them one at a time, in name order). MongoDB
//! cannot run here: the members are pause pods and WiredTiger (the engine inside mongod)
//! judges the restored files (tests/README.md).
#[path = "support/kmip.rs"]
mod pykmip;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, ListParams};
use serde_json::json;

use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::{BackupJob, Restore, Snapshot};
use support::cluster::{TestNamespace, cluster_or_skip, try_wait_for, wait_for};
use support::operator::{ChartOperator, LONG, Operator, create, member, wait_for_success};
use support::real_nodes::{HOST_ALIAS, IMAGE, RealNodes, volume_dir};

/// What survives the cluster: the object store and the key server, on this machine.
struct Outside {
    s3: support::s3::S3Server,
    kmip: pykmip::PyKmip,
}

const MEMBERS: [(&str, &str); 3] = [
    ("rs0-0", "real-a"),
    ("rs0-1", "real-b"),
    ("rs0-2", "real-a"),
];

/// The manifests a platform team keeps in Git, applied the same way in both clusters: the
/// store's credentials, the KMIP client certificate, the KmipServer and the BackupJob (member
/// rs0-1, yearly, so only the test's own Snapshot runs).
async fn apply_manifests(ns: &TestNamespace, out: &Outside) {
    let read = |f: &str| std::fs::read_to_string(out.kmip.file(f)).expect("pki file");
    create::<Secret>(
        &ns.api(),
        json!({"metadata": {"name": "kmip-client"}, "stringData": {
            "tls.crt": read("client.pem"), "tls.key": read("client.key"), "ca.crt": read("ca.pem")}}),
    )
    .await;
    create::<Secret>(
        &ns.api(),
        json!({"metadata": {"name": "store-creds"}, "stringData": {
            "AWS_ACCESS_KEY_ID": support::s3::ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": support::s3::SECRET_KEY}}),
    )
    .await;
    create::<snapcrypt::api::KmipServer>(
        &ns.api(),
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "KmipServer", "metadata": {"name": "pykmip"},
               "spec": {"endpoints": [format!("{HOST_ALIAS}:{}", out.kmip.port)],
                        "tls": {"secretName": "kmip-client", "serverName": "localhost"},
                        "masterKey": {"create": {"name": "dr-master"}}}}),
    )
    .await;
    create::<BackupJob>(
        &ns.api(),
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": "rs0"},
            "spec": {
                "source": {"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                           "syncSource": {"mode": "member", "member": "rs0-1"}},
                "destination": destination(out),
                "encryption": {"kmipServerRef": {"name": "pykmip"}},
                "schedule": {"cron": "0 0 1 1 *"},
                "backoffLimit": 1}}),
    )
    .await;
}

fn destination(out: &Outside) -> serde_json::Value {
    json!({"s3": {"bucket": "backups", "prefix": "rs0", "pathStyle": true, "insecure": true,
                  "endpoint": format!("http://{HOST_ALIAS}:{}", out.s3.port),
                  "credentialsSecret": "store-creds"}})
}

/// Run a test-ground script, failing the test with its output if it fails.
fn ground(script: &str, args: &[&str]) {
    let out = Command::new(support::repo_root().join("tests/cluster").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster lost: every node and the control plane stopped, etcd's data deleted; then a
/// new cluster (new CA, new etcd, the same node names) with the test image loaded.
fn lose_the_cluster_and_start_a_new_one() {
    let dir = std::env::var("SNAPCRYPT_CLUSTER_DIR").unwrap_or("/tmp/snapcrypt-cluster".into());
    ground("stop.sh", &[]);
    assert!(
        !Path::new(&dir).join("etcd").exists(),
        "etcd's data is gone"
    );
    ground("start.sh", &[]);
    ground("node.sh", &["start", "real-a", "real-b"]);
    let bin = support::bin();
    ground("image.sh", &[bin.to_str().expect("path"), IMAGE]);
}

/// Phase one, the cluster that will be lost: the replica set, the manifests, an operator, one
/// Snapshot. Returns the namespace's name and the repository snapshot id; the member's data
/// is copied into `expected`.
async fn back_up_before_the_loss(out: &Outside, expected: &Path) -> (String, String) {
    let cluster = cluster_or_skip().await.expect("cluster");
    cluster.apply_crds().await;
    let ns = cluster.namespace("dr").await;
    let mut data = Vec::new();
    for (name, node) in MEMBERS {
        data.push(member(&ns, name, node).await);
    }
    // rs0-1's dbPath: real WiredTiger files, closed cleanly (a stopped member).
    drop(support::wiredtiger::Writer::start(&data[1]));
    support::chown_mongodb(&data[1]);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&data[1])
        .arg(expected)
        .status();
    assert!(copied.is_ok_and(|s| s.success()), "copy the member's data");
    let _operator = Operator::start_with_image(cluster.kubeconfig(), ns.name(), IMAGE, &[]);
    apply_manifests(&ns, out).await;
    create::<Snapshot>(
        &ns.api(),
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
               "metadata": {"name": "rs0-before-the-loss"}, "spec": {"backupJobRef": {"name": "rs0"}}}),
    )
    .await;
    let st = wait_for_success(&ns.api(), "rs0-before-the-loss", &ns).await;
    let id = st.repository_snapshot_id.expect("repository snapshot id");
    assert!(st.key_id.is_some(), "wrapped under a KMIP master key");
    (ns.name().to_string(), id)
}

/// The BackupJob's status and the namespace's pods and their logs, for a failing wait.
fn what_the_job_says(ns: &TestNamespace) -> String {
    let out = Command::new("kubectl")
        .args([
            "-n",
            ns.name(),
            "get",
            "backupjobs,pods,configmaps",
            "-o",
            "yaml",
        ])
        .output();
    let listed = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    format!(
        "{}\n{}",
        listed.unwrap_or_default(),
        support::real_nodes::pod_logs(ns.name())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cluster_comes_back_from_its_repository_and_key_server() {
    if cluster_or_skip().await.is_none() {
        return;
    }
    let Some(nodes) = RealNodes::get() else {
        return;
    };
    let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let out = Outside {
        s3: support::s3::S3Server::start(&work.path().join("s3"), "backups"),
        kmip: pykmip::PyKmip::start(),
    };
    nodes.expose(out.s3.port);
    nodes.expose(out.kmip.port);
    let expected = work.path().join("expected");
    let (ns_name, id) = back_up_before_the_loss(&out, &expected).await;

    lose_the_cluster_and_start_a_new_one();
    nodes.expose(out.s3.port);
    nodes.expose(out.kmip.port);

    // The new cluster: the chart, the same manifests, the members' new (empty) claims.
    let started = Instant::now();
    let cluster = cluster_or_skip().await.expect("the new cluster");
    cluster.apply_crds_now().await;
    let ns = cluster.namespace_named(&ns_name).await;
    let _chart = ChartOperator::install(&ns).await;
    apply_manifests(&ns, &out).await;
    for (name, _) in MEMBERS {
        create::<PersistentVolumeClaim>(
            &ns.api(),
            json!({"metadata": {"name": format!("mongo-data-{name}"), "labels": {"snapcrypt.test/data-of": "rs0"}},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        )
        .await;
    }

    // The catalog comes back: the Snapshot, imported under its old name.
    let snaps: Api<Snapshot> = ns.api();
    let imported = try_wait_for(
        &snaps,
        "rs0-before-the-loss",
        "the imported Snapshot",
        LONG,
        |s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.phase == RunPhase::Succeeded)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", what_the_job_says(&ns)));
    let st = imported.status.expect("status");
    assert_eq!(st.repository_snapshot_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        imported.metadata.labels.unwrap_or_default()["snapcrypt.dev/imported"],
        "true"
    );
    // The job only reads: the old cluster wrote its snapshots.
    let jobs: Api<BackupJob> = ns.api();
    let job = wait_for(&jobs, "rs0", "the job's catalog", LONG, |j| {
        j.status
            .as_ref()
            .and_then(|s| s.catalog.as_ref())
            .is_some_and(|c| c.phase == RunPhase::Succeeded)
    })
    .await;
    let catalog = job.status.and_then(|s| s.catalog).expect("catalog");
    assert_eq!((catalog.found, catalog.imported), (Some(1), Some(1)));
    assert!(
        catalog.owner.is_some() && catalog.owner != catalog.this_cluster,
        "{catalog:?}"
    );

    // One Restore of the whole replica set, from the repository alone.
    let restores: Api<Restore> = ns.api();
    create::<Restore>(
        &restores,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "rs0-back"},
            "spec": {"source": {"backupJob": "rs0", "destination": destination(&out),
                                "encryption": {"kmipServerRef": {"name": "pykmip"}}},
                     "targets": {"selector": {"matchLabels": {"snapcrypt.test/data-of": "rs0"}}, "parallelism": 3}}}),
    )
    .await;
    let done = wait_for(
        &restores,
        "rs0-back",
        "the replica set's Restore",
        LONG,
        support::operator::restore_finished,
    )
    .await;
    let elapsed = started.elapsed();
    every_claim_holds_the_snapshot(&ns, done, &id, &expected, work.path()).await;
    println!(
        "recovery after the cluster's loss: {:.1} s from the first apply to three restored claims",
        elapsed.as_secs_f64()
    );
}

/// The Restore of the replica set succeeded with snapshot `id`: each claim by a Restore of
/// its own, every file as the member had it (`expected`), and WiredTiger opens each claim.
async fn every_claim_holds_the_snapshot(
    ns: &TestNamespace,
    done: Restore,
    id: &str,
    expected: &Path,
    work: &Path,
) {
    let st = done.status.expect("status");
    assert_eq!(st.phase, RunPhase::Succeeded, "{:?}", st.message);
    assert_eq!(st.snapshot_id.as_deref(), Some(id));
    assert_eq!(st.members.len(), 3);
    for m in &st.members {
        assert_eq!(m.phase, RunPhase::Succeeded, "{m:?}");
        let dir = volume_dir(ns, &m.claim_name).await;
        support::assert_same_tree(expected, &dir);
        let copy = work.join(format!("judge-{}", m.claim_name));
        let copied = Command::new("cp").arg("-a").arg(&dir).arg(&copy).status();
        assert!(copied.is_ok_and(|s| s.success()));
        assert_eq!(
            support::wiredtiger::judge(&copy),
            Ok(()),
            "{}",
            m.claim_name
        );
    }
    // Each claim had a Restore (and pod) of its own.
    let restores: Api<Restore> = ns.api();
    let children = restores
        .list(&ListParams::default().labels("snapcrypt.dev/parent-restore-uid"))
        .await
        .expect("member Restores");
    assert_eq!(children.items.len(), 3);
}
