//! The operator end to end on the test ground (tests/README.md): a replica set of member pods
//! (the pause image standing in for mongod) on two real nodes, each with a data claim holding a
//! generated dbPath, the operator binary as a process, snapshot and restore pods in real
//! containers, and BackupJobs as a user writes them. A snapshot pod runs on the chosen member's node, the
//! Snapshot succeeds with progress, stats and key id in status, and `snapcrypt restore` from
//! the repository gives back identical bytes. Bad specs become conditions and Events, not
//! crashes.

mod support;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use serde_json::json;
use snapcrypt::api::snapshot::RunPhase;
use snapcrypt::api::{BackupJob, Restore, Snapshot};
use support::cli::{backup_args, repo_args, restore_args};
use support::cluster::{
    TestNamespace, cluster_or_skip, eventually, try_wait_for, unique_name, wait_for,
    wait_for_deletion,
};
use support::operator::{
    ChartOperator, LONG, Operator, claim, create, member, snapshot_condition, wait_for_event,
    wait_for_success,
};
use support::real_nodes::{RealNodes, pod_logs, volume_dir};

fn job(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "source": {"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                   "syncSource": {"mode": "member", "member": "rs0-1"}},
        "destination": {"pvc": {"claimName": "backups", "path": "repo"}},
        "encryption": {"localKeySecret": {"name": "rs0-key"}},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": name}, "spec": spec})
}

fn condition(job: &BackupJob, type_: &str) -> Option<(String, String, String)> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Create the Restore `obj` and wait until it has finished (succeeded or failed); its status.
async fn finished_restore(
    ns: &support::cluster::TestNamespace,
    obj: serde_json::Value,
) -> snapcrypt::api::RestoreStatus {
    let restores: Api<Restore> = ns.api();
    let name = obj["metadata"]["name"].as_str().expect("name").to_string();
    create::<Restore>(&restores, obj).await;
    let finished = |r: &Restore| {
        matches!(
            r.status.as_ref().map(|s| s.phase),
            Some(RunPhase::Succeeded | RunPhase::Failed)
        )
    };
    try_wait_for(&restores, &name, "the Restore to finish", LONG, finished)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pod_logs(ns.name())))
        .status
        .expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_job_snapshots_the_chosen_member_and_restores_identically() {
    scenario(false).await;
}

/// The same story with the operator running as the Helm chart installs it: a pod of the
/// chart's Deployment, as its ServiceAccount, under its ClusterRole: a missing permission
/// fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_under_the_charts_rbac() {
    scenario(true).await;
}

async fn scenario(under_chart_rbac: bool) {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    let Some(_nodes) = RealNodes::get() else {
        return;
    };
    let (node_a, node_b) = ("real-a", "real-b");
    let ns = cluster.namespace("operator").await;
    cluster.apply_crds().await;
    let work = tempfile::tempdir().expect("tempdir");

    // A replica set of two members on two nodes, each with its own dbPath.
    let mut data = Vec::new();
    for (i, (m, node)) in [("rs0-0", node_a), ("rs0-1", node_b)]
        .into_iter()
        .enumerate()
    {
        let dir = member(&ns, m, node).await;
        support::make_source(&dir);
        std::fs::write(dir.join("member.txt"), format!("member {i}")).expect("write");
        support::chown_mongodb(&dir);
        data.push(dir);
    }
    let rs0_1 = &data[1];
    // The repository volume: a disk of the node of its first pod (the snapshot pod's).
    claim(&ns, "backups", None).await;
    // The master key, made the way a user makes one, in a Secret.
    let key = work.path().join("key.json");
    std::fs::create_dir_all(work.path().join("empty")).expect("dir");
    support::ok(
        &backup_args(
            &work.path().join("empty").display().to_string(),
            &work.path().join("scratch").display().to_string(),
            &key.display().to_string(),
            &[],
        ),
        &[],
    );
    let key_text = std::fs::read_to_string(&key).expect("key");
    create::<Secret>(
        &ns.api(),
        json!({"metadata": {"name": "rs0-key"}, "stringData": {"key": key_text}}),
    )
    .await;

    // The operator: the chart's pod (its ServiceAccount, ClusterRole and image), or this
    // binary as a process with the admin's rights.
    let (_chart, _operator) = if under_chart_rbac {
        (Some(ChartOperator::install(&ns).await), None)
    } else {
        (None, Some(Operator::start(cluster.kubeconfig(), ns.name())))
    };
    let jobs: Api<BackupJob> = ns.api();
    let snaps: Api<Snapshot> = ns.api();

    let ctx = Ctx {
        ns: &ns,
        work: &work,
        key: &key,
        rs0_1,
        jobs,
        snaps,
    };
    let (snap_name, id, repo) = a_one_off_job_snapshots_rs0_1(&ctx, node_b).await;
    let db = restores_write_the_snapshot_into_a_claim(&ctx, &snap_name, &id).await;
    hostile_restore_targets_leave_the_repository_whole(&ctx, &snap_name, &id, &repo, &db).await;
    a_restore_of_a_missing_snapshot_names_it(&ctx).await;
    bad_specs_are_reported(&ctx).await;
    a_schedule_with_retention_forgets_its_older_runs(&ctx, &id, &repo).await;
}

