//! `snapcrypt copy` (issue 32): snapshots copied into a second repository under its own master
//! key, between the store kinds snapcrypt speaks (a directory, and real servers on loopback of
//! S3, Google Cloud Storage and Azure: tests/object_stores.rs says which), incremental, and
//! restorable with the target's key alone. No doubles. Kills mid-copy are in tests/faults.rs.

mod support;

use std::path::Path;

use support::cli::{backup_args, copy_args, repo_args, restore_args};
use support::{Env, assert_same_tree, fails, files_under, make_source, ok, snapshot_ids};

/// `copy ... --json` (support::cli::copy_args), required to succeed: its report.
fn copy_json(
    from: &str,
    key: &str,
    to: &str,
    to_key: &str,
    more: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut args = copy_args(from, key, to, to_key, &["--json"]);
    args.extend_from_slice(more);
    let out = ok(&args, env);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("copy --json printed {out:?}: {e}"))
}

/// The copy `repo` verifies with --read-data and its latest snapshot restores (into `out`)
/// exactly as `src`, with `key` alone.
fn assert_restores(repo: &str, key: &str, src: &str, out: &str, env: &[(&str, &str)]) {
    ok(&repo_args(&["verify"], repo, key, &["--read-data"]), env);
    ok(&restore_args(repo, key, "latest", out, &[]), env);
    assert_same_tree(Path::new(src), Path::new(out));
}

/// The packs of a local repository.
fn packs(repo: &str) -> std::collections::BTreeSet<String> {
    files_under(&Path::new(repo).join("data"))
        .into_iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect()
}

