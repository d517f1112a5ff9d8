//! The KmipServer controller end to end: a real PyKMIP server on loopback (reached from pods
//! over the pod network), the operator binary, snapshot pods in real containers on the test
//! ground's nodes (tests/README.md). The KmipServer's status reflects the server (identity,
//! versions, the master key it created, its state); a BackupJob under it takes a snapshot whose
//! data key the server wraps; the key rotates on the policy's period (the old key is kept and
//! superseded, an Event says so); the snapshot restores with the KMIP flags alone. A missing
//! TLS Secret is a condition naming the field.

#[path = "support/kmip.rs"]
mod pykmip;
mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use snapcrypt::api::kmip_server::MasterKeyState;
use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::{BackupJob, KmipServer, Snapshot};
use support::cluster::{TestNamespace, cluster_or_skip, try_wait_for, wait_for};
use support::operator::{LONG, Operator, claim, create, member, wait_for_event, wait_for_success};
use support::real_nodes::{HOST_ALIAS, RealNodes, volume_dir};

/// Restore `snapshot` of the repository at `repo` into `target` with the CLI and the KMIP
/// flags alone.
fn restore(
    repo: &std::path::Path,
    snapshot: &str,
    target: &std::path::Path,
    kmip: &pykmip::PyKmip,
) {
    let (repo, target) = (repo.display().to_string(), target.display().to_string());
    let flags = kmip.cli_flags();
    support::ok(
        &pykmip::with(
            &[
                "restore",
                "--repo",
                &repo,
                "--snapshot",
                snapshot,
                "--target",
                &target,
            ],
            &flags,
        ),
        &[],
    );
}

/// A namespace with PyKMIP reachable from pods at `endpoint`, its client certificate in the
/// Secret `kmip-client` (tls.crt, tls.key, ca.crt), and the operator watching it.
struct KmipGround {
    ns: TestNamespace,
    kmip: pykmip::PyKmip,
    endpoint: String,
    _operator: Operator,
}

impl KmipGround {
    async fn new(purpose: &str) -> Option<KmipGround> {
        let cluster = cluster_or_skip().await?;
        let nodes = RealNodes::get()?;
        cluster.apply_crds().await;
        let ns = cluster.namespace(purpose).await;
        let kmip = pykmip::PyKmip::start();
        nodes.expose(kmip.port);
        let endpoint = format!("{HOST_ALIAS}:{}", kmip.port);
        let read = |f: &str| std::fs::read_to_string(kmip.file(f)).expect("pki file");
        create::<Secret>(
            &ns.api(),
            json!({"metadata": {"name": "kmip-client"}, "stringData": {
                "tls.crt": read("client.pem"), "tls.key": read("client.key"), "ca.crt": read("ca.pem")}}),
        )
        .await;
        let _operator = Operator::start(cluster.kubeconfig(), ns.name());
        Some(KmipGround {
            ns,
            kmip,
            endpoint,
            _operator,
        })
    }
}