/// What the scenario's steps share: the namespace, a scratch directory, the master key file,
/// member rs0-1's data and the APIs of the jobs and Snapshots.
struct Ctx<'a> {
    ns: &'a TestNamespace,
    work: &'a tempfile::TempDir,
    key: &'a std::path::PathBuf,
    rs0_1: &'a std::path::PathBuf,
    jobs: Api<BackupJob>,
    snaps: Api<Snapshot>,
}

/// The Restore `name` of `snapshot` into the claim `restored`, directory `db`.
fn restore_of(name: &str, snapshot: &str) -> serde_json::Value {
    json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": name},
           "spec": {"snapshotRef": {"name": snapshot}, "target": {"claimName": "restored", "path": "db"}}})
}

/// A finished Restore succeeded; else its status and the pods' logs.
fn assert_succeeded(st: &snapcrypt::api::RestoreStatus, ns: &TestNamespace) {
    assert_eq!(
        st.phase,
        RunPhase::Succeeded,
        "{st:?}\n{}",
        pod_logs(ns.name())
    );
}

/// Step 1: A one-off job: one Snapshot, on rs0-1's node, succeeds; the repository restores to
/// exactly what the member held. The Snapshot's name, its id in the repository, and the
/// repository's directory.
async fn a_one_off_job_snapshots_rs0_1(
    ctx: &Ctx<'_>,
    node_b: &str,
) -> (String, String, std::path::PathBuf) {
    let Ctx {
        ns,
        work,
        key,
        rs0_1,
        jobs,
        snaps,
    } = ctx;
    create::<BackupJob>(jobs, job("once", json!({}))).await;
    let j = wait_for(jobs, "once", "the job to create its Snapshot", LONG, |j| {
        j.status.as_ref().is_some_and(|s| s.last_snapshot.is_some())
    })
    .await;
    let snap_name = j
        .status
        .and_then(|s| s.last_snapshot)
        .expect("snapshot name");
    let st = wait_for_success(snaps, &snap_name, ns).await;
    let m = st.member.clone().expect("member");
    assert_eq!((m.pod.as_str(), m.node.as_deref()), ("rs0-1", Some(node_b)));
    let pods: Api<Pod> = ns.api();
    let pod = pods
        .get(st.pod_name.as_deref().expect("pod name"))
        .await
        .expect("snapshot pod");
    assert_eq!(
        pod.spec.and_then(|s| s.node_name).as_deref(),
        Some(node_b),
        "pinned to the member's node"
    );
    let progress = st.progress.clone().expect("progress reported by the agent");
    assert_eq!(progress.percent, 100.0);
    assert_eq!(progress.files_done, progress.files_total);
    let stats = st.stats.clone().expect("stats");
    assert_eq!(stats.files, 9);
    assert!(st.key_id.as_deref().is_some_and(|k| !k.is_empty()));
    let id = st
        .repository_snapshot_id
        .clone()
        .expect("repository snapshot id");
    let j = wait_for(jobs, "once", "the job to complete", LONG, |j| {
        j.status
            .as_ref()
            .is_some_and(|s| s.last_successful_snapshot.is_some())
    })
    .await;
    assert_eq!(j.status.as_ref().and_then(|s| s.key_id.clone()), st.key_id);
    wait_for_event(ns, &snap_name, "Succeeded").await;
    // The agent's rights: its ServiceAccount may patch this Snapshot's status, and no other
    // Snapshot's or Restore's (asked of the API server's own authorizer).
    let agent = format!("system:serviceaccount:{}:snapcrypt-agent-once", ns.name());
    assert!(may(ns, &agent, "snapshots", "status", &snap_name).await);
    assert!(!may(ns, &agent, "snapshots", "status", "another-jobs-snapshot").await);
    assert!(!may(ns, &agent, "restores", "status", "any-restore").await);
    assert!(!may(ns, &agent, "snapshots", "", "another-jobs-snapshot").await);

    // The repository restores to exactly what the member held.
    let repo = volume_dir(ns, "backups").await.join("repo");
    let out = work.path().join("restored");
    support::ok(
        &restore_args(
            &repo.display().to_string(),
            &key.display().to_string(),
            &id,
            &out.display().to_string(),
            &[],
        ),
        &[],
    );
    support::assert_same_tree(rs0_1, &out);
    (snap_name, id, repo)
}

