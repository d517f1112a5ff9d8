//! The operator with real pods: a real kube-scheduler and two kubelets with containerd
//! (tests/cluster/node.sh) run the snapcrypt image built from the binary under test
//! (tests/cluster/image.sh). A snapshot pod lands on the node of the
//! member whose volume it mounts, reports progress to the API server through the `kubernetes`
//! Service from inside its container, survives its container being killed (the kubelet sees it
//! die, the Snapshot retries), and the kubelet enforces the read-only root filesystem. A
//! Restore brings the bytes back in a restore pod. The MongoDB member is a real pod (the pause
//! image) whose data volume the test fills: mongod itself cannot run here (tests/README.md).
//! Volumes come from the storage provisioner double (tests/cluster/provisioner.py).
#[path = "support/kmip.rs"]
mod pykmip;
mod support;

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use snapcrypt::api::{BackupJob, Restore, Snapshot};
use support::cli::restore_args;
use support::cluster::{TestNamespace, cluster_or_skip, eventually, wait_for};
use support::operator::{
    ChartOperator, LONG, claim, create, key_secret, member, snapshot_finished, wait_for_event,
    wait_for_success,
};
use support::real_nodes::{HOST_ALIAS, IMAGE, RealNodes, SHARED_CLASS, volume_dir};

/// A dbPath large enough that a backup runs for seconds: the test's awkward tree plus
/// `files` pseudo-random collection files of 32 MiB.
fn fill_member(dir: &Path, files: u64) {
    support::make_source(dir);
    for i in 0..files {
        let f = dir.join(format!("collection-{i}.wt"));
        std::fs::write(&f, support::pseudo_random(1000 + i, 32 << 20)).expect("write");
    }
    support::chown_mongodb(dir);
}

/// Attempt 2 continued from attempt 1's checkpoints (the same host, the job, though a new
/// pod): the repository holds the source about once, not the half or more attempt 1 had
/// stored and then all of it again (1.5x or more: before checkpoints, and before the pods
/// named the job as their host).
async fn attempt_2_continued(ns: &TestNamespace, st: &snapcrypt::api::SnapshotStatus) {
    let logical = st.stats.clone().expect("stats").logical_bytes;
    let repo_data = volume_dir(ns, "backups").await.join("repo/data");
    let stored: u64 = support::files_under(&repo_data)
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        stored * 10 < logical * 13,
        "the repository holds {stored} bytes for a {logical}-byte source: attempt 2 started over"
    );
}

/// Running, with progress the agent reported. The copy itself may be done (bytes_done ==
/// bytes_total) while the run still stalls before its commit: a fast copy of 388 MiB can end
/// between two watch events (seen in CI), and the run is still mid-way until it commits.
fn running_with_progress(s: &Snapshot) -> bool {
    running_past(s, |done, _| done > 0)
}

/// Half its bytes read (or all, in the stall before its commit), still running.
fn half_done(s: &Snapshot) -> bool {
    running_past(s, |done, total| done * 2 >= total)
}

/// Running, with progress (bytes read, of a known total) that `past` accepts.
fn running_past(s: &Snapshot, past: impl Fn(u64, u64) -> bool) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.phase == snapcrypt::api::snapshot::RunPhase::Running
            && st
                .progress
                .as_ref()
                .is_some_and(|p| p.bytes_total > 0 && past(p.bytes_done, p.bytes_total))
    })
}

/// The agent container's id in the pod `name`, once it runs.
async fn container_id(pods: &Api<Pod>, name: &str) -> String {
    let pod = wait_for(
        pods,
        name,
        "the snapshot pod's container to run",
        LONG,
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.first())
                .is_some_and(|c| c.container_id.is_some())
        },
    )
    .await;
    pod.status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().next())
        .and_then(|c| c.container_id)
        .expect("container id")
}

