//! A BackupJob whose repository is in S3, end to end on the test cluster: a real S3 server on
//! loopback (s3s-fs, which checks SigV4 signatures), credentials from a Secret, the operator
//! binary, a snapshot pod on the member's node; progress shows in the Snapshot's status while it
//! runs; `snapcrypt restore` from the bucket gives back identical bytes.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;
use snapcrypt::api::{BackupJob, Snapshot};
use support::cluster::{NodeAgentOptions, cluster_or_skip, unique_name, wait_for};
use support::operator::{LONG, Operator, create, member, wait_for_success};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_job_to_s3_restores_identically() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    let node = unique_name("s3", "a");
    let Some(agent) = cluster
        .start_node_agent(NodeAgentOptions::nodes(&[&node]))
        .await
    else {
        println!("skipped: the cluster's kubelets run pods (SNAPCRYPT_E2E_NODE_AGENT is not 1)");
        return;
    };
    cluster.apply_crds().await;
    let ns = cluster.namespace("s3").await;
    let work = tempfile::tempdir().expect("tempdir");
    let s3 = support::s3::S3Server::start(&work.path().join("s3"), "backups");

    member(&ns, "rs0-0", &node).await;
    let dbpath = agent.pvc_dir(ns.name(), "mongo-data-rs0-0");
    support::make_source(&dbpath);
    // Enough data that the agent reports progress several times (every 0.1 s here) mid-run.
    std::fs::write(
        dbpath.join("collection-9-big.wt"),
        support::pseudo_random(9, 96 << 20),
    )
    .expect("big file");
    let key_path = work.path().join("key.json");
    snapcrypt::kms::local::LocalKeyManager::create(&key_path).expect("key file");
    let key_text = std::fs::read_to_string(&key_path).expect("key");
    create::<Secret>(
        &ns.api(),
        json!({"metadata": {"name": "rs0-key"}, "stringData": {"key": key_text}}),
    )
    .await;
    create::<Secret>(
        &ns.api(),
        json!({"metadata": {"name": "s3-creds"}, "stringData": {
            "AWS_ACCESS_KEY_ID": support::s3::ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": support::s3::SECRET_KEY}}),
    )
    .await;
    let _operator = Operator::start_with(
        cluster.kubeconfig(),
        ns.name(),
        &["--agent-progress-interval", "0.1"],
    );
    // Every progress reading a watch sees while a Snapshot runs.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let watch = {
        use futures::StreamExt;
        let seen = seen.clone();
        let snaps: Api<Snapshot> = ns.api();
        tokio::spawn(async move {
            let stream = kube::runtime::watcher(snaps, Default::default());
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                if let kube::runtime::watcher::Event::Apply(s) = ev
                    && let Some(st) = s.status
                    && st.phase == snapcrypt::api::snapshot::RunPhase::Running
                    && let Some(p) = st.progress
                {
                    seen.lock().unwrap().push(p.percent);
                }
            }
        })
    };
    let jobs: Api<BackupJob> = ns.api();
    create::<BackupJob>(
        &jobs,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": "tos3"},
               "spec": {"source": {"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                                   "syncSource": {"mode": "member", "member": "rs0-0"}},
                        "destination": {"s3": {"bucket": "backups", "prefix": "rs0", "pathStyle": true,
                                               "endpoint": format!("http://127.0.0.1:{}", s3.port),
                                               "credentialsSecret": "s3-creds"}},
                        "encryption": {"localKeySecret": {"name": "rs0-key"}}}}),
    )
    .await;
    let j = wait_for(&jobs, "tos3", "the job to create its Snapshot", LONG, |j| {
        j.status.as_ref().is_some_and(|s| s.last_snapshot.is_some())
    })
    .await;
    let snap_name = j.status.and_then(|s| s.last_snapshot).expect("snapshot");
    let snaps: Api<Snapshot> = ns.api();
    let st = wait_for_success(&snaps, &snap_name, &agent, &ns).await;
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|p| *p > 0.0 && *p < 100.0),
        "no progress seen mid-run: {seen:?}"
    );
    let id = st.repository_snapshot_id.expect("repository snapshot id");
    assert!(st.stats.is_some_and(|s| s.files == 9 && s.stored_bytes > 0));

    // The bucket holds the repository; it restores with the key file alone.
    let env_owned = s3.env();
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = work.path().join("restored");
    support::ok(
        &[
            "restore",
            "--repo",
            "s3://backups/rs0",
            "--key-file",
            &key_path.display().to_string(),
            "--snapshot",
            &id,
            "--target",
            &out.display().to_string(),
        ],
        &env,
    );
    support::assert_same_tree(&agent.pvc_dir(ns.name(), "mongo-data-rs0-0"), &out);
}