/// KmipServer `pykmip` of the ground's PyKMIP at `endpoint` (client Secret `kmip-client`,
/// polled every 5 s), `spec` merged into its spec, once it is Ready.
async fn ready_server(
    servers: &Api<KmipServer>,
    endpoint: &str,
    spec: serde_json::Value,
) -> KmipServer {
    let mut full = json!({"endpoints": [endpoint],
        "tls": {"secretName": "kmip-client", "serverName": "localhost"}, "pollInterval": "5s"});
    if let (Some(f), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        f.extend(extra.clone());
    }
    create::<KmipServer>(
        servers,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "KmipServer",
               "metadata": {"name": "pykmip"}, "spec": full}),
    )
    .await;
    try_wait_for(servers, "pykmip", "the KmipServer to be Ready", LONG, |k| {
        cond(k, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn cond(ks: &KmipServer, t: &str) -> Option<(String, String, String)> {
    ks.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmip_server_status_snapshot_and_rotation() {
    let Some(KmipGround {
        ns,
        kmip,
        endpoint,
        _operator: operator,
    }) = KmipGround::new("kmip").await
    else {
        return;
    };
    let servers: Api<KmipServer> = ns.api();

    a_server_without_its_secret_is_reported(&servers, &kmip).await;

    // The real one: status reflects PyKMIP; the master key is created and Active.
    let ks = ready_server(
        &servers,
        &endpoint,
        json!({"masterKey": {"create": {"name": "e2e-master"}},
               "rotation": {"period": "1m", "rewrapExisting": true}}),
    )
    .await;
    let st = ks.status.clone().expect("status");
    let server = st.server.clone().expect("server identity");
    assert!(
        server.protocol_versions.contains(&"1.4".to_string()),
        "{server:?}"
    );
    assert_eq!(server.negotiated_version.as_deref(), Some("1.4"));
    let first_key = st.active_key_id.clone().expect("active key");
    assert_eq!(st.keys.len(), 1);
    assert_eq!(st.keys[0].state, MasterKeyState::Active);
    assert!(st.next_rotation_time.is_some());
    // kubectl prints NEXT ROTATION (a time to come) as a time, not <invalid> (#29).
    let table = support::plain::kubectl_tables_read_right(ns.name());
    let next = st.next_rotation_time.as_ref().map(|t| t.0.to_string());
    assert!(table.contains(next.as_deref().unwrap_or("?")), "{table}");
    for t in ["Reachable", "Authenticated", "KeyActive"] {
        assert_eq!(cond(&ks, t).unwrap().0, "True", "{t}: {:?}", cond(&ks, t));
    }

    // A BackupJob under it: the snapshot pod wraps its data key on the KMIP server.
    let data = member(&ns, "rs0-0", "real-a").await;
    support::make_source(&data);
    support::chown_mongodb(&data);
    claim(&ns, "backups", None).await;
    let jobs: Api<BackupJob> = ns.api();
    create::<BackupJob>(
        &jobs,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": "kmipjob"},
               "spec": {"source": {"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                                   "syncSource": {"mode": "member", "member": "rs0-0"}},
                        "destination": {"pvc": {"claimName": "backups", "path": "repo"}},
                        "encryption": {"kmipServerRef": {"name": "pykmip"}}}}),
    )
    .await;
    let j = wait_for(
        &jobs,
        "kmipjob",
        "the job to create its Snapshot",
        LONG,
        |j| j.status.as_ref().is_some_and(|s| s.last_snapshot.is_some()),
    )
    .await;
    let snap_name = j.status.and_then(|s| s.last_snapshot).expect("snapshot");
    let snaps: Api<Snapshot> = ns.api();
    let sst = wait_for_success(&snaps, &snap_name, &ns).await;
    assert_eq!(sst.key_id.as_deref(), Some(first_key.as_str()));

    // Rotation on the period: a new active key, the old one kept and superseded, an Event,
    // and the old key still counted as needed by the snapshot taken under it.
    let ks = try_wait_for(&servers, "pykmip", "the master key to rotate", LONG, |k| {
        k.status.as_ref().is_some_and(|s| {
            s.active_key_id.as_deref() != Some(first_key.as_str()) && s.last_rotation_time.is_some()
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let st = ks.status.clone().expect("status");
    let old = st
        .keys
        .iter()
        .find(|k| k.id == first_key)
        .expect("old key listed");
    assert_eq!(old.state, MasterKeyState::Superseded, "{st:?}");
    assert!(old.superseded_at.is_some());
    assert_eq!(old.dependent_snapshots, 1, "{st:?}");
    wait_for_event(&ns, "pykmip", "Rotated").await;
    assert_eq!(cond(&ks, "Rotating").map(|c| c.0).as_deref(), Some("True"));

    master_key_metrics_say_what_the_status_says(&ns, &servers, &operator, old.created_at.as_ref())
        .await;
    a_job_naming_a_missing_kmip_server_is_reported(&jobs).await;

    // The snapshot restores from the repository with the KMIP flags alone.
    let repo = volume_dir(&ns, "backups").await.join("repo");
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("restored");
    restore(&repo, "latest", &target, &kmip);
    support::assert_same_tree(&data, &target);
}

/// A server whose Secret is missing: a condition naming the field, not a crash.
async fn a_server_without_its_secret_is_reported(servers: &Api<KmipServer>, kmip: &pykmip::PyKmip) {
    create::<KmipServer>(
        servers,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "KmipServer", "metadata": {"name": "nosecret"},
               "spec": {"endpoints": [kmip.endpoint()], "tls": {"secretName": "absent"}, "masterKey": {"create": {"name": "x"}}}}),
    )
    .await;
    let ks = wait_for(
        servers,
        "nosecret",
        "the missing Secret to be reported",
        LONG,
        |k| cond(k, "Ready").is_some_and(|c| c.0 == "False"),
    )
    .await;
    assert!(
        cond(&ks, "Ready")
            .unwrap()
            .2
            .contains("spec.tls.secretName: Secret absent does not exist"),
        "{:?}",
        ks.status
    );
}

/// /metrics: the job's master key (the one its snapshot was taken under) with its age, the
/// server's rotation period, and its rotations, as the KmipServer's status says.
async fn master_key_metrics_say_what_the_status_says(
    ns: &TestNamespace,
    servers: &Api<KmipServer>,
    operator: &Operator,
    old_created: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) {
    let before = servers
        .get("pykmip")
        .await
        .expect("KmipServer")
        .status
        .expect("status");
    let m = support::operator::parse_metrics(&operator.metrics());
    let after = servers
        .get("pykmip")
        .await
        .expect("KmipServer")
        .status
        .expect("status");
    let sample = |name: &str| support::operator::job_sample(&m, name, ns.name(), "kmipjob");
    assert_eq!(
        sample("snapcrypt_backupjob_master_key_rotation_period_seconds"),
        60.0
    );
    let rotated = |s: &snapcrypt::api::KmipServerStatus| {
        s.keys.iter().filter(|k| k.superseded_at.is_some()).count() as f64
    };
    let rotations = sample("snapcrypt_backupjob_master_key_rotations_total");
    assert!(
        (rotated(&before)..=rotated(&after)).contains(&rotations),
        "{rotations}"
    );
    let created = old_created.expect("created").0;
    let age = jiff::Timestamp::now().duration_since(created).as_secs_f64();
    let exported = sample("snapcrypt_backupjob_master_key_age_seconds");
    assert!(
        exported <= age && exported > age - 30.0,
        "{exported} vs {age}"
    );
}

/// A BackupJob naming a KmipServer that does not exist: a condition naming the field.
async fn a_job_naming_a_missing_kmip_server_is_reported(jobs: &Api<BackupJob>) {
    create::<BackupJob>(
        jobs,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": "nokmip"},
               "spec": {"source": {"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                                   "syncSource": {"mode": "member", "member": "rs0-0"}},
                        "destination": {"pvc": {"claimName": "backups", "path": "other"}},
                        "encryption": {"kmipServerRef": {"name": "absent-kmip"}}}}),
    )
    .await;
    let j = wait_for(
        jobs,
        "nokmip",
        "the missing KmipServer to be reported",
        LONG,
        |j| {
            j.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.reason == "KmipServerNotFound")
            })
        },
    )
    .await;
    let c = j
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.reason == "KmipServerNotFound")
        .expect("condition");
    assert!(
        c.message.contains("spec.encryption.kmipServerRef.name"),
        "{c:?}"
    );
}