/// These tests run one at a time: each moves hundreds of MiB through two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What every real-pod test stands on: the two nodes, a namespace, member rs0-1 (a real pod,
/// the pause image) on real-b with its data volume on that node's disk holding `files` large
/// collection files, a repository claim on network storage any node reaches (`backups`, the
/// provisioner double's shared class), a restore target claim on a node's disk (`restored`,
/// the default class), and the key Secret `rs0-key`.
struct Ground {
    // Dropped in this order: the namespace (its pods and volumes) first.
    ns: TestNamespace,
    work: tempfile::TempDir,
    data: std::path::PathBuf,
    nodes: &'static RealNodes,
    cluster: support::cluster::Cluster,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Ground {
    async fn new(purpose: &str, files: u64) -> Option<Ground> {
        let serial = SERIAL.lock().await;
        let cluster = cluster_or_skip().await?;
        let nodes = RealNodes::get()?;
        cluster.apply_crds().await;
        let ns = cluster.namespace(purpose).await;
        let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let data = member(&ns, "rs0-1", "real-b").await;
        fill_member(&data, files);
        claim(&ns, "backups", Some(SHARED_CLASS)).await;
        claim(&ns, "restored", None).await;
        key_secret(&ns, work.path()).await;
        Some(Ground {
            ns,
            work,
            data,
            nodes,
            cluster,
            _serial: serial,
        })
    }

    /// BackupJob rs0: member rs0-1, the repository on `backups`, the local key.
    async fn backup_job(&self) {
        self.backup_job_to(json!({"pvc": {"claimName": "backups", "path": "repo"}}))
            .await;
    }

    /// BackupJob rs0: member rs0-1, the repository at `destination`, the local key.
    async fn backup_job_to(&self, destination: serde_json::Value) {
        self.backup_job_with(destination, json!({"localKeySecret": {"name": "rs0-key"}}))
            .await;
    }

    /// BackupJob rs0: member rs0-1, the repository at `destination`, the key `encryption`.
    async fn backup_job_with(&self, destination: serde_json::Value, encryption: serde_json::Value) {
        create::<BackupJob>(
            &self.ns.api(),
            json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": "rs0"},
                "spec": {
                    "source": {"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                               "syncSource": {"mode": "member", "member": "rs0-1"}},
                    "destination": destination,
                    "encryption": encryption,
                    "backoffLimit": 2}}),
        )
        .await;
    }

    /// The status of the job's first Snapshot once it has succeeded (fails the test if it
    /// failed).
    async fn succeeded_snapshot(&self) -> snapcrypt::api::SnapshotStatus {
        let name = self.snapshot_name().await;
        let snaps: Api<Snapshot> = self.ns.api();
        wait_for_success(&snaps, &name, &self.ns).await
    }

