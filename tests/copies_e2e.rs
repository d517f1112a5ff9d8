//! A BackupJob's copy (issue 32) on the real-pods ground: the job backs up into its repository
//! on a claim, a copy pod copies the snapshot into a second store (S3, s3s-fs, with its own
//! credentials and its own master key), and then the primary repository is deleted. The
//! job's restore test, which names the copy, and a Restore from the copy alone still succeed;
//! the copy's metrics say what its status says, and the chart's copy alerts, evaluated on the
//! scrape, are silent while the copy is current and fire once it fails: a new repository made
//! where the primary was is not the one the copy came from, and the copy refuses to mix them.
//!
//! DOUBLES (tests/README.md): mongod cannot run here (the member is a pause pod whose volume
//! holds a test tree); Prometheus does not run here (support/alerts.rs evaluates the alert
//! expressions). Everything else is real: the API server, kubelets, containerd, the
//! provisioner's volumes, the operator, the agent image, the S3 server.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;

use snapcrypt::api::copy::CopyStatus;
use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::verification::CheckResult;
use snapcrypt::api::{BackupJob, Restore, Snapshot};
use support::alerts::{chart_expr, eval};
use support::cluster::{TestNamespace, cluster_or_skip, wait_for};
use support::operator::{
    Operator, claim, create, key_secret, member, member_source, parse_metrics, wait_for_success,
};
use support::real_nodes::{HOST_ALIAS, IMAGE, RealNodes, SHARED_CLASS, volume_dir};

/// A copy run, a restore test on a one-minute schedule, a restore: each within this.
const STEP: Duration = Duration::from_secs(300);

/// The copy's credentials: the S3 server of the copy takes these only.
const COPY_ACCESS: &str = "offsite-writer";
const COPY_SECRET: &str = "offsite-writer-secret";

fn seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

/// The job's copy `copy` in status, once `ready` holds for it.
async fn copy_status(
    ns: &TestNamespace,
    copy: &str,
    what: &str,
    ready: impl Fn(&CopyStatus) -> bool,
) -> (BackupJob, CopyStatus) {
    let jobs: Api<BackupJob> = ns.api();
    let of = |j: &BackupJob| {
        j.status
            .as_ref()
            .and_then(|s| s.copies.iter().find(|c| c.name == copy))
            .cloned()
    };
    let j = wait_for(&jobs, "rs0", what, STEP, |j| {
        of(j).is_some_and(|c| ready(&c))
    })
    .await;
    let c = of(&j).expect("copy status");
    (j, c)
}

