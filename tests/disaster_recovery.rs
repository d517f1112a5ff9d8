//! Disaster recovery through the CLI and the agent, as the operator's pods run them (#31):
//! choosing a snapshot from the repository alone (`latest`, `before:TIME`, a job's tag), the
//! refusals that say what the repository holds, a job's catalog, and two clusters writing one
//! job's snapshots: the owner writes and prunes, the other only reads until it takes over.

#[path = "support/kmip.rs"]
mod pykmip;
mod support;

use std::fs;
use std::path::Path;

use support::cli::{repo_args, restore_args};
use support::{Env, assert_same_tree, backup_json, fails, ok, snapshot_ids};

const JOB: &str = "backupjob=db/rs0";

/// `agent snapshot` as a snapshot pod of cluster `cluster` runs it: job db/rs0's scheduled
/// run, keeping the job's newest only, its result line in `log`.
fn agent_run<'a>(
    src: &'a str,
    repo: &'a str,
    key: &'a str,
    log: &'a str,
    cluster: &'a [&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "agent",
        "snapshot",
        "--source",
        src,
        "--repo",
        repo,
        "--key-file",
        key,
        "--tag",
        JOB,
        "--tag",
        "trigger=schedule",
        "--keep-last",
        "1",
        "--prune-tag",
        JOB,
        "--prune-tag",
        "trigger=schedule",
        "--termination-log",
        log,
    ];
    args.extend_from_slice(cluster);
    args
}

/// The snapshot id an agent's result line in `log` names.
fn result_id(log: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(fs::read_to_string(log).expect("result").trim()).expect("json");
    v["id"].as_str().expect("id").to_string()
}

/// Restore chooses among a job's snapshots by its tag: latest, or the newest taken at or
/// before a time; a time before every snapshot, a job with none, and a word that is no
/// snapshot are refused, each saying what the repository holds or what is allowed, and
/// nothing is written.
#[test]
fn restore_chooses_by_job_and_time_and_refuses_naming_what_the_repository_holds() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let first = backup_json(&src, &repo, &key, &["--tag", JOB], &[]);
    fs::write(
        Path::new(&src).join("later.txt"),
        b"written after the first",
    )
    .unwrap();
    let second = backup_json(&src, &repo, &key, &["--tag", JOB], &[]);
    backup_json(&src, &repo, &key, &["--tag", "backupjob=db/other"], &[]);

    // latest of the job: the second, not the other job's newer one.
    let out = ok(
        &restore_args(
            &repo,
            &key,
            "latest",
            &e.p("latest"),
            &["--snapshot-tag", JOB, "--json"],
        ),
        &[],
    );
    let restored: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(restored["snapshot"], second["id"]);
    assert_same_tree(Path::new(&src), Path::new(&e.p("latest")));

    // before: the first snapshot's own time chooses it.
    let at_first = format!("before:{}", first["time"].as_str().unwrap());
    let out = ok(
        &restore_args(
            &repo,
            &key,
            &at_first,
            &e.p("before"),
            &["--snapshot-tag", JOB, "--json"],
        ),
        &[],
    );
    let restored: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(restored["snapshot"], first["id"]);
    assert!(!Path::new(&e.p("before")).join("later.txt").exists());

    let refused = |which: &str, tag: &str, target: &str| {
        let err = fails(
            &restore_args(&repo, &key, which, &e.p(target), &["--snapshot-tag", tag]),
            &[],
        );
        assert!(!Path::new(&e.p(target)).exists(), "{target} was written");
        err
    };
    let err = refused("before:2000-01-01T00:00:00Z", JOB, "t1");
    assert!(
        err.contains("no snapshot tagged backupjob=db/rs0 was taken at or before 2000-01-01T00:00:00Z: the oldest was taken at"),
        "{err}"
    );
    let err = refused("latest", "backupjob=db/gone", "t2");
    assert!(
        err.contains("holds no snapshot tagged backupjob=db/gone (it holds 3 snapshots in all)"),
        "{err}"
    );
    let err = refused("yesterday", JOB, "t3");
    assert!(
        err.contains("give latest, a snapshot id (hex, or a unique prefix of one), or before:TIME"),
        "{err}"
    );
}