    /// The name of the job's first Snapshot, once it exists.
    async fn snapshot_name(&self) -> String {
        let snaps: Api<Snapshot> = self.ns.api();
        eventually("the job's Snapshot", LONG, || async {
            let list = snaps
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .first()
                .map(kube::ResourceExt::name_any)
                .ok_or_else(|| "no Snapshot yet".to_string())
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_restore_in_real_containers() {
    let Some(g) = Ground::new("real-pods", 12).await else {
        return;
    };
    let (ns, nodes, data) = (&g.ns, &g.nodes, &g.data);
    let pods: Api<Pod> = ns.api();
    let _operator = support::operator::Operator::start_with_image(
        g.cluster.kubeconfig(),
        ns.name(),
        IMAGE,
        // Every attempt stalls 4 s before its commit (the fault hook), so the kill below
        // always lands mid-run: a small backup could otherwise finish between the progress
        // seen and the kill (seen in CI: "no node runs container").
        &[
            "--agent-progress-interval",
            "0.2",
            "--agent-env",
            "SNAPCRYPT_FAULT_BACKUP_STALL_SECS=4",
        ],
    );
    g.backup_job().await;

    // The Snapshot the job made, seen mid-run with progress its agent reported from inside
    // the container, through the kubernetes Service.
    let snaps: Api<Snapshot> = ns.api();
    let name = g.snapshot_name().await;
    let seen = wait_for(&snaps, &name, "progress mid-run in status", LONG, |s| {
        running_with_progress(s) || snapshot_finished(s)
    })
    .await;
    assert!(
        running_with_progress(&seen),
        "the snapshot finished before any progress was seen: {:?}",
        seen.status
    );
    let st = seen.status.clone().expect("status");
    let pod_name = st.pod_name.clone().expect("pod name");

    // The snapshot pod landed on the member's node, and the kubelet enforces its security.
    let pod = pods.get(&pod_name).await.expect("snapshot pod");
    let spec = pod.spec.clone().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some("real-b"));
    let sc = spec.containers[0]
        .security_context
        .clone()
        .expect("security context");
    assert_eq!(sc.read_only_root_filesystem, Some(true));

    // Kill the agent's container past half its backup (or in the stall before its commit):
    // the kubelet sees it die, the Snapshot retries.
    wait_for(&snaps, &name, "half the backup done", LONG, half_done).await;
    nodes.kill_container(&container_id(&pods, &pod_name).await);
    let st = wait_for_success(&snaps, &name, ns).await;
    assert_eq!(st.attempts, 2, "{st:?}");
    let retrying = wait_for_event(ns, &name, "Retrying").await;
    assert!(retrying.starts_with("attempt 1 failed"), "{retrying}");
    attempt_2_continued(ns, &st).await;

    // A Restore in a restore pod brings back exactly what the member held.
    let rst = restore_in_a_pod(ns, &name).await;
    support::assert_same_tree(data, &volume_dir(ns, "restored").await.join("db"));
    // The restore pod ran where its target volume lives (the provisioner placed that disk on
    // the node the scheduler chose for the restore pod, its first user).
    let restore_pod = pods
        .get(rst.pod_name.as_deref().unwrap_or("back-restore"))
        .await
        .expect("restore pod");
    let target: Api<PersistentVolumeClaim> = ns.api();
    let pv_name = target
        .get("restored")
        .await
        .expect("claim")
        .spec
        .and_then(|s| s.volume_name)
        .expect("bound");
    let pv = Api::<PersistentVolume>::all(ns.client())
        .get(&pv_name)
        .await
        .expect("volume");
    let pv_node = pv
        .spec
        .and_then(|s| s.node_affinity)
        .and_then(|a| a.required)
        .and_then(|r| r.node_selector_terms.into_iter().next())
        .and_then(|t| t.match_expressions)
        .and_then(|e| e.into_iter().next())
        .and_then(|e| e.values)
        .and_then(|v| v.into_iter().next());
    assert_eq!(restore_pod.spec.and_then(|s| s.node_name), pv_node);

    // The kubelet enforces a read-only root filesystem on the agent's image.
    create::<Pod>(
        &pods,
        json!({"metadata": {"name": "read-only"}, "spec": {"restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 999},
            "containers": [{"name": "agent", "image": IMAGE, "args": ["key", "new", "--out", "/key.json"],
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}}}]}}),
    )
    .await;
    let p = wait_for(&pods, "read-only", "the pod to fail", LONG, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    })
    .await;
    let message = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .and_then(|t| t.message)
        .unwrap_or_default();
    assert!(message.contains("Read-only file system"), "{message}");
}

/// `helm install` of the chart runs the operator itself as a pod of the chart's Deployment,
/// as the chart's ServiceAccount, from the same image as its agents; it reaches the API server
/// through the kubernetes Service, and a BackupJob's Snapshot succeeds with progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_the_operator_as_a_pod() {
    let Some(g) = Ground::new("real-chart", 4).await else {
        return;
    };
    let chart = ChartOperator::install(&g.ns).await;
    let spec = chart.pod.spec.clone().expect("spec");
    assert!(spec.node_name.is_some());
    assert!(
        spec.service_account_name
            .as_deref()
            .is_some_and(|sa| sa.ends_with("snapcrypt-operator")),
        "{:?}",
        spec.service_account_name
    );

    // `helm test`: its pod (the image's `kubectl check`) finds the CRDs served and the
    // operator pod answering /healthz through the API server, and is removed as it passed.
    let test_pod = format!("{}-snapcrypt-test", chart.release);
    let (passed, out) = chart.helm_test();
    assert!(passed, "helm test failed:\n{out}");
    assert!(
        out.contains(&test_pod) && out.contains("Succeeded"),
        "helm test did not report its pod: {out}"
    );
    let pods: Api<Pod> = g.ns.api();
    assert!(
        pods.get_opt(&test_pod).await.unwrap().is_none(),
        "a passed test pod is removed"
    );

    g.backup_job().await;
    let st = g.succeeded_snapshot().await;
    assert_eq!(st.member.and_then(|m| m.node).as_deref(), Some("real-b"));
    assert!(st.stats.is_some_and(|s| s.files > 0));
    second_run_continues_from_the_first(&g).await;

    helm_test_fails_with_no_operator(&g, &chart, &test_pod).await;
}

