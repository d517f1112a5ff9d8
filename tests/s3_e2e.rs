//! A BackupJob whose repository is in S3, end to end on the test cluster: a real S3 server on
//! loopback (s3s-fs, which checks SigV4 signatures), credentials from a Secret, the operator
//! binary, a snapshot pod on the member's node; `snapcrypt restore` from the bucket gives back
//! identical bytes.

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
    support::make_source(&agent.pvc_dir(ns.name(), "mongo-data-rs0-0"));
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
    let _operator = Operator::start(cluster.kubeconfig(), ns.name());
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
    let id = st.repository_snapshot_id.expect("repository snapshot id");
    assert!(st.stats.is_some_and(|s| s.files == 8 && s.stored_bytes > 0));

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