/// Step 1b: The same through a Restore: a restore pod writes the snapshot into a fresh claim,
/// verifying as it goes; the Restore succeeds and the files are identical. Then into the
/// same directory again, and in place with force and deleteExtra. The directory restored to.
async fn restores_write_the_snapshot_into_a_claim(
    ctx: &Ctx<'_>,
    snap_name: &str,
    id: &str,
) -> std::path::PathBuf {
    let Ctx { ns, rs0_1, .. } = ctx;
    claim(ns, "restored", None).await;
    let rst = finished_restore(ns, restore_of("back", snap_name)).await;
    assert_succeeded(&rst, ns);
    assert!(
        rst.message
            .as_deref()
            .is_some_and(|m| m.contains(id) && m.contains("every chunk verified")),
        "{:?}",
        rst.message
    );
    let progress = rst
        .progress
        .expect("progress reported by the restore agent");
    assert_eq!(progress.percent, 100.0);
    support::assert_same_tree(rs0_1, &volume_dir(ns, "restored").await.join("db"));
    wait_for_event(ns, "back", "Restored").await;
    // Again into the same, now non-empty, directory: refused with the agent's own words,
    // nothing overwritten.
    let st = finished_restore(ns, restore_of("again", snap_name)).await;
    assert_eq!(st.phase, RunPhase::Failed);
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("is not empty") && m.contains("set spec.target.force")),
        "{:?}",
        st.message
    );
    // In place over what the directory holds, plus a file the snapshot does not have: with
    // force alone refused, naming the file and deleteExtra, nothing removed; with deleteExtra
    // too, the directory holds exactly the snapshot.
    let db = volume_dir(ns, "restored").await.join("db");
    std::fs::write(db.join("stale-collection.wt"), b"not in the snapshot").expect("plant");
    let in_place = |name: &str, delete_extra: bool| {
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": name},
               "spec": {"snapshotRef": {"name": &snap_name},
                        "target": {"claimName": "restored", "path": "db", "force": true,
                                   "deleteExtra": delete_extra}}})
    };
    let st = finished_restore(ns, in_place("forced", false)).await;
    assert_eq!(st.phase, RunPhase::Failed);
    assert!(
        st.message.as_deref().is_some_and(
            |m| m.contains("stale-collection.wt") && m.contains("set spec.target.deleteExtra")
        ),
        "{:?}",
        st.message
    );
    assert!(db.join("stale-collection.wt").exists());
    let st = finished_restore(ns, in_place("exact", true)).await;
    assert_succeeded(&st, ns);
    support::assert_same_tree(rs0_1, &db);
    db
}