/// A second run of the job, in a new pod (whose hostname is its own new name), continues from
/// the first: unchanged files keep their chunks and next to nothing is added. Before the
/// agent was given the job as its host, every run found no parent and stored every chunk
/// again (128 MiB here).
async fn second_run_continues_from_the_first(g: &Ground) {
    let snaps: Api<Snapshot> = g.ns.api();
    create(
        &snaps,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": "rs0-second"}, "spec": {"backupJobRef": {"name": "rs0"}}}),
    )
    .await;
    let st = wait_for_success(&snaps, "rs0-second", &g.ns).await;
    let stats = st.stats.expect("stats");
    assert!(stats.logical_bytes >= 4 << 25, "{stats:?}");
    assert!(
        stats.stored_bytes * 50 < stats.logical_bytes,
        "the second run stored {} of {} bytes: it did not continue from the first",
        stats.stored_bytes,
        stats.logical_bytes
    );
}

/// With the operator scaled to nothing, `helm test` fails and its pod stays, its log saying
/// what is wrong and what to check.
async fn helm_test_fails_with_no_operator(g: &Ground, chart: &ChartOperator, test_pod: &str) {
    let deployments: Api<Deployment> = g.ns.api();
    let name = format!("{}-snapcrypt-operator", chart.release);
    deployments
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = g.ns.api();
    let operators = ListParams::default().labels("app.kubernetes.io/component=operator");
    eventually("the operator pods to be gone", LONG, || async {
        let left = pods
            .list(&operators)
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} operator pods left"))
        }
    })
    .await;
    let (passed, out) = chart.helm_test();
    assert!(!passed, "helm test passed with no operator: {out}");
    let log = pods.logs(test_pod, &Default::default()).await.unwrap();
    assert!(
        log.contains("problem: no operator pod") && log.contains("helm list"),
        "the failed test pod's log: {log}"
    );
    assert!(
        log.contains("CRDs served (snapcrypt.dev/v1alpha1)"),
        "{log}"
    );
}

/// An S3 repository from a real container: the credentials Secret reaches the agent as
/// environment, the agent reaches the test's S3 server (s3s-fs, which checks signatures) over
/// the pod network, and the bucket restores with the key file alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_repository_from_a_real_container() {
    let Some(g) = Ground::new("real-s3", 2).await else {
        return;
    };
    let s3 = support::s3::S3Server::start(&g.work.path().join("s3"), "backups");
    let creds = json!({"AWS_ACCESS_KEY_ID": support::s3::ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": support::s3::SECRET_KEY});
    let destination = json!({"s3": {"bucket": "backups", "prefix": "rs0", "pathStyle": true,
        "endpoint": format!("http://{HOST_ALIAS}:{}", s3.port), "credentialsSecret": STORE_CREDS, "insecure": true}});
    let store = Store {
        port: s3.port,
        creds,
        destination,
        repo: "s3://backups/rs0",
        env: s3.env(),
    };
    store.backs_up_and_restores(&g).await;
}

/// The credentials Secret of an object-store test.
const STORE_CREDS: &str = "store-creds";

/// An object store a test server serves on 127.0.0.1:`port`: the credentials Secret's data,
/// the BackupJob's destination (naming [`STORE_CREDS`]), and how the CLI on the host reaches it.
struct Store {
    port: u16,
    creds: serde_json::Value,
    destination: serde_json::Value,
    repo: &'static str,
    env: Vec<(&'static str, String)>,
}

impl Store {
    /// The server exposed to the pods, the Secret, an operator with the agent image, the job,
    /// and its snapshot restored both ways ([`restores_from`]).
    async fn backs_up_and_restores(&self, g: &Ground) {
        g.nodes.expose(self.port);
        create::<Secret>(
            &g.ns.api(),
            json!({"metadata": {"name": STORE_CREDS}, "stringData": self.creds}),
        )
        .await;
        let _operator = support::operator::Operator::start_with_image(
            g.cluster.kubeconfig(),
            g.ns.name(),
            IMAGE,
            &[],
        );
        g.backup_job_to(self.destination.clone()).await;
        restores_from(g, self.repo, &self.env).await;
    }
}

/// Restore `snapshot` with a Restore (in a restore pod) into claim `restored` at `db`; its
/// status once it succeeded (fails the test if it failed).
async fn restore_in_a_pod(ns: &TestNamespace, snapshot: &str) -> snapcrypt::api::RestoreStatus {
    let restores: Api<Restore> = ns.api();
    create::<Restore>(
        &restores,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "back"},
            "spec": {"snapshotRef": {"name": snapshot}, "target": {"claimName": "restored", "path": "db"}}}),
    )
    .await;
    let r = wait_for(&restores, "back", "the Restore to finish", LONG, |r| {
        r.status.as_ref().is_some_and(|s| {
            matches!(
                s.phase,
                snapcrypt::api::snapshot::RunPhase::Succeeded
                    | snapcrypt::api::snapshot::RunPhase::Failed
            )
        })
    })
    .await;
    let rst = r.status.expect("status");
    assert_eq!(
        rst.phase,
        snapcrypt::api::snapshot::RunPhase::Succeeded,
        "{:?}",
        rst.message
    );
    rst
}

