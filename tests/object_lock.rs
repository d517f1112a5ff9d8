//! S3 Object Lock (issue 32) against moto's S3 server, which enforces it (tests/README.md,
//! "Object lock", says which operations): a repository written with `--s3-object-lock` has
//! every write-once object locked and nothing else; a locked version cannot be deleted; prune
//! keeps what is locked, reports it, and extends what kept snapshots need; every snapshot
//! still restores and verifies with --read-data; a copy locks its target too; and a bucket
//! without Object Lock is refused before anything is written. No doubles: moto is the S3
//! server (it checks no signatures, which these tests do not rely on).

mod support;

use std::path::Path;

use support::cli::{backup_args, copy_args, repo_args, restore_args};
use support::moto::Moto;
use support::{Env, assert_same_tree, fails, ok};

const REPO: &str = "s3://vault/rs0";

/// The server's environment as `(&str, &str)` pairs.
fn env_of(moto: &Moto) -> Vec<(&'static str, String)> {
    moto.env()
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Days from now to an RFC 3339 time, rounded down.
fn days_until(t: &str) -> i64 {
    let t: jiff::Timestamp = t.parse().expect("retain-until");
    t.duration_since(jiff::Timestamp::now()).as_hours() / 24
}

#[test]
fn a_locked_repository_keeps_what_is_locked_and_extends_what_is_needed() {
    let e = Env::new();
    let moto = Moto::start();
    moto.admin(&["mkbucket", "vault", "--lock"]);
    let env = env_of(&moto);
    let env = pairs(&env);
    let (src, key) = (e.p("src"), e.key());
    let lock = ["--s3-path-style", "--s3-object-lock", "compliance:2d"];
    let first = support::backup_json(&src, REPO, &key, &lock, &env);

    // Every write-once object is locked for two days in compliance mode; nothing else is.
    let objects = moto.retention("vault", "rs0/");
    assert!(
        objects.iter().any(|(k, _, _)| k.starts_with("rs0/data/")),
        "{objects:?}"
    );
    for (k, mode, until) in &objects {
        let name = k.trim_start_matches("rs0/");
        let write_once = name == "config"
            || ["data/", "index/", "snapshots/", "keys/"]
                .iter()
                .any(|d| name.starts_with(d));
        if write_once {
            assert_eq!(mode, "COMPLIANCE", "{k}");
            assert_eq!(days_until(until), 1, "{k} locked until {until}");
        } else {
            assert_eq!((mode.as_str(), until.as_str()), ("-", "-"), "{k} is locked");
        }
    }
    // No credential deletes a locked version: a pack's, a snapshot's.
    let pack = objects
        .iter()
        .find(|(k, _, _)| k.starts_with("rs0/data/"))
        .unwrap();
    let snap = format!("rs0/snapshots/{}", first["id"].as_str().unwrap());
    for k in [&pack.0, &snap] {
        let said = moto.admin(&["delete-version", "vault", k]);
        assert!(said.starts_with("denied"), "{k}: {said}");
    }

    // A second snapshot, then prune keeping one: the first is locked, so it stays, and the
    // report says so; nothing is deleted.
    std::fs::write(
        Path::new(&src).join("collection-8-more.wt"),
        support::pseudo_random(8, 2 << 20),
    )
    .unwrap();
    ok(&backup_args(&src, REPO, &key, &lock), &env);
    let prune = |more: &[&str]| -> serde_json::Value {
        let mut args = repo_args(&["prune"], REPO, &key, &["--json", "--keep-last", "1"]);
        args.extend_from_slice(&["--delete-after", "0s", "--s3-path-style"]);
        args.extend_from_slice(more);
        let out = ok(&args, &env);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("prune --json: {out:?}: {e}"))
    };
    let r = prune(&["--s3-object-lock", "compliance:2d"]);
    assert_eq!(r["locked_kept"], serde_json::json!([first["id"]]), "{r}");
    assert_eq!(r["forgotten"], serde_json::json!([]), "{r}");
    assert_eq!(r["packs_deleted"], 0, "{r}");
    assert_eq!(
        r["locks_extended"], 0,
        "two days left of two: none due: {r}"
    );

    // A longer period: every needed object has less than half of it left, and is extended.
    let r = prune(&["--s3-object-lock", "compliance:10d"]);
    assert!(r["locks_extended"].as_u64().unwrap() > 0, "{r}");
    let extended = moto.retention("vault", "rs0/data/");
    assert!(
        extended.iter().all(|(_, _, until)| days_until(until) == 9),
        "every pack a kept snapshot needs is locked for 10 days now: {extended:?}"
    );

    // A prune not told of the lock would hide locked snapshots behind delete markers: refused.
    let blind = fails(
        &repo_args(
            &["prune"],
            REPO,
            &key,
            &[
                "--keep-last",
                "1",
                "--delete-after",
                "0s",
                "--s3-path-style",
            ],
        ),
        &env,
    );
    assert!(
        blind.contains("Object Lock enabled, and no object lock was given"),
        "{blind}"
    );
    let listed = ok(
        &repo_args(&["snapshots"], REPO, &key, &["--json", "--s3-path-style"]),
        &env,
    );
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Both snapshots restore bit-exact and verify with --read-data.
    ok(
        &repo_args(&["verify"], REPO, &key, &["--read-data", "--s3-path-style"]),
        &env,
    );
    let out = e.p("out");
    ok(
        &restore_args(REPO, &key, "latest", &out, &["--s3-path-style"]),
        &env,
    );
    assert_same_tree(Path::new(&src), Path::new(&out));
    let old = e.p("old");
    let id = first["id"].as_str().unwrap();
    ok(
        &restore_args(REPO, &key, id, &old, &["--s3-path-style"]),
        &env,
    );
}