/// The hostile target (found by hand on 4c5991e, where it deleted the repository): the
/// target claim holds `db2 -> /repo/repo`, the repository as the restore pod mounts it.
/// A forced Restore with deleteExtra into db2 fails naming the link, and one into db,
/// where links to the repository are planted at two depths, replaces the links and leaves
/// the repository whole: it verifies reading every pack, and restores.
async fn hostile_restore_targets_leave_the_repository_whole(
    ctx: &Ctx<'_>,
    snap_name: &str,
    id: &str,
    repo: &std::path::Path,
    db: &std::path::Path,
) {
    let Ctx {
        ns,
        work,
        key,
        rs0_1,
        ..
    } = ctx;
    let restored_vol = volume_dir(ns, "restored").await;
    std::os::unix::fs::symlink("/repo/repo", restored_vol.join("db2")).expect("plant db2");
    std::fs::remove_dir_all(db.join("journal")).expect("journal");
    std::os::unix::fs::symlink("/repo/repo/data", db.join("journal")).expect("plant journal");
    std::os::unix::fs::symlink("/repo/repo", db.join("extra-link")).expect("plant link");
    let hostile = |name: &str, path: &str| {
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Restore", "metadata": {"name": name},
               "spec": {"snapshotRef": {"name": &snap_name},
                        "target": {"claimName": "restored", "path": path, "force": true,
                                   "deleteExtra": true}}})
    };
    let st = finished_restore(ns, hostile("through-a-link", "db2")).await;
    assert_eq!(st.phase, RunPhase::Failed, "{st:?}");
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("/target/db2: is a symbolic link: never followed")),
        "{:?}",
        st.message
    );
    let st = finished_restore(ns, hostile("links-inside", "db")).await;
    assert_succeeded(&st, ns);
    support::assert_same_tree(rs0_1, db);
    let (repo_s, key_s) = (repo.display().to_string(), key.display().to_string());
    support::ok(
        &repo_args(&["verify"], &repo_s, &key_s, &["--read-data"]),
        &[],
    );
    let again = work.path().join("after-hostile");
    support::ok(
        &restore_args(&repo_s, &key_s, id, &again.display().to_string(), &[]),
        &[],
    );
    support::assert_same_tree(rs0_1, &again);
}

/// A Snapshot that does not exist: a condition naming the field, no pod.
async fn a_restore_of_a_missing_snapshot_names_it(ctx: &Ctx<'_>) {
    let restores: Api<Restore> = ctx.ns.api();
    create::<Restore>(&restores, restore_of("ghost", "no-such-snapshot")).await;
    let ghost = wait_for(
        &restores,
        "ghost",
        "the missing Snapshot to be reported",
        LONG,
        |r| {
            r.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "SnapshotNotFound")
            })
        },
    )
    .await;
    assert!(ghost.status.and_then(|s| s.message).is_some_and(|m| {
        m.starts_with("spec.snapshotRef.name: Snapshot no-such-snapshot does not exist")
    }));
}

/// Steps 2 to 4: a bad cron, a missing Secret, too many files.
async fn bad_specs_are_reported(ctx: &Ctx<'_>) {
    let Ctx {
        ns, jobs, snaps, ..
    } = ctx;
    // 2. A bad cron: a condition naming the field, an Event, nothing created.
    create::<BackupJob>(
        jobs,
        job("badcron", json!({"schedule": {"cron": "61 * * * *"}})),
    )
    .await;
    let j = wait_for(jobs, "badcron", "the bad cron to be reported", LONG, |j| {
        condition(j, "Ready").is_some_and(|c| c.1 == "InvalidSchedule")
    })
    .await;
    let (_, _, msg) = condition(&j, "Ready").expect("Ready");
    assert_eq!(
        msg,
        "spec.schedule.cron \"61 * * * *\": minute 61 is out of range 0-59"
    );
    wait_for_event(ns, "badcron", "InvalidSchedule").await;

    // 3. A missing Secret: a condition naming it.
    create::<BackupJob>(
        jobs,
        job(
            "nokey",
            json!({"encryption": {"localKeySecret": {"name": "no-such-key"}}}),
        ),
    )
    .await;
    let j = wait_for(
        jobs,
        "nokey",
        "the missing Secret to be reported",
        LONG,
        |j| condition(j, "Ready").is_some_and(|c| c.1 == "SecretNotFound"),
    )
    .await;
    assert!(condition(&j, "Ready").is_some_and(|c| {
        c.2.contains("spec.encryption.localKeySecret.name \"no-such-key\"")
    }));

    // 4. Too many files: the agent refuses, the Snapshot fails with its message (no retry).
    create::<BackupJob>(
        jobs,
        job("toomany", json!({"maxFiles": 3, "backoffLimit": 0})),
    )
    .await;
    let j = wait_for(
        jobs,
        "toomany",
        "the job to create its Snapshot",
        LONG,
        |j| j.status.as_ref().is_some_and(|s| s.last_snapshot.is_some()),
    )
    .await;
    let name = j.status.and_then(|s| s.last_snapshot).expect("name");
    let s = try_wait_for(snaps, &name, "the Snapshot to fail", LONG, |s| {
        matches!(
            s.status.as_ref().map(|st| st.phase),
            Some(RunPhase::Succeeded | RunPhase::Failed)
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pod_logs(ns.name())));
    let st = s.status.expect("status");
    assert_eq!(st.phase, RunPhase::Failed);
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("--max-files 3")),
        "{:?}",
        st.message
    );
    assert_eq!(st.attempts, 1);
    let j = wait_for(jobs, "toomany", "the job to show the failure", LONG, |j| {
        condition(j, "Degraded").is_some_and(|c| c.1 == "LastSnapshotFailed")
    })
    .await;
    assert!(condition(&j, "Degraded").is_some_and(|c| c.2.contains("--max-files 3")));
}