/// The job's snapshot succeeded and restores bit-exact from `repo`: through the CLI on the
/// host with the key file alone (no cluster), and with a Restore in a restore pod (which reads
/// the store with the job's credentials).
async fn restores_from(g: &Ground, repo: &str, env: &[(&'static str, String)]) {
    let name = g.snapshot_name().await;
    let st = g.succeeded_snapshot().await;
    let id = st.repository_snapshot_id.expect("repository snapshot id");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = g.work.path().join("restored");
    support::ok(
        &restore_args(
            repo,
            &g.work.path().join("key.json").display().to_string(),
            &id,
            &out.display().to_string(),
            &[],
        ),
        &env,
    );
    support::assert_same_tree(&g.data, &out);
    restore_in_a_pod(&g.ns, &name).await;
    support::assert_same_tree(&g.data, &volume_dir(&g.ns, "restored").await.join("db"));
}

/// An Azure Blob Storage repository from a real container: the account key from the
/// credentials Secret reaches the agent as environment, the agent reaches Azurite (which
/// checks Shared Key signatures) at the job's `endpoint` over the pod network, and the
/// container restores with the key file alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_repository_from_a_real_container() {
    let Some(g) = Ground::new("real-azure", 2).await else {
        return;
    };
    let az = support::azurite::Azurite::start(&g.work.path().join("azure"), "backups");
    let creds = json!({"AZURE_STORAGE_ACCOUNT_KEY": support::azurite::KEY});
    let destination = json!({"azure": {
        "account": support::azurite::ACCOUNT, "container": "backups", "prefix": "rs0",
        "endpoint": format!("http://{HOST_ALIAS}:{}/{}", az.port, support::azurite::ACCOUNT),
        "credentialsSecret": STORE_CREDS, "insecure": true}});
    let store = Store {
        port: az.port,
        creds,
        destination,
        repo: "az://backups/rs0",
        env: az.env(),
    };
    store.backs_up_and_restores(&g).await;
}

/// A Google Cloud Storage repository from a real container: the service-account file from the
/// credentials Secret is mounted into the agent (as the SDKs expect a file), the agent reaches
/// fake-gcs-server (through its XML bridge, tests/services/gcs) at the job's `endpoint` over
/// the pod network, and the bucket restores with the key file alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gcs_repository_from_a_real_container() {
    let Some(g) = Ground::new("real-gcs", 2).await else {
        return;
    };
    let gcs = support::gcs::FakeGcs::start(&g.work.path().join("gcs"), "backups");
    let key_file = std::fs::read_to_string(&gcs.service_account).expect("service-account file");
    let creds = json!({"service-account.json": key_file});
    let destination = json!({"gcs": {"bucket": "backups", "prefix": "rs0",
        "endpoint": format!("http://{HOST_ALIAS}:{}", gcs.bridge_port),
        "credentialsSecret": STORE_CREDS, "insecure": true}});
    let store = Store {
        port: gcs.bridge_port,
        creds,
        destination,
        repo: "gs://backups/rs0",
        env: gcs.env(),
    };
    store.backs_up_and_restores(&g).await;
}

