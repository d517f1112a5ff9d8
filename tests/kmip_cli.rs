//! Keys in a real KMIP server (PyKMIP 0.11) through the CLI, as a user runs it: back up under a
//! KMIP master key, rotate twice (rewrapping data keys, never rewriting data), back up again,
//! restore the oldest and newest snapshots bit-exact, `key status` lists all three keys with
//! their dependants; migrate a local-key repository to KMIP and restore without the key file;
//! a revoked master key refuses new backups and writes nothing.

#[path = "support/kmip.rs"]
mod pykmip;
mod support;

use std::fs;
use std::path::Path;

use pykmip::with;
use support::cli::{backup_args, repo_args};
use support::{assert_same_tree, fails, make_source, ok};

fn status(repo: &str, kmip: &[String]) -> Vec<serde_json::Value> {
    let out = ok(
        &with(&["key", "status", "--repo", repo, "--json"], kmip),
        &[],
    );
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn backup_rotate_twice_restore_oldest_and_newest() {
    let server = pykmip::PyKmip::start();
    let kmip = server.cli_flags();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let (s, repo) = (
        src.display().to_string(),
        dir.path().join("repo").display().to_string(),
    );

    let first = ok(
        &with(&["backup", "--source", &s, "--repo", &repo], &kmip),
        &[],
    )
    .trim()
    .to_string();
    let oldest = dir.path().join("oldest-src");
    fs::rename(&src, &oldest).unwrap();
    make_source(&src);
    fs::write(
        src.join("collection-0-123.wt"),
        support::pseudo_random(42, 1_000_000),
    )
    .unwrap();

    let data_before: Vec<_> = fs::read_dir(Path::new(&repo).join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let k2 = ok(&with(&["key", "rotate", "--repo", &repo], &kmip), &[])
        .trim()
        .to_string();
    let k3 = ok(&with(&["key", "rotate", "--repo", &repo], &kmip), &[])
        .trim()
        .to_string();
    assert_ne!(k2, k3);
    // Rotation rewrote no data object.
    let data_after: Vec<_> = fs::read_dir(Path::new(&repo).join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(data_before, data_after);

    let newest = ok(
        &with(&["backup", "--source", &s, "--repo", &repo], &kmip),
        &[],
    )
    .trim()
    .to_string();
    let out_old = dir.path().join("out-old").display().to_string();
    let out_new = dir.path().join("out-new").display().to_string();
    ok(
        &with(
            &[
                "restore",
                "--repo",
                &repo,
                "--snapshot",
                &first,
                "--target",
                &out_old,
            ],
            &kmip,
        ),
        &[],
    );
    ok(
        &with(
            &[
                "restore",
                "--repo",
                &repo,
                "--snapshot",
                &newest,
                "--target",
                &out_new,
            ],
            &kmip,
        ),
        &[],
    );
    assert_same_tree(&oldest, Path::new(&out_old));
    assert_same_tree(&src, Path::new(&out_new));

    let keys = status(&repo, &kmip);
    assert_eq!(keys.len(), 3, "{keys:?}");
    let by_id = |id: &str| {
        keys.iter()
            .find(|k| k["master_key_id"] == id)
            .unwrap_or_else(|| panic!("no key {id}: {keys:?}"))
    };
    // Both snapshots now depend on the newest key only; the two older keys are superseded.
    let newest_key = by_id(&k3);
    assert_eq!(
        newest_key["snapshots"].as_array().unwrap().len(),
        2,
        "{newest_key}"
    );
    assert!(
        newest_key["state"].as_str().unwrap().contains("in use"),
        "{newest_key}"
    );
    for k in keys.iter().filter(|k| k["master_key_id"] != k3.as_str()) {
        assert_eq!(k["snapshots"].as_array().unwrap().len(), 0, "{k}");
        assert!(
            k["state"].as_str().unwrap().contains("Active"),
            "an old key was revoked or destroyed: {k}"
        );
    }
    ok(
        &with(&["verify", "--repo", &repo, "--read-data"], &kmip),
        &[],
    );
}

#[test]
fn migrate_a_local_key_repository_to_kmip() {
    let server = pykmip::PyKmip::start();
    let kmip = server.cli_flags();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let (s, repo, key) = (
        src.display().to_string(),
        dir.path().join("repo").display().to_string(),
        dir.path().join("key.json").display().to_string(),
    );
    ok(&backup_args(&s, &repo, &key, &[]), &[]);
    ok(
        &with(
            &["key", "migrate", "--repo", &repo, "--from-key-file", &key],
            &kmip,
        ),
        &[],
    );
    fs::remove_file(&key).unwrap();
    let out = dir.path().join("out").display().to_string();
    ok(
        &with(
            &[
                "restore",
                "--repo",
                &repo,
                "--snapshot",
                "latest",
                "--target",
                &out,
            ],
            &kmip,
        ),
        &[],
    );
    assert_same_tree(&src, Path::new(&out));
    let keys = status(&repo, &kmip);
    assert!(
        keys.iter()
            .any(|k| k["kms"] == "local" && k["snapshots"].as_array().unwrap().is_empty()),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k["kms"] == "kmip" && k["snapshots"].as_array().unwrap().len() == 1),
        "{keys:?}"
    );
    // The key file is no longer needed: without it and without KMIP, nothing opens.
    let err = fails(&repo_args(&["snapshots"], &repo, &key, &[]), &[]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn a_revoked_master_key_refuses_new_backups_and_writes_nothing() {
    let server = pykmip::PyKmip::start();
    let kmip = server.cli_flags();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let (s, repo) = (
        src.display().to_string(),
        dir.path().join("repo").display().to_string(),
    );
    ok(
        &with(&["backup", "--source", &s, "--repo", &repo], &kmip),
        &[],
    );
    let keys = status(&repo, &kmip);
    let id = keys[0]["master_key_id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = snapcrypt::kms::kmip::KmipClient::new(server.config()).unwrap();
        client
            .revoke(
                &id,
                snapcrypt::kms::kmip::RevocationReason::CessationOfOperation,
                Some("test"),
            )
            .await
            .unwrap();
    });
    let count = |d: &str| {
        fs::read_dir(Path::new(&repo).join(d))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let before = (count("data"), count("index"), count("snapshots"));
    let mut flags = kmip.clone();
    flags.extend(["--kmip-key-id".to_string(), id.clone()]);
    let err = fails(
        &with(&["backup", "--source", &s, "--repo", &repo], &flags),
        &[],
    );
    assert!(err.contains(&id) && err.contains("not Active"), "{err}");
    assert_eq!(before, (count("data"), count("index"), count("snapshots")));
}

/// What a KmipServer rotation asks of each repository: the next backup under the new key,
/// with --rewrap, moves the older data keys under it; without --rewrap, old snapshots keep
/// depending on the old key and new data gets a data key of its own.
#[test]
fn the_next_backup_rewraps_after_a_server_side_rotation() {
    let server = pykmip::PyKmip::start();
    let kmip = server.cli_flags();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let s = src.display().to_string();
    for (repo, rewrap) in [("plain", false), ("rewrapped", true)] {
        let repo = dir.path().join(repo).display().to_string();
        let first = ok(
            &with(&["backup", "--source", &s, "--repo", &repo], &kmip),
            &[],
        )
        .trim()
        .to_string();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let new_key = rt.block_on(async {
            let client = snapcrypt::kms::kmip::KmipClient::new(server.config()).unwrap();
            client
                .create_master_key(&format!("rotated-{rewrap}"))
                .await
                .unwrap()
        });
        let mut flags = kmip.clone();
        flags.extend(["--kmip-key-id".to_string(), new_key.clone()]);
        let mut args = vec!["backup", "--source", &s, "--repo", &repo];
        if rewrap {
            args.push("--rewrap");
        }
        ok(&with(&args, &flags), &[]);
        let keys = status(&repo, &flags);
        let on = |id: &str| {
            keys.iter()
                .find(|k| k["master_key_id"] == id)
                .map(|k| {
                    k["snapshots"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == first.as_str())
                })
                .unwrap_or(false)
        };
        assert!(on(&new_key) == rewrap, "rewrap={rewrap}: {keys:?}");
        let out = dir
            .path()
            .join(format!("out-{rewrap}"))
            .display()
            .to_string();
        ok(
            &with(
                &[
                    "restore",
                    "--repo",
                    &repo,
                    "--snapshot",
                    &first,
                    "--target",
                    &out,
                ],
                &flags,
            ),
            &[],
        );
        assert_same_tree(&src, Path::new(&out));
    }
}

/// `copy` into a repository whose master key is on a KMIP server (the `--to-kmip-*` flags,
/// issue 32): a local-key repository's snapshot copied there restores with the KMIP flags
/// alone, and the source's key file does not open the copy.
#[test]
fn a_copy_under_a_kmip_master_key_restores_with_kmip_alone() {
    let server = pykmip::PyKmip::start();
    let kmip = server.cli_flags();
    let to_kmip: Vec<String> = kmip
        .chunks(2)
        .flat_map(|f| [f[0].replacen("--kmip-", "--to-kmip-", 1), f[1].clone()])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let p = |name: &str| dir.path().join(name).display().to_string();
    let (s, repo, key, copy) = (p("src"), p("repo"), p("key.json"), p("copy"));
    ok(&backup_args(&s, &repo, &key, &[]), &[]);
    let out = ok(
        &with(
            &[
                "copy",
                "--from",
                &repo,
                "--key-file",
                &key,
                "--to",
                &copy,
                "--json",
            ],
            &to_kmip,
        ),
        &[],
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        report["copied"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(report["created"], true, "{report}");
    let target = p("out");
    ok(
        &with(
            &[
                "restore",
                "--repo",
                &copy,
                "--snapshot",
                "latest",
                "--target",
                &target,
            ],
            &kmip,
        ),
        &[],
    );
    assert_same_tree(&src, Path::new(&target));
    let err = fails(&repo_args(&["snapshots"], &copy, &key, &[]), &[]);
    assert!(err.contains("kmip"), "{err}");
}