/// Step 5: A schedule and retention: a job firing every minute that keeps its newest scheduled
/// snapshot, writing into the same repository as "once". Its second scheduled run forgets
/// its first: the repository no longer lists it and its Snapshot object is deleted. An
/// on-demand run (a Snapshot made by hand) and "once" are never forgotten by it.
async fn a_schedule_with_retention_forgets_its_older_runs(
    ctx: &Ctx<'_>,
    id: &str,
    repo: &std::path::Path,
) {
    let Ctx {
        ns,
        key,
        jobs,
        snaps,
        ..
    } = ctx;
    create::<BackupJob>(
        jobs,
        job(
            "keep1",
            json!({"schedule": {"cron": "* * * * *"}, "retention": {"keepLast": 1}}),
        ),
    )
    .await;
    let j = wait_for(jobs, "keep1", "the first scheduled run", LONG, |j| {
        j.status.as_ref().is_some_and(|s| s.last_snapshot.is_some())
    })
    .await;
    let first = j.status.and_then(|s| s.last_snapshot).expect("name");
    let first_id = wait_for_success(snaps, &first, ns)
        .await
        .repository_snapshot_id
        .expect("id");
    create::<Snapshot>(
        snaps,
        json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
               "metadata": {"name": "keep1-on-demand"}, "spec": {"backupJobRef": {"name": "keep1"}}}),
    )
    .await;
    let on_demand = wait_for_success(snaps, "keep1-on-demand", ns).await;
    let applied = |st: &snapcrypt::api::SnapshotStatus| snapshot_condition(st, "RetentionApplied");
    assert!(
        applied(&on_demand).starts_with("True Pruned: kept 1 snapshot(s) of the job, forgot 0,"),
        "{}",
        applied(&on_demand)
    );
    // The next scheduled run forgets the first, and its Snapshot object goes.
    wait_for_deletion(snaps, &first, LONG).await;
    jobs.patch(
        "keep1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspend keep1");
    let (second, second_st) = keep1s_finished_scheduled_run(snaps).await;
    assert_eq!(second_st.phase, RunPhase::Succeeded, "{second}");
    assert!(
        applied(&second_st).starts_with("True Pruned: kept 1 snapshot(s) of the job, forgot 1,"),
        "{}",
        applied(&second_st)
    );
    wait_for_event(ns, &second, "ForgottenSnapshotsDeleted").await;
    let listed: serde_json::Value = serde_json::from_str(&support::ok(
        &repo_args(
            &["snapshots"],
            &repo.display().to_string(),
            &key.display().to_string(),
            &["--json"],
        ),
        &[],
    ))
    .expect("snapshots --json");
    let mut ids: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    ids.sort();
    let mut want = vec![
        id,
        on_demand.repository_snapshot_id.as_deref().expect("id"),
        second_st.repository_snapshot_id.as_deref().expect("id"),
    ];
    want.sort();
    assert_eq!(
        ids, want,
        "the first keep1 snapshot ({first_id}) is forgotten"
    );
}