/// The job's condition `type_`: (status, reason, message).
fn condition(j: &BackupJob, type_: &str) -> (String, String, String) {
    let c = j
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// The copy's samples in a scrape: lag, last run success, last success time, bytes.
fn copy_samples(m: &support::operator::Samples, ns: &str) -> [Option<f64>; 4] {
    let labels = std::collections::BTreeMap::from([
        ("namespace".to_string(), ns.to_string()),
        ("job".to_string(), "rs0".to_string()),
        ("copy".to_string(), "offsite".to_string()),
    ]);
    let get = |name: &str| m.get(&(name.to_string(), labels.clone())).copied();
    [
        get("snapcrypt_backupjob_copy_lag_snapshots"),
        get("snapcrypt_backupjob_copy_last_run_success"),
        get("snapcrypt_backupjob_copy_last_success_timestamp_seconds"),
        get("snapcrypt_backupjob_copy_last_run_bytes"),
    ]
}

/// A scrape of the operator's /metrics once `ready` holds for it (within a deadline).
async fn scrape_until(
    op: &Operator,
    what: &str,
    ready: impl Fn(&support::operator::Samples) -> bool,
) -> support::operator::Samples {
    support::cluster::eventually(what, Duration::from_secs(60), || async {
        let m = parse_metrics(&op.metrics());
        if ready(&m) { Ok(m) } else { Err("not yet") }
    })
    .await
}

/// The ground: member rs0-1 (real-b) with a test tree, the repository's claim `backups`, the
/// restore target `restored`, the job's key Secret; the copy's S3 server (its own key pair, in
/// Secret `offsite-creds`) and key (Secret `offsite-key`); the operator.
struct CopyGround {
    ns: TestNamespace,
    data: std::path::PathBuf,
    s3: support::s3::S3Server,
    copy_key: std::path::PathBuf,
    op: Operator,
    copy_destination: serde_json::Value,
    copy_encryption: serde_json::Value,
    /// The second copy's store: moto, a bucket with Object Lock (`vault`).
    moto: support::moto::Moto,
    _work: tempfile::TempDir,
}

impl CopyGround {
    async fn new() -> Option<CopyGround> {
        let cluster = cluster_or_skip().await?;
        let nodes = RealNodes::get()?;
        cluster.apply_crds().await;
        let ns = cluster.namespace("copies").await;
        let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let data = member(&ns, "rs0-1", "real-b").await;
        support::make_source(&data);
        std::fs::write(
            data.join("collection-7-big.wt"),
            support::pseudo_random(7, 8 << 20),
        )
        .expect("write");
        support::chown_mongodb(&data);
        claim(&ns, "backups", Some(SHARED_CLASS)).await;
        claim(&ns, "restored", None).await;
        key_secret(&ns, work.path()).await;

        // The copy's store, credentials and key: none of them the job's.
        let s3 = support::s3::S3Server::start_with_keys(
            &work.path().join("s3"),
            "offsite",
            COPY_ACCESS,
            COPY_SECRET,
        );
        nodes.expose(s3.port);
        create::<Secret>(
            &ns.api(),
            json!({"metadata": {"name": "offsite-creds"}, "stringData": {
                "AWS_ACCESS_KEY_ID": COPY_ACCESS, "AWS_SECRET_ACCESS_KEY": COPY_SECRET}}),
        )
        .await;
        let copy_key = work.path().join("offsite-key.json");
        support::ok(
            &["key", "new", "--out", &copy_key.display().to_string()],
            &[],
        );
        create::<Secret>(
            &ns.api(),
            json!({"metadata": {"name": "offsite-key"}, "stringData": {
                "key": std::fs::read_to_string(&copy_key).expect("key")}}),
        )
        .await;
        let copy_destination = json!({"s3": {"bucket": "offsite", "prefix": "rs0", "region": "us-east-1",
            "endpoint": format!("http://{HOST_ALIAS}:{}", s3.port), "pathStyle": true, "insecure": true,
            "credentialsSecret": "offsite-creds"}});
        let copy_encryption = json!({"localKeySecret": {"name": "offsite-key"}});
        // The second copy's: a bucket with Object Lock on moto (which checks no credentials).
        let moto = support::moto::Moto::start();
        nodes.expose(moto.port);
        moto.admin(&["mkbucket", "vault", "--lock"]);
        create::<Secret>(
            &ns.api(),
            json!({"metadata": {"name": "vault-creds"}, "stringData": {
                "AWS_ACCESS_KEY_ID": "vault-writer", "AWS_SECRET_ACCESS_KEY": "vault-writer-secret"}}),
        )
        .await;

        let op = Operator::start_with_image(cluster.kubeconfig(), ns.name(), IMAGE, &[]);
        Some(CopyGround {
            ns,
            data,
            s3,
            copy_key,
            op,
            copy_destination,
            copy_encryption,
            moto,
            _work: work,
        })
    }

    /// BackupJob rs0 with the copies `offsite` (keepLast 3) and `vault` (object lock,
    /// governance, 1 day), restore tests of `offsite` every minute, and its on-demand Snapshot
    /// `name`; the Snapshot's status once it succeeded.
    async fn job_and_snapshot(&self, name: &str) -> snapcrypt::api::SnapshotStatus {
        let ns = &self.ns;
        let (copy_destination, copy_encryption) = (&self.copy_destination, &self.copy_encryption);
        let vault = json!({"s3": {"bucket": "vault", "prefix": "rs0", "region": "us-east-1",
            "endpoint": format!("http://{HOST_ALIAS}:{}", self.moto.port), "pathStyle": true, "insecure": true,
            "credentialsSecret": "vault-creds", "objectLock": {"mode": "Governance", "days": 1}}});
        create::<BackupJob>(
            &ns.api(),
            json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": "rs0"},
                "spec": {
                    "source": member_source("rs0-1"),
                    "destination": {"pvc": {"claimName": "backups", "path": "repo"}},
                    "encryption": {"localKeySecret": {"name": "rs0-key"}},
                    "schedule": {"cron": "0 0 1 1 *"},
                    "copies": [{"name": "offsite", "destination": copy_destination, "encryption": copy_encryption,
                                "retention": {"keepLast": 3}},
                               {"name": "vault", "destination": vault, "encryption": copy_encryption}],
                    "verification": {"copy": "offsite",
                        "restoreTest": {"schedule": {"cron": "* * * * *"}, "size": "1Gi", "storageClassName": SHARED_CLASS}}}}),
        )
        .await;
        self.snapshot(name).await
    }

    /// On-demand Snapshot `name` of rs0; its status once it succeeded.
    async fn snapshot(&self, name: &str) -> snapcrypt::api::SnapshotStatus {
        let snaps: Api<Snapshot> = self.ns.api();
        create::<Snapshot>(
            &snaps,
            json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
                   "metadata": {"name": name}, "spec": {"backupJobRef": {"name": "rs0"}}}),
        )
        .await;
        wait_for_success(&snaps, name, &self.ns).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_restores_when_the_primary_repository_is_gone() {
    let Some(g) = CopyGround::new().await else {
        return;
    };
    let first = g.job_and_snapshot("rs0-first").await;
    let id = first.repository_snapshot_id.clone().expect("id");
    the_copy_holds_the_snapshot(&g, &id).await;
    the_copy_restores_without_the_primary(&g, &id).await;
    a_new_primary_is_refused_and_the_alert_fires(&g).await;
}