/// A KMIP-wrapped snapshot from a real container: the KmipServer's client TLS Secret is
/// mounted into the snapshot pod, whose agent wraps its data key on PyKMIP over the pod
/// network; the repository restores with the KMIP flags alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kmip_wrapped_snapshot_from_a_real_container() {
    let Some(g) = Ground::new("real-kmip", 1).await else {
        return;
    };
    let kmip = pykmip::PyKmip::start();
    g.nodes.expose(kmip.port);
    let read = |f: &str| std::fs::read_to_string(kmip.file(f)).expect("pki file");
    create::<Secret>(
        &g.ns.api(),
        json!({"metadata": {"name": "kmip-client"}, "stringData": {
            "tls.crt": read("client.pem"), "tls.key": read("client.key"), "ca.crt": read("ca.pem")}}),
    )
    .await;
    let _operator = support::operator::Operator::start_with_image(
        g.cluster.kubeconfig(),
        g.ns.name(),
        IMAGE,
        &[],
    );
    let endpoint = format!("{HOST_ALIAS}:{}", kmip.port);
    create::<snapcrypt::api::KmipServer>(
        &g.ns.api(),
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "KmipServer", "metadata": {"name": "pykmip"},
               "spec": {"endpoints": [endpoint], "tls": {"secretName": "kmip-client", "serverName": "localhost"},
                        "masterKey": {"create": {"name": "real-pods-master"}}}}),
    )
    .await;
    g.backup_job_with(
        json!({"pvc": {"claimName": "backups", "path": "repo"}}),
        json!({"kmipServerRef": {"name": "pykmip"}}),
    )
    .await;
    let st = g.succeeded_snapshot().await;
    let key_id = st.key_id.expect("key id");
    let id = st.repository_snapshot_id.expect("repository snapshot id");
    let out = g.work.path().join("from-kmip");
    let (ca, cert, key) = (
        kmip.file("ca.pem"),
        kmip.file("client.pem"),
        kmip.file("client.key"),
    );
    support::ok(
        &[
            "restore",
            "--repo",
            &volume_dir(&g.ns, "backups")
                .await
                .join("repo")
                .display()
                .to_string(),
            "--kmip-endpoint",
            &kmip.endpoint(),
            "--kmip-ca",
            &ca.display().to_string(),
            "--kmip-cert",
            &cert.display().to_string(),
            "--kmip-key",
            &key.display().to_string(),
            "--kmip-key-id",
            &key_id,
            "--kmip-server-name",
            "localhost",
            "--snapshot",
            &id,
            "--target",
            &out.display().to_string(),
        ],
        &[],
    );
    support::assert_same_tree(&g.data, &out);
}

/// The image the e2e tests run on (tests/cluster/image.sh, as the Dockerfile builds it): at
/// most 60 MB, the binary stripped, a numeric non-root user, no shell, the CA bundle, and the
/// OCI labels (source, version, licence).
#[test]
fn the_image_is_small_non_root_and_labelled() {
    let Some(_nodes) = RealNodes::get() else {
        return;
    };
    let tar = Path::new(&support::real_nodes::cluster_dir()).join("nodes/snapcrypt-image.tar");
    let size = std::fs::metadata(&tar).expect("the image archive").len();
    assert!(size <= 60_000_000, "the image is {size} bytes, over 60 MB");
    let member = |name: &str| tar_member(&tar, name);
    let manifest: serde_json::Value = serde_json::from_slice(&member("manifest.json")).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&member(manifest[0]["Config"].as_str().unwrap())).unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"], json!(["/usr/local/bin/snapcrypt"]));
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{labels}"
    );

    let layer = tempfile::tempdir().unwrap();
    std::fs::write(
        layer.path().join("layer.tar"),
        member(manifest[0]["Layers"][0].as_str().unwrap()),
    )
    .unwrap();
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(layer.path().join("layer.tar"))
        .output()
        .expect("tar -t");
    let files = String::from_utf8_lossy(&listing.stdout).to_string();
    for want in [
        "usr/local/bin/snapcrypt",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(
            files.lines().any(|f| f == want),
            "{want} not in the image:\n{files}"
        );
    }
    for shell in [
        "bin/sh",
        "bin/bash",
        "usr/bin/sh",
        "usr/bin/bash",
        "bin/busybox",
    ] {
        assert!(
            !files.lines().any(|f| f == shell),
            "a shell in the image: {shell}"
        );
    }
    // Stripped: no debug sections in the binary the pods run.
    std::fs::write(
        layer.path().join("snapcrypt"),
        tar_member(&layer.path().join("layer.tar"), "usr/local/bin/snapcrypt"),
    )
    .unwrap();
    let sections = std::process::Command::new("readelf")
        .args(["-S", "-W"])
        .arg(layer.path().join("snapcrypt"))
        .output()
        .expect("readelf");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(sections.contains(".text"), "{sections}");
    for kept in [".debug_info", ".debug_line", ".symtab"] {
        assert!(!sections.contains(kept), "the image's binary keeps {kept}");
    }
}

/// File `name` of tar archive `archive`.
fn tar_member(archive: &Path, name: &str) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(name)
        .output()
        .expect("tar");
    assert!(out.status.success(), "{name} in {}", archive.display());
    out.stdout
}
