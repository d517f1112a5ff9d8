//! Scheduled proof that backups restore (issue 13), with real pods on the test ground: restore
//! tests into scratch claims the operator creates and deletes, judged by a check container; a
//! data read that finds a damaged pack; and /metrics scraped against the objects' status.
//!
//! DOUBLES (tests/README.md): mongod cannot run here. The member is a pause pod whose volume
//! holds a real WiredTiger database (Debian's, the engine inside mongod, written by wt-writer),
//! and the check container is `wt-check` (tests/doubles/wiredtiger/check.c), which opens the
//! restored files with WiredTiger and verifies every table, as a MongoDB image would start
//! mongod and run `validate`. Everything else is real: the API server, kubelets, containerd,
//! the provisioner's volumes, the operator, the agent image.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;
use serde_json::json;

use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::verification::CheckResult;
use snapcrypt::api::{BackupJob, Restore, Snapshot};
use support::cluster::{TestNamespace, cluster_or_skip, wait_for, wait_for_deletion};
use support::operator::{
    Operator, claim, create, job_sample, key_secret, member, parse_metrics, wait_for_event,
    wait_for_success,
};
use support::real_nodes::{IMAGE, RealNodes, SHARED_CLASS, volume_dir};

/// Restore tests and data reads run every minute: a step waits for the next tick and its run.
const TICKS: Duration = Duration::from_secs(300);

/// Build the check image and load it into the nodes; its name.
fn check_image() -> String {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles/wiredtiger/check-image.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("run check-image.sh");
    assert!(
        out.status.success(),
        "check-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("image name")
        .trim()
        .to_string()
}

/// BackupJob `name`: member rs0-1, its repository at `path` on `backups`, a yearly schedule
/// (its runs here are on demand), and `verification`.
async fn job(ns: &TestNamespace, name: &str, path: &str, verification: serde_json::Value) {
    create::<BackupJob>(
        &ns.api(),
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": name},
            "spec": {
                "source": {"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                           "syncSource": {"mode": "member", "member": "rs0-1"}},
                "destination": {"pvc": {"claimName": "backups", "path": path}},
                "encryption": {"localKeySecret": {"name": "rs0-key"}},
                "schedule": {"cron": "0 0 1 1 *"},
                "verification": verification}}),
    )
    .await;
    create::<Snapshot>(
        &ns.api(),
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
               "metadata": {"name": format!("{name}-first")}, "spec": {"backupJobRef": {"name": name}}}),
    )
    .await;
}

fn every_minute() -> serde_json::Value {
    json!({"cron": "* * * * *"})
}

/// The job's status once `ready` holds for it.
async fn job_status(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    ready: impl Fn(&snapcrypt::api::BackupJobStatus) -> bool,
) -> snapcrypt::api::BackupJobStatus {
    let jobs: Api<BackupJob> = ns.api();
    let j = wait_for(&jobs, name, what, TICKS, |j| {
        j.status.as_ref().is_some_and(&ready)
    })
    .await;
    j.status.expect("status")
}

fn seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