/// Two clusters with a BackupJob of the same namespace and name over one repository: the
/// first to write claims the job's snapshots; the other's backup is refused before it writes
/// (naming the owner and spec.takeOverFrom), so its retention never forgets the owner's
/// snapshots. Taking over from the named owner moves the claim, and then the old owner is the
/// one refused: at no time do two retention passes run for the job.
#[test]
fn two_clusters_never_prune_each_others_snapshots() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let log = e.p("termination-log");
    // The key file, as a first backup elsewhere makes it (an agent needs it to exist).
    backup_json(&src, &e.p("seed"), &key, &[], &[]);
    let a = ["--cluster", "cluster-a"];
    ok(&agent_run(&src, &repo, &key, &log, &a), &[]);
    let a_first = result_id(&log);
    ok(&agent_run(&src, &repo, &key, &log, &a), &[]);
    let a_kept = result_id(&log);
    assert_eq!(
        snapshot_ids(&repo, &key, &[]),
        vec![a_kept.clone()],
        "A keeps its newest"
    );
    assert_ne!(a_first, a_kept);

    // Cluster B, same job: refused before anything is written; A's snapshot stays.
    let b = ["--cluster", "cluster-b"];
    let err = fails(&agent_run(&src, &repo, &key, &log, &b), &[]);
    assert!(
        err.contains(
            "the snapshots of BackupJob db/rs0 in this repository are written by cluster cluster-a"
        ) && err.contains("this cluster is cluster-b")
            && err.contains("set the BackupJob's spec.takeOverFrom: cluster-a"),
        "{err}"
    );
    assert!(
        fs::read_to_string(&log)
            .unwrap()
            .contains("written by cluster cluster-a")
    );
    assert_eq!(snapshot_ids(&repo, &key, &[]), vec![a_kept.clone()]);

    // B takes over from A, by name: it writes (and its retention is the job's now).
    let take = ["--cluster", "cluster-b", "--take-over-from", "cluster-a"];
    ok(&agent_run(&src, &repo, &key, &log, &take), &[]);
    let b_kept = result_id(&log);
    assert_eq!(snapshot_ids(&repo, &key, &[]), vec![b_kept.clone()]);
    // A, back, only reads: its backup is refused and B's snapshot stays.
    let err = fails(&agent_run(&src, &repo, &key, &log, &a), &[]);
    assert!(err.contains("written by cluster cluster-b"), "{err}");
    assert_eq!(snapshot_ids(&repo, &key, &[]), vec![b_kept]);
    // Taking over from a cluster that is not the owner is no takeover.
    let wrong = ["--cluster", "cluster-c", "--take-over-from", "cluster-a"];
    let err = fails(&agent_run(&src, &repo, &key, &log, &wrong), &[]);
    assert!(err.contains("written by cluster cluster-b"), "{err}");
}

/// The catalog agent (what a BackupJob's catalog pod runs) lists the job's snapshots only,
/// with what an imported Snapshot shows, and the cluster that writes them; an empty
/// destination holds none.
#[test]
fn the_catalog_lists_a_jobs_snapshots_and_their_writer() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let log = e.p("termination-log");
    backup_json(&src, &e.p("seed"), &key, &[], &[]);
    ok(
        &agent_run(&src, &repo, &key, &log, &["--cluster", "cluster-a"]),
        &[],
    );
    let id = result_id(&log);
    backup_json(&src, &repo, &key, &["--tag", "backupjob=db/other"], &[]);
    let catalog = |repo: &str| {
        let out = support::run(
            &repo_args(
                &["agent", "catalog"],
                repo,
                &key,
                &["--job", "db/rs0", "--termination-log", &log],
            ),
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: serde_json::Value =
            serde_json::from_slice(out.stderr.trim_ascii()).expect("the list");
        let result: serde_json::Value =
            serde_json::from_str(fs::read_to_string(&log).unwrap().trim()).unwrap();
        (list, result)
    };
    let (list, result) = catalog(&repo);
    assert_eq!(
        result,
        serde_json::json!({"found": 1, "owner": "cluster-a"})
    );
    let entries = list.as_array().expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["id"], serde_json::json!(id));
    assert_eq!(entries[0]["tags"]["trigger"], "schedule");
    assert!(entries[0]["keyId"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(entries[0]["logicalBytes"].as_u64().is_some_and(|b| b > 0));

    let (list, result) = catalog(&e.p("empty"));
    assert_eq!(result, serde_json::json!({"found": 0}));
    assert_eq!(list, serde_json::json!([]));
}

/// A repository whose data keys a KMIP master key wraps, restored against a KMIP server that
/// does not hold that key (a fresh one), or holds another key under the same id (another
/// server): refused, naming the key id the repository needs and the server asked; nothing is
/// written. Against the server that holds it, it restores.
#[test]
fn a_wrong_kmip_server_is_named_with_the_key_the_repository_needs() {
    let e = Env::new();
    let (src, repo) = (e.p("src"), e.p("repo"));
    let holder = pykmip::PyKmip::start();
    let flags = holder.cli_flags();
    ok(
        &pykmip::with(
            &["backup", "--source", &src, "--repo", &repo, "--tag", JOB],
            &flags,
        ),
        &[],
    );
    let restore_with = |server: &pykmip::PyKmip, target: &str| {
        let flags = server.cli_flags();
        support::run(
            &pykmip::with(
                &[
                    "restore",
                    "--repo",
                    &repo,
                    "--snapshot",
                    "latest",
                    "--target",
                    &e.p(target),
                ],
                &flags,
            ),
            &[],
        )
    };
    let fresh = pykmip::PyKmip::start();
    let out = restore_with(&fresh, "t-fresh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("master key 1") && err.contains(&fresh.endpoint()),
        "{err}"
    );
    assert!(!Path::new(&e.p("t-fresh")).exists());

    // Another server with a key "1" of its own.
    let other = pykmip::PyKmip::start();
    ok(
        &pykmip::with(
            &["backup", "--source", &src, "--repo", &e.p("other-repo")],
            &other.cli_flags(),
        ),
        &[],
    );
    let out = restore_with(&other, "t-other");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("master key 1") && err.contains(&other.endpoint()),
        "{err}"
    );
    assert!(!Path::new(&e.p("t-other")).exists());

    assert!(restore_with(&holder, "t-holder").status.success());
    assert_same_tree(Path::new(&src), Path::new(&e.p("t-holder")));
}