/// A copy sends only what the target lacks: the first copy sends every pack, a second one
/// after another backup sends exactly the packs that backup added (counted in both
/// repositories), and a third sends nothing. The target opens with its own key only, restores
/// each snapshot bit-exact, and verifies with --read-data.
#[test]
fn a_second_copy_sends_only_the_new_packs() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let (copy, copy_key) = (e.p("copy"), e.p("copy-key.json"));
    ok(&backup_args(&src, &repo, &key, &["--tag", "member=a"]), &[]);
    let first = copy_json(&repo, &key, &copy, &copy_key, &[], &[]);
    assert_eq!(first["created"], true, "{first}");
    assert_eq!(first["copied"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(
        first["packs_copied"].as_u64(),
        Some(packs(&repo).len() as u64)
    );
    assert_eq!(packs(&copy), packs(&repo));

    let before = packs(&repo);
    std::fs::write(
        Path::new(&src).join("collection-9-new.wt"),
        support::pseudo_random(9, 3 << 20),
    )
    .unwrap();
    ok(&backup_args(&src, &repo, &key, &["--tag", "member=b"]), &[]);
    let added: std::collections::BTreeSet<String> =
        packs(&repo).difference(&before).cloned().collect();
    assert!(!added.is_empty());
    let second = copy_json(&repo, &key, &copy, &copy_key, &[], &[]);
    assert_eq!(second["created"], false, "{second}");
    assert_eq!(second["already_there"], 1, "{second}");
    assert_eq!(second["copied"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(
        second["packs_copied"].as_u64(),
        Some(added.len() as u64),
        "{second}"
    );
    assert_eq!(packs(&copy), packs(&repo));
    let third = copy_json(&repo, &key, &copy, &copy_key, &[], &[]);
    assert_eq!(
        (
            third["packs_copied"].as_u64(),
            third["already_there"].as_u64()
        ),
        (Some(0), Some(2))
    );

    // Its own key opens it; the source's does not.
    let ids = snapshot_ids(&repo, &key, &[]);
    assert_eq!(snapshot_ids(&copy, &copy_key, &[]), ids);
    let err = fails(&repo_args(&["snapshots"], &copy, &key, &[]), &[]);
    assert!(err.contains("keys/"), "{err}");
    assert_restores(&copy, &copy_key, &src, &e.p("out"), &[]);
}

/// `--snapshot` and `--tag` choose what is copied, and only what that needs is sent: the
/// target of `--snapshot latest --tag member=a` holds that snapshot alone and verifies with
/// --read-data (every pack it needs is there).
#[test]
fn a_chosen_snapshot_is_copied_with_what_it_needs_only() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let a = support::backup_json(&src, &repo, &key, &["--tag", "member=a"], &[]);
    let other = e.p("other");
    make_source(Path::new(&other));
    std::fs::write(
        Path::new(&other).join("collection-only-b.wt"),
        support::pseudo_random(5, 2 << 20),
    )
    .unwrap();
    ok(
        &backup_args(&other, &repo, &key, &["--tag", "member=b"]),
        &[],
    );
    let (copy, copy_key) = (e.p("copy"), e.p("copy-key.json"));
    let r = copy_json(
        &repo,
        &key,
        &copy,
        &copy_key,
        &["--snapshot", "latest", "--tag", "member=a"],
        &[],
    );
    assert_eq!(r["copied"], serde_json::json!([a["id"]]), "{r}");
    assert!(packs(&copy).len() < packs(&repo).len(), "{r}");
    assert_restores(&copy, &copy_key, &src, &e.p("out"), &[]);
}

/// What a copy refuses, each naming what to do: no target key, the source itself as the
/// target, a repository it did not make, the wrong target key, and a snapshot that is not there.
#[test]
fn a_copy_refuses_a_target_it_cannot_use() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    ok(&backup_args(&src, &repo, &key, &[]), &[]);
    let base = ["copy", "--from", &repo, "--key-file", &key];
    let with =
        |more: &[&str]| -> Vec<String> { base.iter().chain(more).map(|s| s.to_string()).collect() };
    let refuse = |more: &[&str], says: &str| {
        let args = with(more);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(&args, &[]);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    };
    refuse(&["--to", &e.p("copy")], "--to-key-file");
    assert!(
        !Path::new(&e.p("copy")).exists(),
        "a refused copy made its target"
    );
    refuse(
        &["--to", &repo, "--to-key-file", &key],
        "the source repository itself",
    );
    let (unrelated, its_key) = (e.p("unrelated"), e.p("unrelated-key.json"));
    ok(&backup_args(&src, &unrelated, &its_key, &[]), &[]);
    refuse(
        &["--to", &unrelated, "--to-key-file", &its_key],
        "was not made by copying from this one",
    );
    let (copy, copy_key) = (e.p("copy"), e.p("copy-key.json"));
    copy_json(&repo, &key, &copy, &copy_key, &[], &[]);
    refuse(&["--to", &copy, "--to-key-file", &its_key], "--to-key-file");
    refuse(
        &[
            "--to",
            &copy,
            "--to-key-file",
            &copy_key,
            "--snapshot",
            "0123abcd",
        ],
        "no snapshot matches",
    );
    refuse(
        &[
            "--to",
            &copy,
            "--to-key-file",
            &copy_key,
            "--snapshot",
            "newest",
        ],
        "--snapshot",
    );
}

/// A chain of copies through every store kind, each hop under its own key: a directory to S3,
/// S3 to Google Cloud Storage, GCS to Azure, Azure back to a directory. Each target verifies
/// with --read-data and restores bit-exact with its own key; the last one never saw any key
/// but its own.
#[test]
fn copies_between_store_kinds_restore_with_their_own_key() {
    let e = Env::new();
    let work = tempfile::tempdir().unwrap();
    let s3 = support::s3::S3Server::start(&work.path().join("s3"), "backups");
    let gcs = support::gcs::FakeGcs::start(&work.path().join("gcs"), "backups");
    let az = support::azurite::Azurite::start(&work.path().join("az"), "backups");
    let env: Vec<(&str, String)> = s3
        .env()
        .into_iter()
        .chain(gcs.env())
        .chain(az.env())
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (src, key) = (e.p("src"), e.key());
    let repo = e.p("repo");
    ok(&backup_args(&src, &repo, &key, &[]), &env);
    std::fs::write(Path::new(&src).join("collection-9-new.wt"), b"second").unwrap();
    ok(&backup_args(&src, &repo, &key, &[]), &env);
    let ids = snapshot_ids(&repo, &key, &env);
    let hops = [
        "s3://backups/copy".to_string(),
        "gs://backups/copy".to_string(),
        "az://backups/copy".to_string(),
        e.p("last"),
    ];
    let (mut from, mut from_key) = (repo.clone(), key.clone());
    for (n, to) in hops.iter().enumerate() {
        let to_key = e.p(&format!("key-{n}.json"));
        let r = copy_json(&from, &from_key, to, &to_key, &[], &env);
        assert_eq!(
            r["copied"].as_array().unwrap().len(),
            2,
            "{from} to {to}: {r}"
        );
        assert_eq!(snapshot_ids(to, &to_key, &env), ids, "{to}");
        assert_restores(to, &to_key, &src, &e.p(&format!("out-{n}")), &env);
        (from, from_key) = (to.clone(), to_key);
    }
}

/// A copy between two S3 stores that take different credentials: the target's come from the
/// `SNAPCRYPT_TO_` variables alone (what a copy pod is given), never from the source's. With
/// only the source's credentials the target refuses the copy; with its own, the copy is made
/// and restores from the target with the target's credentials and key alone.
#[test]
fn a_copy_writes_the_target_with_the_targets_own_credentials() {
    let e = Env::new();
    let work = tempfile::tempdir().unwrap();
    let primary = support::s3::S3Server::start(&work.path().join("a"), "backups");
    let offsite = support::s3::S3Server::start_with_keys(
        &work.path().join("b"),
        "offsite",
        "offsite-id",
        "offsite-secret",
    );
    let (src, key) = (e.p("src"), e.key());
    let source_env = primary.env();
    let source_env: Vec<(&str, &str)> = source_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ok(
        &backup_args(&src, "s3://backups/rs0", &key, &["--s3-path-style"]),
        &source_env,
    );
    let copy_key = e.p("copy-key.json");
    let endpoint = format!("http://127.0.0.1:{}", offsite.port);
    let to = [
        "--s3-path-style",
        "--to-s3-endpoint",
        &endpoint,
        "--to-s3-path-style",
    ];

    // The source's credentials do not open the target.
    let args = copy_args("s3://backups/rs0", &key, "s3://offsite/rs0", &copy_key, &to);
    let err = fails(&args, &source_env);
    assert!(
        err.contains("--to s3://offsite/rs0") && err.contains("refused access"),
        "{err}"
    );
    assert!(
        files_under(&offsite.root).is_empty(),
        "a refused copy wrote {:?}",
        files_under(&offsite.root)
    );

    // The target's own, under SNAPCRYPT_TO_: copied.
    let mut both = source_env.clone();
    both.push(("SNAPCRYPT_TO_AWS_ACCESS_KEY_ID", "offsite-id"));
    both.push(("SNAPCRYPT_TO_AWS_SECRET_ACCESS_KEY", "offsite-secret"));
    let r = copy_json(
        "s3://backups/rs0",
        &key,
        "s3://offsite/rs0",
        &copy_key,
        &to,
        &both,
    );
    assert_eq!(r["copied"].as_array().map(Vec::len), Some(1), "{r}");

    // The target alone: its endpoint, credentials and key.
    let target_env = offsite.env();
    let target_env: Vec<(&str, &str)> = target_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = e.p("out");
    ok(
        &repo_args(
            &["verify"],
            "s3://offsite/rs0",
            &copy_key,
            &["--read-data", "--s3-path-style"],
        ),
        &target_env,
    );
    ok(
        &restore_args(
            "s3://offsite/rs0",
            &copy_key,
            "latest",
            &out,
            &["--s3-path-style"],
        ),
        &target_env,
    );
    assert_same_tree(Path::new(&src), Path::new(&out));
}

/// The target's own retention (`--keep-*` with `--tag`): snapshots it would forget are never
/// copied, and what it forgets in the target after the copy is pruned there; the source keeps
/// every snapshot.
#[test]
fn a_copy_keeps_what_the_targets_retention_keeps() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    // A new file in `src`, then a backup of the job: its id.
    let backup_more = |i: u64| {
        std::fs::write(
            Path::new(&src).join(format!("collection-{i}-x.wt")),
            support::pseudo_random(i + 20, 1 << 20),
        )
        .unwrap();
        support::backup_json(&src, &repo, &key, &["--tag", "backupjob=db/rs0"], &[])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut ids: Vec<String> = (0..3).map(backup_more).collect();
    let (copy, copy_key) = (e.p("copy"), e.p("copy-key.json"));
    let keep = [
        "--tag",
        "backupjob=db/rs0",
        "--keep-last",
        "2",
        "--delete-after",
        "0s",
    ];
    let r = copy_json(&repo, &key, &copy, &copy_key, &keep, &[]);
    assert_eq!(r["copied"], serde_json::json!([ids[1], ids[2]]), "{r}");
    assert_eq!(r["outside_retention"], 1, "{r}");
    let set = |v: Vec<String>| v.into_iter().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        set(snapshot_ids(&copy, &copy_key, &[])),
        set(ids[1..].to_vec())
    );

    // A fourth snapshot: copied, and the oldest one the copy held forgotten and pruned there.
    ids.push(backup_more(3));
    let r = copy_json(&repo, &key, &copy, &copy_key, &keep, &[]);
    assert_eq!(r["copied"], serde_json::json!([ids[3]]), "{r}");
    assert_eq!(
        set(snapshot_ids(&copy, &copy_key, &[])),
        set(ids[2..].to_vec())
    );
    assert_eq!(
        set(snapshot_ids(&repo, &key, &[])),
        set(ids.clone()),
        "the source keeps every snapshot"
    );
    assert_restores(&copy, &copy_key, &src, &e.p("out"), &[]);
    let err = fails(
        &copy_args(
            &repo,
            &key,
            &copy,
            &copy_key,
            &["--snapshot", "latest", "--keep-last", "1"],
        ),
        &[],
    );
    assert!(err.contains("--snapshot all"), "{err}");
}