/// A copy with --to-s3-object-lock locks what it writes in the target; object lock on a
/// bucket that does not have it is refused before anything is written, naming what to do.
#[test]
fn a_copy_locks_its_target_and_an_unlocked_bucket_is_refused() {
    let e = Env::new();
    let moto = Moto::start();
    moto.admin(&["mkbucket", "vault", "--lock"]);
    moto.admin(&["mkbucket", "plain"]);
    let env = env_of(&moto);
    let env = pairs(&env);
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    ok(&backup_args(&src, &repo, &key, &[]), &[]);

    let copy_key = e.p("copy-key.json");
    let to_lock = ["--to-s3-path-style", "--to-s3-object-lock", "governance:3d"];
    ok(&copy_args(&repo, &key, REPO, &copy_key, &to_lock), &env);
    let locked = moto.retention("vault", "rs0/");
    assert!(!locked.is_empty());
    for (k, mode, until) in &locked {
        if !k.contains("/locks/") {
            assert_eq!(mode, "GOVERNANCE", "{k}");
            assert_eq!(days_until(until), 2, "{k}");
        }
    }

    let refused = fails(
        &backup_args(
            &src,
            "s3://plain/rs0",
            &key,
            &["--s3-path-style", "--s3-object-lock", "compliance:2d"],
        ),
        &env,
    );
    assert!(
        refused.contains("no Object Lock configuration"),
        "{refused}"
    );
    assert!(
        moto.retention("plain", "").is_empty(),
        "a refused backup wrote"
    );
    let refused = fails(
        &copy_args(&repo, &key, "s3://plain/rs1", &copy_key, &to_lock),
        &env,
    );
    assert!(
        refused.contains("--to s3://plain/rs1") && refused.contains("no Object Lock configuration"),
        "{refused}"
    );
    let refused = fails(
        &backup_args(
            &src,
            &e.p("local"),
            &key,
            &["--s3-object-lock", "compliance:2d"],
        ),
        &[],
    );
    assert!(refused.contains("not of a directory"), "{refused}");
}