/// Flip bytes in the middle of one pack of the repository at `repo`; its path there.
fn damage_a_pack(repo: &Path) -> String {
    let data = repo.join("data");
    let mut packs: Vec<PathBuf> = support::files_under(&data);
    packs.sort();
    let pack = packs.first().expect("a pack").clone();
    let mut bytes = std::fs::read(&pack).expect("read pack");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&pack, bytes).expect("write pack");
    pack.strip_prefix(repo)
        .expect("inside")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_tests_and_data_reads_prove_the_backups_on_a_schedule() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    if RealNodes::get().is_none() {
        return;
    }
    let started = std::time::Instant::now();
    let check = check_image();
    cluster.apply_crds().await;
    let ns = cluster.namespace("verify").await;
    let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    // The member's dbPath: a WiredTiger database, its writer stopped cleanly.
    let data = member(&ns, "rs0-1", "real-b").await;
    drop(support::wiredtiger::Writer::start(&data));
    support::chown_mongodb(&data);
    claim(&ns, "backups", Some(SHARED_CLASS)).await;
    key_secret(&ns, work.path()).await;
    let op = Operator::start_with_image(
        cluster.kubeconfig(),
        ns.name(),
        IMAGE,
        &["--agent-progress-interval", "0.5"],
    );

    // rs0: data reads of half the packs each, restore tests checked by wt-check. bad: restore
    // tests whose check looks where no database is, so it exits 1 with its reason.
    job(
        &ns,
        "rs0",
        "repo",
        json!({"readData": {"schedule": every_minute(), "percent": 50},
               "restoreTest": {"schedule": every_minute(), "check": {"image": check, "writable": true}}}),
    )
    .await;
    job(
        &ns,
        "bad",
        "repo-bad",
        json!({"restoreTest": {"schedule": every_minute(),
               "check": {"image": check, "writable": true, "args": ["/restored/no-such-db"]}}}),
    )
    .await;
    let snaps: Api<Snapshot> = ns.api();
    let first = wait_for_success(&snaps, "rs0-first", &ns).await;
    eprintln!("[{:?}] snapshot rs0", started.elapsed());
    wait_for_success(&snaps, "bad-first", &ns).await;

    bad_restore_targets_are_refused(&ns).await;
    a_restore_test_passes_and_its_scratch_claim_goes(&ns, started).await;
    a_check_that_exits_1_fails_the_restore_test(&ns, started).await;
    metrics_say_what_status_says(&ns, &op, &first).await;
    a_damaged_pack_is_found_by_a_data_read(&ns, &op, started).await;
    drop(op);
}

/// A scratch target that names a claim the Restore did not create (someone else's) fails
/// before anything is written, and the claim is left alone; a target that is the
/// repository's own claim is refused before any pod, naming the field.
async fn bad_restore_targets_are_refused(ns: &TestNamespace) {
    claim(ns, "someone-elses", Some(SHARED_CLASS)).await;
    let restores: Api<Restore> = ns.api();
    create::<Restore>(
        &restores,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "taken"},
            "spec": {"snapshotRef": {"name": "rs0-first"},
                     "target": {"claimName": "someone-elses", "path": "db", "scratch": {"size": "1Gi"}}}}),
    )
    .await;
    let taken = failed_restore(&restores, "taken").await;
    let reason = taken
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone());
    assert_eq!(
        reason.as_deref(),
        Some("ScratchClaimExists"),
        "{:?}",
        taken.message
    );
    assert!(
        taken.pod_name.is_none() && !taken.scratch_claim_deleted,
        "{taken:?}"
    );
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let theirs = claims.get("someone-elses").await.expect("the other claim");
    assert!(theirs.metadata.deletion_timestamp.is_none());
    // A target that is the repository's own claim: refused before any pod, naming the field.
    create::<Restore>(
        &restores,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "into-repo"},
            "spec": {"snapshotRef": {"name": "rs0-first"},
                     "target": {"claimName": "backups", "path": "db", "force": true}}}),
    )
    .await;
    let into_repo = failed_restore(&restores, "into-repo").await;
    assert!(
        into_repo.pod_name.is_none()
            && into_repo.message.as_deref().is_some_and(|m| m.starts_with(
                "spec.target.claimName: backups holds the repository of BackupJob rs0"
            )),
        "{into_repo:?}"
    );
    let backups = claims.get("backups").await.expect("the repository's claim");
    assert!(backups.metadata.deletion_timestamp.is_none());
}

/// Waits for the Restore `name` to fail; its status.
async fn failed_restore(restores: &Api<Restore>, name: &str) -> snapcrypt::api::RestoreStatus {
    wait_for(restores, name, "the Restore to fail", TICKS, |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.phase == RunPhase::Failed)
    })
    .await
    .status
    .expect("status")
}

