//! The kubectl plugin (issue 34) on the real-pods ground: the binary called as
//! `kubectl-snapcrypt` (a link, as kubectl finds plugins on the PATH), with the user's
//! kubeconfig. `backup --wait` on a BackupJob creates an on-demand Snapshot, prints its
//! progress and returns 0 once it succeeded; against a job whose Snapshot fails it returns
//! non-zero and prints the reason; `snapshots` and `status` say what status says, as tables
//! and as JSON.
//!
//! DOUBLES (tests/README.md): mongod cannot run here (the member is a pause pod whose volume
//! holds a test tree). Everything else is real: the API server, kubelets, containerd, the
//! provisioner's volumes, the operator, the agent image.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kube::api::Api;
use serde_json::{Value, json};

use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::{BackupJob, Snapshot};
use support::cluster::{TestNamespace, cluster_or_skip};
use support::operator::{Operator, claim, create, key_secret, member, member_source};
use support::real_nodes::{IMAGE, RealNodes, SHARED_CLASS};

/// `kubectl-snapcrypt ARGS -n NS` with the test cluster's kubeconfig.
fn plugin(link: &Path, kubeconfig: &Path, ns: &str, args: &[&str]) -> Output {
    Command::new(link)
        .args(args)
        .args(["-n", ns])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run kubectl-snapcrypt")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// BackupJob `name` on member rs0-1 into directory `path` of claim `backups`, with `extra`
/// spec fields; a schedule that does not come due during the test.
async fn job(ns: &TestNamespace, name: &str, path: &str, extra: Value) {
    let mut spec = json!({
        "source": member_source("rs0-1"),
        "destination": {"pvc": {"claimName": "backups", "path": path}},
        "encryption": {"localKeySecret": {"name": "rs0-key"}},
        "schedule": {"cron": "0 0 1 1 *"},
    });
    for (k, v) in extra.as_object().expect("fields") {
        spec[k] = v.clone();
    }
    create::<BackupJob>(
        &ns.api(),
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob",
               "metadata": {"name": name}, "spec": spec}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_backs_up_lists_and_explains() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    let Some(_nodes) = RealNodes::get() else {
        return;
    };
    cluster.apply_crds().await;
    let ns = cluster.namespace("kubectl-plugin").await;
    let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = member(&ns, "rs0-1", "real-b").await;
    support::make_source(&data);
    support::chown_mongodb(&data);
    claim(&ns, "backups", Some(SHARED_CLASS)).await;
    key_secret(&ns, work.path()).await;
    let _op = Operator::start_with_image(cluster.kubeconfig(), ns.name(), IMAGE, &[]);
    job(&ns, "rs0", "repo", json!({})).await;
    job(
        &ns,
        "rs0-bad",
        "repo-bad",
        json!({"maxFiles": 1, "backoffLimit": 0}),
    )
    .await;
    // kubectl runs plugins found on the PATH as kubectl-NAME: the same binary by that name.
    let link: PathBuf = work.path().join("kubectl-snapcrypt");
    std::os::unix::fs::symlink(support::bin(), &link).expect("link");
    let kc = cluster.kubeconfig();

    // backup --wait: an on-demand Snapshot, its progress, exit 0 once it succeeded.
    let out = plugin(
        &link,
        kc,
        ns.name(),
        &["backup", "rs0", "--wait", "--timeout", "5m"],
    );
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "backup --wait failed:\n{stdout}\n{stderr}"
    );
    let name = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("snapshot.snapcrypt.dev/")?
                .strip_suffix(" created")
        })
        .expect("the Snapshot's name")
        .to_string();
    assert!(
        stdout.contains(&format!("Snapshot {name} succeeded")),
        "{stdout}"
    );
    assert!(
        stderr.lines().any(|l| l.starts_with(&format!("{name}: "))),
        "no progress printed:\n{stderr}"
    );
    let snap = ns.api::<Snapshot>().get(&name).await.expect("the Snapshot");
    let st = snap.status.clone().expect("status");
    assert_eq!(st.phase, RunPhase::Succeeded);

    listing_says_what_status_says(&link, kc, &ns, &name, &st).await;

    // Against a job whose Snapshot fails: non-zero, and the reason.
    let out = plugin(
        &link,
        kc,
        ns.name(),
        &["backup", "rs0-bad", "--wait", "--timeout", "5m"],
    );
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "a failed Snapshot returned 0:\n{stdout}"
    );
    assert!(
        stderr.contains("failed:") && stderr.contains("--max-files"),
        "the reason is not printed:\n{stderr}"
    );
    let bad = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("snapshot.snapcrypt.dev/")?
                .strip_suffix(" created")
        })
        .expect("the failed Snapshot's name")
        .to_string();
    logs_restore_and_explain(&link, kc, &ns, &name, &bad).await;
    let out = plugin(&link, kc, ns.name(), &["status", "rs0-bad"]);
    let (screen, _) = text(&out);
    assert!(screen.contains("To do:"), "{screen}");

    // A job that does not exist: a clear error, non-zero.
    let out = plugin(&link, kc, ns.name(), &["backup", "nope"]);
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("BackupJob nope not found"),
        "{stderr}"
    );
}