/// The copy pod copies the Snapshot: status, condition and /metrics say so, no copy alert
/// fires, and the host's CLI finds it in the copy with the copy's key and credentials.
async fn the_copy_holds_the_snapshot(g: &CopyGround, id: &str) {
    let (ns, op, s3, copy_key) = (&g.ns, &g.op, &g.s3, &g.copy_key);
    copy_status(ns, "vault", "the locked copy to hold rs0-first", |c| {
        c.last_copied_snapshot.as_deref() == Some("rs0-first")
    })
    .await;
    let (job, copied) = copy_status(ns, "offsite", "the copy to hold rs0-first", |c| {
        c.last_copied_snapshot.as_deref() == Some("rs0-first")
    })
    .await;
    // The locked copy's write-once objects are under Object Lock (governance, one day).
    let locked = g.moto.retention("vault", "rs0/");
    assert!(
        locked.iter().any(|(k, _, _)| k.starts_with("rs0/data/")),
        "{locked:?}"
    );
    for (k, mode, until) in locked
        .iter()
        .filter(|(k, _, _)| !k.starts_with("rs0/locks/"))
    {
        let left = until
            .parse::<jiff::Timestamp>()
            .map(|u| u.duration_since(jiff::Timestamp::now()).as_hours());
        assert!(
            mode == "GOVERNANCE" && matches!(left, Ok(0..=24)),
            "{k}: {mode} {until}"
        );
    }
    assert_eq!(
        (
            copied.result,
            copied.lag,
            copied.consecutive_failures,
            copied.runs
        ),
        (CheckResult::Succeeded, 0, 0, 1),
        "{copied:?}"
    );
    assert!(
        copied.bytes_copied > 0 && copied.packs_copied > 0,
        "{copied:?}"
    );
    assert!(
        copied
            .key_id
            .as_deref()
            .is_some_and(|k| k.starts_with("local-")),
        "{copied:?}"
    );
    let (status, reason, message) = condition(&job, "CopiesHealthy");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "CopiesCurrent"),
        "{message}"
    );
    // /metrics reads the operator's cache of the job, which follows the API server: the
    // scrape that caught up says exactly what status says.
    let want = [
        Some(copied.lag as f64),
        Some(1.0),
        copied.last_copy_time.as_ref().map(seconds),
        Some(copied.bytes_copied as f64),
    ];
    let m = scrape_until(op, "the copy's samples to say what status says", |m| {
        copy_samples(m, ns.name()) == want
    })
    .await;
    for alert in ["SnapcryptCopyLagging", "SnapcryptCopyFailed"] {
        let firing = eval(&chart_expr(alert), &m);
        assert!(
            firing.is_empty(),
            "{alert} fires on a current copy: {firing:?}"
        );
    }
    // The copy holds the snapshot under its own key: the host's CLI reads it with that key.
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let s3_env = [
        ("AWS_ACCESS_KEY_ID", COPY_ACCESS),
        ("AWS_SECRET_ACCESS_KEY", COPY_SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let listed = support::ok(
        &[
            "snapshots",
            "--repo",
            "s3://offsite/rs0",
            "--key-file",
            &copy_key.display().to_string(),
            "--s3-path-style",
        ],
        &s3_env,
    );
    assert!(listed.contains(id), "{listed}");
}

/// The primary repository is deleted: a restore test created after that restores from the
/// copy and passes, and a Restore with spec.source naming the copy restores bit-exact.
async fn the_copy_restores_without_the_primary(g: &CopyGround, id: &str) {
    let (ns, data) = (&g.ns, &g.data);
    let (copy_destination, copy_encryption) = (&g.copy_destination, &g.copy_encryption);
    let repo = volume_dir(ns, "backups").await.join("repo");
    std::fs::remove_dir_all(&repo).expect("delete the primary repository");
    let lost = jiff::Timestamp::now();

    // A restore test that started after the loss restores from the copy and passes.
    let jobs: Api<BackupJob> = ns.api();
    let tested = wait_for(
        &jobs,
        "rs0",
        "a restore test from the copy after the loss",
        STEP,
        |j| {
            j.status
                .as_ref()
                .and_then(|s| s.last_restore_test.as_ref())
                .is_some_and(|t| {
                    t.time.as_ref().is_some_and(|t| t.0 > lost) && t.result != CheckResult::Running
                })
        },
    )
    .await;
    let test = tested
        .status
        .and_then(|s| s.last_restore_test)
        .expect("restore test");
    assert_eq!(test.result, CheckResult::Succeeded, "{test:?}");
    assert_eq!(test.snapshot, "rs0-first");
    let restores: Api<Restore> = ns.api();
    let test_restore = restores
        .get(&test.restore)
        .await
        .expect("the test's Restore");
    let source = test_restore
        .spec
        .source
        .expect("a restore test of the copy reads spec.source");
    assert_eq!(source.snapshot, id);

    // A Restore from the copy alone (no Snapshot object, no primary): bit-exact.
    create::<Restore>(
        &restores,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "from-copy"},
            "spec": {"source": {"backupJob": "rs0", "destination": copy_destination, "encryption": copy_encryption},
                     "target": {"claimName": "restored", "path": "db"}}}),
    )
    .await;
    let r = wait_for(
        &restores,
        "from-copy",
        "the Restore from the copy",
        STEP,
        support::operator::restore_finished,
    )
    .await;
    let rst = r.status.expect("status");
    assert_eq!(rst.phase, RunPhase::Succeeded, "{:?}", rst.message);
    assert_eq!(rst.snapshot_id.as_deref(), Some(id));
    support::assert_same_tree(data, &volume_dir(ns, "restored").await.join("db"));
}