/// A restore test restores into a scratch claim, reads every file back, and the check
/// container opens the restored database; the scratch claim is gone afterwards.
async fn a_restore_test_passes_and_its_scratch_claim_goes(
    ns: &TestNamespace,
    started: std::time::Instant,
) {
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let rs0 = job_status(ns, "rs0", "a passed restore test", |s| {
        s.last_restore_test.is_some() && s.last_verification.is_some()
    })
    .await;
    let test = rs0.last_restore_test.clone().expect("restore test");
    eprintln!("[{:?}] restore test rs0", started.elapsed());
    assert_eq!(test.result, CheckResult::Succeeded, "{test:?}");
    assert_eq!(test.snapshot, "rs0-first");
    let restores: Api<Restore> = ns.api();
    let r = restores
        .get(&test.restore)
        .await
        .expect("the test's Restore");
    let rst = r.status.expect("status");
    let checked = rst.check.expect("check status");
    let said = checked.message.unwrap_or_default();
    assert!(
        said.starts_with("OK: ") && said.contains("tables verified in /restored"),
        "{said}"
    );
    let message = rst.message.unwrap_or_default();
    assert!(
        message.contains("every file read back and matched"),
        "{message}"
    );
    assert_eq!(r.spec.one_target().claim_name, test.restore);
    // The check pod's egress was denied by a NetworkPolicy made with it, owned by the Restore.
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = ns.api();
    let policy = policies
        .get(&format!("{}-check", test.restore))
        .await
        .expect("the check's NetworkPolicy");
    assert_eq!(
        policy.metadata.owner_references.expect("owner")[0].name,
        test.restore
    );
    let spec = policy.spec.expect("spec");
    assert_eq!(spec.policy_types, Some(vec!["Egress".to_string()]));
    // Egress listed as a policy type with no rule: all of it denied (the API server drops
    // the empty list).
    assert!(
        spec.egress.unwrap_or_default().is_empty(),
        "all egress denied"
    );
    wait_for_deletion(&claims, &test.restore, TICKS).await;
    eprintln!("[{:?}] scratch claim gone", started.elapsed());
    let verified = rs0.last_verification.clone().expect("verification");
    assert_eq!(verified.result, CheckResult::Succeeded, "{verified:?}");
    assert!(verified.subset.ends_with("/2"), "{verified:?}");
}

/// A check that exits 1 fails the restore test with its own words.
async fn a_check_that_exits_1_fails_the_restore_test(
    ns: &TestNamespace,
    started: std::time::Instant,
) {
    let (restores, claims): (Api<Restore>, Api<PersistentVolumeClaim>) = (ns.api(), ns.api());
    let bad = job_status(ns, "bad", "a failed restore test", |s| {
        s.last_restore_test.is_some()
    })
    .await;
    let failed = bad.last_restore_test.clone().expect("restore test");
    eprintln!("[{:?}] restore test bad", started.elapsed());
    assert_eq!(failed.result, CheckResult::Failed, "{failed:?}");
    let why = failed.message.clone().unwrap_or_default();
    assert!(why.contains("FAILED: /restored/no-such-db"), "{why}");
    let r = restores
        .get(&failed.restore)
        .await
        .expect("the failed test's Restore");
    let ready = r
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready");
    assert_eq!(ready.map(|c| c.reason).as_deref(), Some("CheckFailed"));
    wait_for_deletion(&claims, &failed.restore, TICKS).await;
    let event = wait_for_event(ns, "bad", "RestoreTestFailed").await;
    assert!(
        event.contains("Restore bad-rt-") && event.contains("FAILED: /restored/no-such-db"),
        "{event}"
    );
    eprintln!("[{:?}] failure announced", started.elapsed());
}