/// A master key revoked on the KMIP server between two snapshots (by a security team, say):
/// the KmipServer replaces it with a new key at its next look (a `KeyReplaced` Event naming
/// both; the revoked key stays listed, with its state and the snapshot that depends on it).
/// The repository whose data key only the revoked key unwraps can take no more snapshots (the
/// server refuses to decrypt under a revoked key): the next Snapshot fails naming the key,
/// and writes nothing. Moved to a new repository, the job runs under the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_master_key_is_replaced_and_its_repository_refuses_new_snapshots() {
    let Some(KmipGround {
        ns,
        kmip,
        endpoint,
        _operator,
    }) = KmipGround::new("kmip-revoke").await
    else {
        return;
    };
    let servers: Api<KmipServer> = ns.api();
    let ks = ready_server(
        &servers,
        &endpoint,
        json!({"masterKey": {"create": {"name": "revoke-e2e"}}}),
    )
    .await;
    let first_key = ks.status.and_then(|s| s.active_key_id).expect("active key");

    let data = member(&ns, "rs0-0", "real-a").await;
    support::make_source(&data);
    support::chown_mongodb(&data);
    claim(&ns, "backups", None).await;
    create::<BackupJob>(
        &ns.api(),
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": "j"},
               "spec": {"source": {"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                                   "syncSource": {"mode": "member", "member": "rs0-0"}},
                        "destination": {"pvc": {"claimName": "backups", "path": "repo"}},
                        "encryption": {"kmipServerRef": {"name": "pykmip"}},
                        "schedule": {"cron": "0 0 1 1 *"}}}),
    )
    .await;
    let snaps: Api<Snapshot> = ns.api();
    create::<Snapshot>(&snaps, snapshot_of_j("before")).await;
    let st = wait_for_success(&snaps, "before", &ns).await;
    assert_eq!(st.key_id.as_deref(), Some(first_key.as_str()));

    // Revoked on the server: replaced at the KmipServer's next look.
    let client = snapcrypt::kms::kmip::KmipClient::new(kmip.config()).expect("client");
    client
        .revoke(
            &first_key,
            snapcrypt::kms::kmip::RevocationReason::CessationOfOperation,
            Some("e2e: revoked between two snapshots"),
        )
        .await
        .expect("revoke");
    let ks = try_wait_for(
        &servers,
        "pykmip",
        "the revoked key to be replaced",
        LONG,
        |k| {
            k.status.as_ref().is_some_and(|s| {
                s.active_key_id.as_deref().is_some_and(|a| a != first_key)
                    && cond(k, "KeyActive").is_some_and(|c| c.0 == "True")
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let st = ks.status.clone().expect("status");
    let new_key = st.active_key_id.clone().expect("active key");
    let old = st
        .keys
        .iter()
        .find(|k| k.id == first_key)
        .expect("the revoked key stays listed");
    assert_ne!(old.state, MasterKeyState::Active, "{st:?}");
    assert_eq!(old.dependent_snapshots, 1, "{st:?}");
    let note = wait_for_event(&ns, "pykmip", "KeyReplaced").await;
    assert!(
        note.contains(&first_key) && note.contains(&new_key),
        "{note}"
    );

    // The repository's data key is wrapped under the revoked key, which the server no longer
    // lets decrypt: the next Snapshot into it fails saying so, and writes nothing.
    let repo = volume_dir(&ns, "backups").await.join("repo");
    let count = |d: &str| std::fs::read_dir(repo.join(d)).map_or(0, |r| r.count());
    let before = (count("data"), count("index"), count("snapshots"));
    create::<Snapshot>(&snaps, snapshot_of_j("after")).await;
    let failed = try_wait_for(&snaps, "after", "the Snapshot to fail", LONG, |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.phase == RunPhase::Failed)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let message = failed.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains(&format!("master key \"{first_key}\"")) && message.contains("Active"),
        "{message}"
    );
    assert_eq!(before, (count("data"), count("index"), count("snapshots")));

    moved_to_a_new_repository_the_job_runs_under_the_new_key(&ns, &kmip, &new_key, &data).await;
}
/// Recovery: the job moved to a new repository runs under the new key, and restores with
/// the KMIP flags alone.
async fn moved_to_a_new_repository_the_job_runs_under_the_new_key(
    ns: &TestNamespace,
    kmip: &pykmip::PyKmip,
    new_key: &str,
    data: &std::path::Path,
) {
    let snaps: Api<Snapshot> = ns.api();
    let jobs: Api<BackupJob> = ns.api();
    jobs.patch(
        "j",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"destination": {"pvc": {"path": "repo-2"}}}})),
    )
    .await
    .expect("patch");
    create::<Snapshot>(&snaps, snapshot_of_j("moved")).await;
    let st = wait_for_success(&snaps, "moved", ns).await;
    assert_eq!(st.key_id.as_deref(), Some(new_key));
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("restored");
    restore(
        &volume_dir(ns, "backups").await.join("repo-2"),
        st.repository_snapshot_id.as_deref().expect("id"),
        &target,
        kmip,
    );
    support::assert_same_tree(data, &target);
}

/// An on-demand Snapshot `name` of the job `j`.
fn snapshot_of_j(name: &str) -> serde_json::Value {
    json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot", "metadata": {"name": name},
           "spec": {"backupJobRef": {"name": "j"}}})
}