/// Waits until keep1 has one scheduled Snapshot (its on-demand one aside), finished; its name
/// and status.
async fn keep1s_finished_scheduled_run(
    snaps: &Api<Snapshot>,
) -> (String, snapcrypt::api::SnapshotStatus) {
    eventually("keep1's runs to finish", LONG, || async {
        let all = snaps
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let keep1: Vec<&Snapshot> = all
            .items
            .iter()
            .filter(|s| {
                s.spec.backup_job_ref.name == "keep1"
                    && s.metadata.name != Some("keep1-on-demand".into())
            })
            .collect();
        let finished = |s: &&Snapshot| {
            matches!(
                s.status.as_ref().map(|st| st.phase),
                Some(RunPhase::Succeeded | RunPhase::Failed)
            )
        };
        match keep1.as_slice() {
            [one] if finished(one) => Ok((
                one.metadata.name.clone().unwrap_or_default(),
                one.status.clone().unwrap_or_default(),
            )),
            _ => Err(format!(
                "keep1's scheduled Snapshots: {:?}",
                keep1
                    .iter()
                    .map(|s| (
                        s.metadata.name.clone(),
                        s.status.as_ref().map(|st| st.phase)
                    ))
                    .collect::<Vec<_>>()
            )),
        }
    })
    .await
}

/// Two operators with --leader-elect: one holds the Lease; when it dies, the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_fails_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    cluster.apply_crds().await;
    let ns = cluster.namespace("leader").await;
    let lease_name = unique_name("lease", "op");
    let flags = [
        "--leader-elect",
        "--leader-elect-lease",
        lease_name.as_str(),
    ];
    // Without POD_NAMESPACE the Lease lives in "default"; each process is named by its pid.
    let first = Operator::start_with(cluster.kubeconfig(), ns.name(), &flags);
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "default");
    let holder = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default()
    };
    let l = wait_for(&leases, &lease_name, "a leader", LONG, |l| {
        !holder(l).is_empty()
    })
    .await;
    let leader = holder(&l);
    assert_eq!(leader, format!("snapcrypt-{}", first.pid()));
    let _second = Operator::start_with(cluster.kubeconfig(), ns.name(), &flags);
    drop(first);
    let l = wait_for(
        &leases,
        &lease_name,
        "the second operator to take over",
        LONG,
        |l| !holder(l).is_empty() && holder(l) != leader,
    )
    .await;
    assert_eq!(l.spec.and_then(|s| s.lease_transitions), Some(1));
    let _ = leases.delete(&lease_name, &Default::default()).await;
}

/// Whether `user` may patch (a subresource: status) or get (none) snapcrypt.dev `resource`
/// `name` in the test namespace, as the API server's authorizer answers a
/// SubjectAccessReview.
async fn may(ns: &TestNamespace, user: &str, resource: &str, sub: &str, name: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", ns.name()),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.name().into()),
                verb: Some(if sub.is_empty() { "get" } else { "patch" }.into()),
                group: Some("snapcrypt.dev".into()),
                resource: Some(resource.into()),
                subresource: (!sub.is_empty()).then(|| sub.into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(ns.client());
    let answer = api
        .create(&Default::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

/// The check the e2e support code runs on every status message and Event note it reads (#29)
/// catches the MongoDB driver's dump and a kube error's, and lets words through.
#[test]
fn the_debug_dump_check_catches_dumps_and_passes_words() {
    use support::plain::debug_dump;
    let dump = "connecting to member rs1-0: Kind: Server selection timeout: No available servers. Topology: { Type: Single, Servers: [ { Address: 10.244.0.4:27017, Type: Unknown, Error: Kind: I/O error: Connection refused (os error 111), labels: {\"SystemOverloadedError\"} } ] }";
    assert!(debug_dump(dump).is_some());
    assert!(debug_dump("Forbidden (ErrorResponse { status: \"Failure\" })").is_some());
    assert!(debug_dump("the reply's lockCount is Some(0)").is_some());
    for words in [
        "could not connect to mongod on member rs1-0 (10.244.0.4:27017): connection refused; is mongod running, and is spec.source.connection.port (27017) right?",
        "snapshot 5f1e in the repository: 3 files, 1.0 KiB, 1.0 KiB added",
        "restore into claim {name} refused",
    ] {
        assert_eq!(debug_dump(words), None, "{words}");
    }
}