/// /metrics reports what the objects' status says.
async fn metrics_say_what_status_says(
    ns: &TestNamespace,
    op: &Operator,
    first: &snapcrypt::api::SnapshotStatus,
) {
    let m = parse_metrics(&op.metrics());
    let n = ns.name();
    let jobs: Api<BackupJob> = ns.api();
    let rs0_job = jobs.get("rs0").await.expect("rs0");
    let st = rs0_job.status.clone().expect("status");
    let created = rs0_job
        .metadata
        .creation_timestamp
        .as_ref()
        .expect("created");
    assert_eq!(
        job_sample(
            &m,
            "snapcrypt_backupjob_created_timestamp_seconds",
            n,
            "rs0"
        ),
        seconds(created)
    );
    let last_ok = st.last_successful_time.as_ref().expect("last success");
    assert_eq!(
        job_sample(
            &m,
            "snapcrypt_backupjob_last_success_timestamp_seconds",
            n,
            "rs0"
        ),
        seconds(last_ok)
    );
    assert!(
        job_sample(&m, "snapcrypt_backupjob_schedule_period_seconds", n, "rs0") >= 365.0 * 86400.0
    );
    let stats = first.stats.clone().expect("stats");
    assert_eq!(
        job_sample(&m, "snapcrypt_backupjob_last_snapshot_files", n, "rs0"),
        stats.files as f64
    );
    assert_eq!(
        job_sample(&m, "snapcrypt_backupjob_last_snapshot_read_bytes", n, "rs0"),
        stats.logical_bytes as f64
    );
    assert_eq!(
        job_sample(
            &m,
            "snapcrypt_backupjob_last_snapshot_added_bytes",
            n,
            "rs0"
        ),
        stats.stored_bytes as f64
    );
    assert!(
        job_sample(
            &m,
            "snapcrypt_backupjob_last_snapshot_duration_seconds",
            n,
            "rs0"
        ) >= 0.0
    );
    assert_eq!(
        job_sample(&m, "snapcrypt_backupjob_repository_stored_bytes", n, "rs0"),
        st.stored_bytes as f64
    );
    assert_eq!(
        job_sample(&m, "snapcrypt_backupjob_repository_snapshots", n, "rs0"),
        st.snapshot_count as f64
    );
    restore_test_and_data_read_metrics(&m, n, &st);
}

/// The restore tests' and data reads' samples of /metrics, as the job's status `st` says.
fn restore_test_and_data_read_metrics(
    m: &support::operator::Samples,
    n: &str,
    st: &snapcrypt::api::BackupJobStatus,
) {
    let tested = st.last_restore_test.as_ref().expect("tested");
    assert_eq!(
        job_sample(
            m,
            "snapcrypt_backupjob_last_restore_test_timestamp_seconds",
            n,
            "rs0"
        ),
        seconds(tested.time.as_ref().expect("time"))
    );
    assert_eq!(
        job_sample(m, "snapcrypt_backupjob_last_restore_test_success", n, "rs0"),
        1.0
    );
    assert_eq!(
        job_sample(m, "snapcrypt_backupjob_last_restore_test_success", n, "bad"),
        0.0
    );
    let took = job_sample(
        m,
        "snapcrypt_backupjob_last_restore_test_duration_seconds",
        n,
        "rs0",
    );
    assert!(
        (took - tested.duration_seconds.expect("duration")).abs() < 1e-6,
        "{took}"
    );
    let v = st.last_verification.as_ref().expect("verified");
    assert_eq!(
        job_sample(
            m,
            "snapcrypt_backupjob_last_verification_timestamp_seconds",
            n,
            "rs0"
        ),
        seconds(v.time.as_ref().expect("time"))
    );
    let ok = if v.result == CheckResult::Succeeded {
        1.0
    } else {
        0.0
    };
    assert_eq!(
        job_sample(m, "snapcrypt_backupjob_last_verification_success", n, "rs0"),
        ok
    );
}

/// A damaged pack is found by a data read (within the two runs that read every group) and
/// named in the DataVerified condition and an Event.
async fn a_damaged_pack_is_found_by_a_data_read(
    ns: &TestNamespace,
    op: &Operator,
    started: std::time::Instant,
) {
    let n = ns.name();
    let repo = volume_dir(ns, "backups").await.join("repo");
    let pack = damage_a_pack(&repo);
    eprintln!("[{:?}] damaged", started.elapsed());
    let st = job_status(ns, "rs0", "a data read that finds the damage", |s| {
        s.last_verification
            .as_ref()
            .is_some_and(|v| v.problem_count > 0)
    })
    .await;
    let cond = st
        .conditions
        .iter()
        .find(|c| c.type_ == "DataVerified")
        .expect("DataVerified");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "DataDamaged")
    );
    assert!(
        cond.message.contains(&pack),
        "{} does not name {pack}",
        cond.message
    );
    assert!(
        wait_for_event(ns, "rs0", "DataDamaged")
            .await
            .contains(&pack)
    );
    let m = parse_metrics(&op.metrics());
    assert!(
        job_sample(
            &m,
            "snapcrypt_backupjob_last_verification_problems",
            n,
            "rs0"
        ) >= 1.0
    );
    assert_eq!(
        job_sample(
            &m,
            "snapcrypt_backupjob_last_verification_success",
            n,
            "rs0"
        ),
        0.0
    );
}