/// `snapshots` (table and JSON) and `status` (screen and JSON) against the Snapshot's status.
async fn listing_says_what_status_says(
    link: &Path,
    kc: &Path,
    ns: &TestNamespace,
    name: &str,
    st: &snapcrypt::api::SnapshotStatus,
) {
    let out = plugin(link, kc, ns.name(), &["snapshots", "rs0", "-o", "json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rows: Value = serde_json::from_str(&stdout).expect("snapshots -o json");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("{name} not listed: {stdout}"));
    assert_eq!(row["phase"], "Succeeded");
    assert_eq!(row["trigger"], "on-demand");
    assert_eq!(row["job"], "rs0");
    assert_eq!(
        row["addedBytes"].as_u64(),
        st.stats.as_ref().map(|s| s.stored_bytes)
    );
    assert_eq!(row["keyId"].as_str(), st.key_id.as_deref());
    assert_eq!(
        row["repositorySnapshotId"].as_str(),
        st.repository_snapshot_id.as_deref()
    );
    let out = plugin(link, kc, ns.name(), &["snapshots"]);
    let (table, _) = text(&out);
    assert!(
        table.starts_with("NAME") && table.lines().any(|l| l.starts_with(name)),
        "{table}"
    );

    // status: the screen names the last good snapshot; nothing to do on a healthy job.
    let jobs: Api<BackupJob> = ns.api();
    support::cluster::wait_for(
        &jobs,
        "rs0",
        "the job to record the snapshot",
        support::cluster::DEADLINE,
        |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.last_successful_snapshot.as_deref() == Some(name))
        },
    )
    .await;
    let out = plugin(link, kc, ns.name(), &["status", "rs0"]);
    let (screen, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    println!("{screen}");
    assert!(
        screen.starts_with(&format!("BackupJob {}/rs0: Ready", ns.name())),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("Last good snapshot: {name}, ")),
        "{screen}"
    );
    // The member is a pause pod (a double) copied as a stopped member the operator cannot
    // confirm stopped: the screen says so, as the one thing to do.
    assert!(
        screen.contains(&format!("To do:\n  - Snapshot {name} is not consistent")),
        "{screen}"
    );
    let out = plugin(link, kc, ns.name(), &["status", "rs0", "-o", "json"]);
    let (stdout, _) = text(&out);
    let s: Value = serde_json::from_str(&stdout).expect("status -o json");
    assert_eq!(s["phase"], "Ready");
    assert_eq!(s["toDo"].as_array().map(Vec::len), Some(1), "{stdout}");
}

/// `logs` of the good Snapshot, `restore --wait` of it into a new claim, and
/// `explain-failure` of the failed one.
async fn logs_restore_and_explain(
    link: &Path,
    kc: &Path,
    ns: &TestNamespace,
    good: &str,
    bad: &str,
) {
    let out = plugin(link, kc, ns.name(), &["logs", good]);
    let (log, stderr) = text(&out);
    assert!(
        out.status.success() && !log.trim().is_empty(),
        "logs: {stderr}"
    );

    claim(ns, "restored", None).await;
    let out = plugin(
        link,
        kc,
        ns.name(),
        &[
            "restore",
            good,
            "--to",
            "restored",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "restore --wait failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("Snapshot {good} is in claim restored")),
        "{stdout}"
    );
    let restores: Vec<snapcrypt::api::Restore> = ns
        .api::<snapcrypt::api::Restore>()
        .list(&Default::default())
        .await
        .expect("restores")
        .items;
    assert!(
        restores.iter().any(|r| r
            .status
            .as_ref()
            .is_some_and(|s| s.phase == RunPhase::Succeeded)),
        "no Restore succeeded"
    );

    let out = plugin(link, kc, ns.name(), &["explain-failure", bad]);
    let (view, stderr) = text(&out);
    println!("{view}");
    assert!(out.status.success(), "{stderr}");
    assert!(
        view.starts_with(&format!("Snapshot {}/{bad}: Failed", ns.name()))
            && view.contains("Failed=True")
            && view.contains("--max-files")
            && view.contains("Events:"),
        "{view}"
    );
}