/// The next backup makes a new repository where the primary was: not the one the copy came
/// from. The copy refuses to mix them, says why, and its alert fires on the scrape.
async fn a_new_primary_is_refused_and_the_alert_fires(g: &CopyGround) {
    let (ns, op) = (&g.ns, &g.op);
    g.snapshot("rs0-second").await;
    let (job, failed) = copy_status(
        ns,
        "offsite",
        "the copy to refuse the new repository",
        |c| c.result == CheckResult::Failed && c.last_run_snapshot.as_deref() == Some("rs0-second"),
    )
    .await;
    let said = failed.message.clone().unwrap_or_default();
    assert!(
        said.contains("was not made by copying from this one"),
        "{said}"
    );
    assert_eq!(
        (failed.lag, failed.last_copied_snapshot.as_deref()),
        (1, Some("rs0-first"))
    );
    let (status, reason, message) = condition(&job, "CopiesHealthy");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CopyFailed"),
        "{message}"
    );
    assert!(message.contains("copy offsite failed"), "{message}");
    let m = scrape_until(op, "the copy's failure in /metrics", |m| {
        copy_samples(m, ns.name())[..2] == [Some(failed.lag as f64), Some(0.0)]
    })
    .await;
    let firing = eval(&chart_expr("SnapcryptCopyFailed"), &m);
    let ours: Vec<_> = firing
        .iter()
        .filter(|(l, _)| l.get("namespace").map(String::as_str) == Some(ns.name()))
        .collect();
    assert!(
        ours.iter()
            .any(|(l, _)| l.get("copy").map(String::as_str) == Some("offsite")),
        "SnapcryptCopyFailed on the scrape: {firing:?}"
    );
    assert!(
        eval(&chart_expr("SnapcryptCopyLagging"), &m)
            .iter()
            .all(|(l, _)| l.get("namespace").map(String::as_str) != Some(ns.name())),
        "one snapshot behind is within copyLagRuns"
    );
}
