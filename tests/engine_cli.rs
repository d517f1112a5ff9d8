//! The snapshot engine through the CLI, as a user runs it: round trips are bit-exact (contents,
//! modes, mtimes) for a local and an S3 repository; deduplication; verify names damaged and
//! missing objects of every kind; bad input gives one clear line and writes nothing; concurrent
//! backups; prune.

mod support;

use std::fs;
use std::path::Path;

use support::cli::{backup_args, repo_args, restore_args};
use support::{Env, assert_same_tree, backup_json, fails, ok, restore, run};

/// `snapcrypt backup --source SRC --repo REPO --key-file KEY`, required to succeed.
fn backup(src: &str, repo: &str, key: &str) {
    ok(&backup_args(src, repo, key, &[]), &[]);
}

/// `snapcrypt restore --repo REPO --key-file KEY --snapshot SNAP --target TARGET`, required to succeed.

#[test]
fn local_round_trip_is_bit_exact_and_deduplicates() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let first = backup_json(&src, &repo, &key, &["--tag", "env=test"], &[]);
    assert_eq!(first["files"], 8);
    assert!(first["logical_bytes"].as_u64().unwrap() > 4_000_000);
    // The key file was created with mode 0600, outside the repository.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    restore(&repo, &key, "latest", &e.p("out"), &[]);
    assert_same_tree(Path::new(&src), Path::new(&e.p("out")));

    // Nothing changed: the second snapshot adds only its file list.
    let second = backup_json(&src, &repo, &key, &["--force-read"], &[]);
    assert!(
        second["stored_bytes"].as_u64().unwrap() < 20_000,
        "{second}"
    );

    // One 4 KiB page rewritten in place: about one chunk is added.
    let f = Path::new(&src).join("collection-0-123.wt");
    let mut data = fs::read(&f).unwrap();
    data[1_000_000..1_004_096].copy_from_slice(&support::pseudo_random(99, 4096));
    fs::write(&f, &data).unwrap();
    let third = backup_json(&src, &repo, &key, &[], &[]);
    let added = third["stored_bytes"].as_u64().unwrap();
    assert!(
        (16_384..60_000).contains(&added),
        "one changed page added {added} bytes"
    );

    // The first snapshot is still restorable as it was, the new one as it is now.
    let first_id = first["id"].as_str().unwrap();
    restore(&repo, &key, first_id, &e.p("old"), &[]);
    assert_ne!(
        fs::read(e.dir.path().join("old/collection-0-123.wt")).unwrap(),
        data
    );
    restore(&repo, &key, "latest", &e.p("new"), &[]);
    assert_same_tree(Path::new(&src), Path::new(&e.p("new")));

    let list: serde_json::Value = serde_json::from_str(&ok(
        &repo_args(&["snapshots"], &repo, &key, &["--json"]),
        &[],
    ))
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert_eq!(list[0]["tags"]["env"], "test");
    verify_read_data(&repo, &key, &[]);
}

#[test]
fn nothing_in_the_repository_is_plaintext() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    ok(
        &backup_args(&src, &repo, &key, &["--compression", "none"]),
        &[],
    );
    let needle = b"WiredTiger 11.2.0";
    let mut stack = vec![std::path::PathBuf::from(&repo)];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let data = fs::read(&p).unwrap();
                assert!(
                    !data.windows(needle.len()).any(|w| w == needle),
                    "{} holds plaintext",
                    p.display()
                );
                assert!(
                    !String::from_utf8_lossy(&data).contains("collection-0-123"),
                    "{} holds a file name",
                    p.display()
                );
            }
        }
    }
}

/// Each kind of object: (name pattern, how to find one).
fn objects_of_each_kind(repo: &Path) -> Vec<(&'static str, std::path::PathBuf)> {
    let first = |dir: &str| -> std::path::PathBuf {
        let mut stack = vec![repo.join(dir)];
        while let Some(d) = stack.pop() {
            let mut entries: Vec<_> = fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for p in entries {
                if p.is_dir() {
                    stack.push(p);
                } else {
                    return p;
                }
            }
        }
        panic!("no object under {dir}");
    };
    vec![
        ("config", repo.join("config")),
        ("keys/", first("keys")),
        ("index/", first("index")),
        ("data/", first("data")),
        ("snapshots/", first("snapshots")),
    ]
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Damage the object at `p` in one of three ways.
fn damage(p: &Path, how: &str) {
    match how {
        "flip" => {
            let mut d = fs::read(p).unwrap();
            let i = d.len() / 2;
            d[i] ^= 0x01;
            fs::write(p, d).unwrap();
        }
        "truncate" => {
            let d = fs::read(p).unwrap();
            fs::write(p, &d[..d.len() - 7]).unwrap();
        }
        "delete" => fs::remove_file(p).unwrap(),
        _ => unreachable!(),
    }
}

/// For every kind of object and every kind of damage, on a fresh copy of the repository whose
/// objects live in `pristine` (a local repository, or the directory behind an S3 server):
/// verify --read-data fails with one error line naming the object.
fn assert_verify_names_damage(
    pristine: &Path,
    scratch: &Path,
    repo_url: &dyn Fn(&Path) -> String,
    key: &str,
    env: &[(&str, &str)],
) {
    for (kind, object) in objects_of_each_kind(pristine) {
        for how in ["flip", "truncate", "delete"] {
            let copy = scratch.join(format!("r-{}-{how}", kind.trim_end_matches('/')));
            copy_dir(pristine, &copy);
            let rel = object.strip_prefix(pristine).unwrap();
            damage(&copy.join(rel), how);
            let out = run(
                &repo_args(&["verify"], &repo_url(&copy), key, &["--read-data"]),
                env,
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{how} of {} went unnoticed: {stderr}",
                rel.display()
            );
            // The message names the object (a deleted config by the missing repository).
            let name = rel.display().to_string();
            let short = name.rsplit('/').next().unwrap();
            let named = stderr.contains(short)
                || (how == "delete" && kind == "snapshots/" && stderr.contains("file list"))
                || (how == "delete" && kind == "config" && stderr.contains("no repository"));
            assert!(named, "{how} of {name}: message does not name it: {stderr}");
            assert_eq!(
                stderr
                    .lines()
                    .filter(|l| l.starts_with("snapcrypt: error"))
                    .count(),
                1,
                "{stderr}"
            );
        }
    }
}

#[test]
fn verify_names_every_damaged_or_missing_object() {
    let e = Env::new();
    let (src, pristine, key) = (e.p("src"), e.dir.path().join("pristine"), e.key());
    ok(
        &backup_args(&src, &pristine.display().to_string(), &key, &[]),
        &[],
    );
    assert_verify_names_damage(
        &pristine,
        e.dir.path(),
        &|p: &Path| p.display().to_string(),
        &key,
        &[],
    );
}

#[test]
fn bad_input_gives_one_clear_line_and_writes_nothing() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let err = fails(&backup_args(&e.p("missing"), &repo, &key, &[]), &[]);
    assert!(
        err.contains("missing") && err.contains("No such file"),
        "{err}"
    );
    assert!(
        !Path::new(&repo).exists(),
        "a failed backup created the repository"
    );

    let err = fails(&backup_args(&src, &repo, &key, &["--max-files", "5"]), &[]);
    assert!(
        err.contains("holds 8 files")
            && err.contains("--max-files 5")
            && err.contains("nothing was written"),
        "{err}"
    );
    assert!(!Path::new(&repo).exists());

    let err = fails(&backup_args(&src, "ftp://bucket/x", &key, &[]), &[]);
    assert!(err.contains("unknown scheme"), "{err}");
    // An object store without credentials: refused before a key file is made.
    for (repo, says) in [
        ("gs://bucket/x", "no GCS credentials"),
        ("az://container/x", "no Azure credentials"),
    ] {
        let err = fails(&backup_args(&src, repo, &key, &[]), &[]);
        assert!(err.contains(says) && err.lines().count() == 1, "{err}");
        assert!(!Path::new(&key).exists(), "{repo}: a key file was made");
    }

    let err = fails(&backup_args(&src, &repo, &key, &["--tag", "novalue"]), &[]);
    assert!(err.contains("KEY=VALUE"), "{err}");

    backup(&src, &repo, &key);
    let other = e.p("other-key.json");
    ok(&backup_args(&src, &e.p("repo2"), &other, &[]), &[]);
    let err = fails(&repo_args(&["snapshots"], &repo, &other, &[]), &[]);
    assert!(
        err.contains("not known to this key manager") && err.lines().count() == 1,
        "{err}"
    );
    let err = fails(
        &repo_args(&["snapshots"], &repo, &e.p("nope.json"), &[]),
        &[],
    );
    assert!(err.contains("does not exist"), "{err}");
    fs::write(e.p("garbage.json"), "not a key").unwrap();
    let err = fails(
        &repo_args(&["snapshots"], &repo, &e.p("garbage.json"), &[]),
        &[],
    );
    assert!(err.contains("not a snapcrypt key file"), "{err}");
    let err = fails(&repo_args(&["snapshots"], &e.p("nowhere"), &key, &[]), &[]);
    assert!(err.contains("no such directory"), "{err}");
    let err = fails(&restore_args(&repo, &key, "ffff", &e.p("t"), &[]), &[]);
    assert!(err.contains("no snapshot matches"), "{err}");

    // A non-empty target is refused unless --force, and left untouched.
    fs::create_dir_all(e.p("busy")).unwrap();
    fs::write(e.dir.path().join("busy/keep.txt"), "mine").unwrap();
    let err = fails(&restore_args(&repo, &key, "latest", &e.p("busy"), &[]), &[]);
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fs::read_dir(e.p("busy")).unwrap().count(), 1);
    let err = fails(
        &restore_args(&repo, &key, "latest", &e.p("busy"), &["--force"]),
        &[],
    );
    // With --force, what the snapshot does not have is named and nothing is written ...
    assert!(
        err.contains("keep.txt") && err.contains("--delete-extra"),
        "{err}"
    );
    assert_eq!(fs::read_dir(e.p("busy")).unwrap().count(), 1);
    assert_eq!(
        fs::read_to_string(e.dir.path().join("busy/keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn unreadable_source_file_is_refused_before_writing() {
    if support::is_root() {
        // Root reads any file whatever its mode; the check is exercised where tests run as a user.
        eprintln!("skipped: running as root, which can read a mode-000 file");
        return;
    }
    let e = Env::new();
    let f = e.dir.path().join("src/secret.wt");
    fs::write(&f, "x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&f, fs::Permissions::from_mode(0o000)).unwrap();
    let err = fails(&backup_args(&e.p("src"), &e.p("repo"), &e.key(), &[]), &[]);
    assert!(err.contains("secret.wt") && err.contains("denied"), "{err}");
    assert!(!Path::new(&e.p("repo")).exists());
}

#[test]
fn two_backups_at_once_into_a_new_repository_both_succeed() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    // Create the key first so both processes share it.
    ok(&backup_args(&src, &e.p("warmup"), &key, &[]), &[]);
    let spawn = || {
        std::process::Command::new(support::bin())
            .args(backup_args(&src, &repo, &key, &["--force-read"]))
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let ids: Vec<String> = [a, b]
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .collect();
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        let target = e.p(&format!("out-{id}"));
        restore(&repo, &key, id, &target, &[]);
        assert_same_tree(Path::new(&src), Path::new(&target));
    }
    verify_read_data(&repo, &key, &[]);
}

#[test]
fn prune_forgets_by_policy_and_frees_space() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let big = Path::new(&src).join("collection-0-123.wt");
    let mut ids = Vec::new();
    for i in 0..3 {
        fs::write(&big, support::pseudo_random(100 + i, 2 * 1024 * 1024)).unwrap();
        ids.push(
            backup_json(&src, &repo, &key, &[], &[])["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let size = |p: &str| -> u64 {
        walk_files(Path::new(p))
            .iter()
            .map(|f| fs::metadata(f).unwrap().len())
            .sum()
    };
    let before = size(&repo);
    let dry = ok(
        &repo_args(&["prune"], &repo, &key, &["--keep-last", "1", "--dry-run"]),
        &[],
    );
    assert!(dry.contains("would forget"), "{dry}");
    assert_eq!(size(&repo), before, "dry run changed the repository");
    let report: serde_json::Value = serde_json::from_str(&ok(
        &repo_args(&["prune"], &repo, &key, &["--keep-last", "1", "--json"]),
        &[],
    ))
    .unwrap();
    assert_eq!(report["kept"], serde_json::json!([ids[2]]));
    assert_eq!(report["forgotten"].as_array().unwrap().len(), 2);
    // Two-phase deletion: the first pass only marks (the default grace is an hour) ...
    assert_eq!(report["packs_deleted"], 0, "{report}");
    assert!(report["packs_marked"].as_u64().unwrap() > 0, "{report}");
    assert!(size(&repo) + 1_000_000 > before, "deleted before the grace");
    // ... a pass after the grace (here: none) deletes.
    let report = prune_keeping_last_now(&repo, &key);
    assert!(report["packs_deleted"].as_u64().unwrap() > 0, "{report}");
    let after = size(&repo);
    assert!(
        after + 3_000_000 < before,
        "prune freed too little: {before} -> {after}"
    );
    verify_read_data(&repo, &key, &[]);
    restore(&repo, &key, "latest", &e.p("out"), &[]);
    assert_same_tree(Path::new(&src), Path::new(&e.p("out")));
}

/// A pack mostly unused once a snapshot is forgotten is repacked: the blobs a kept snapshot
/// needs are copied into a new pack (found through the pack's index object and the needed
/// bits), the old pack goes, and what is kept verifies and restores exactly. Here a 4 MiB
/// file whose last 3 MiB are rewritten: its first pack is then 1 MiB needed, 3 MiB not.
#[test]
fn prune_repacks_a_mostly_unused_pack_and_keeps_what_is_needed() {
    let e = Env::new();
    let (src, repo, key) = (e.p("one"), e.p("repo"), e.key());
    let file = Path::new(&src).join("collection-0-1.wt");
    fs::create_dir_all(&src).unwrap();
    let mut bytes = support::pseudo_random(1, 4 << 20);
    fs::write(&file, &bytes).unwrap();
    let first = backup_json(&src, &repo, &key, &[], &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    bytes[1 << 20..].copy_from_slice(&support::pseudo_random(2, 3 << 20));
    fs::write(&file, &bytes).unwrap();
    backup(&src, &repo, &key);
    let data_bytes = || -> u64 {
        walk_files(&Path::new(&repo).join("data"))
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    };
    let before = data_bytes();
    assert!(before > 7 << 20, "{before}");
    let report = prune_keeping_last_now(&repo, &key);
    assert_eq!(report["forgotten"], serde_json::json!([first]), "{report}");
    assert_eq!(report["packs_repacked"], 1, "{report}");
    let after = data_bytes();
    assert!(
        after < (4 << 20) + (256 << 10),
        "the 3 MiB no snapshot needs are gone, the 4 MiB kept: {before} -> {after}"
    );
    verify_read_data(&repo, &key, &[]);
    restore(&repo, &key, "latest", &e.p("out"), &[]);
    assert_same_tree(Path::new(&src), Path::new(&e.p("out")));
}

/// `snapcrypt verify --read-data`, required to find the repository sound.
fn verify_read_data(repo: &str, key: &str, env: &[(&str, &str)]) {
    ok(&repo_args(&["verify"], repo, key, &["--read-data"]), env);
}

/// `snapcrypt prune --keep-last 1 --delete-after 0s --json`: its report.
fn prune_keeping_last_now(repo: &str, key: &str) -> serde_json::Value {
    serde_json::from_str(&ok(
        &repo_args(
            &["prune"],
            repo,
            key,
            &["--keep-last", "1", "--delete-after", "0s", "--json"],
        ),
        &[],
    ))
    .unwrap()
}

/// Every file under `dir`.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path())
            } else {
                out.push(e.path())
            }
        }
    }
    out
}

/// A data volume's root on ext4 holds lost+found: not backed up, and a target holding only it
/// counts as empty (a fresh PVC).
#[test]
fn lost_and_found_is_neither_data_nor_content() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let lf = Path::new(&src).join("lost+found");
    fs::create_dir_all(&lf).unwrap();
    fs::write(lf.join("#12345"), b"orphaned inode").unwrap();
    let out = support::run(&backup_args(&src, &repo, &key, &[]), &[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipping lost+found: filesystem bookkeeping, not data"),
        "{stderr}"
    );
    let target = e.p("fresh-volume");
    fs::create_dir_all(Path::new(&target).join("lost+found")).unwrap();
    restore(&repo, &key, "latest", &target, &[]);
    fs::remove_dir_all(&lf).unwrap();
    fs::remove_dir_all(Path::new(&target).join("lost+found")).unwrap();
    assert_same_tree(Path::new(&src), Path::new(&target));
}

/// `agent snapshot` of `src`, tagged job=a, keeping job=a's newest snapshot only, its
/// result line in `log`.
fn agent_keeping_last_of_job_a<'a>(
    src: &'a str,
    repo: &'a str,
    key: &'a str,
    log: &'a str,
) -> [&'a str; 16] {
    [
        "agent",
        "snapshot",
        "--source",
        src,
        "--repo",
        repo,
        "--key-file",
        key,
        "--tag",
        "job=a",
        "--keep-last",
        "1",
        "--prune-tag",
        "job=a",
        "--termination-log",
        log,
    ]
}

/// Retention scoped by tag: `prune --tag` forgets only among the tagged snapshots, and the
/// snapshot agent's retention pass (what a snapshot pod runs after its backup) does the same,
/// reports what it forgot in its result line, and never fails a finished backup.
#[test]
fn retention_scoped_by_tag_in_prune_and_in_the_agent() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let tagged = |tag: &[&str]| {
        let mut extra = vec![];
        for t in tag {
            extra.extend(["--tag", *t]);
        }
        backup_json(&src, &repo, &key, &extra, &[])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a1 = tagged(&["job=a"]);
    let b1 = tagged(&["job=b"]);
    let a2 = tagged(&["job=a"]);
    let free = tagged(&[]);
    let listed = |repo: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&ok(
            &repo_args(&["snapshots"], repo, &key, &["--json"]),
            &[],
        ))
        .unwrap();
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let report: serde_json::Value = serde_json::from_str(&ok(
        &repo_args(
            &["prune"],
            &repo,
            &key,
            &["--keep-last", "1", "--tag", "job=a", "--json"],
        ),
        &[],
    ))
    .unwrap();
    assert_eq!(report["kept"], serde_json::json!([a2]));
    assert_eq!(report["forgotten"], serde_json::json!([a1]));
    assert_eq!(
        listed(&repo),
        sorted(vec![b1.clone(), a2.clone(), free.clone()])
    );

    // The agent: back up, then keep job=a's newest only (the one it just took).
    let agent = |log: &str, env: &[(&str, &str)]| -> serde_json::Value {
        ok(&agent_keeping_last_of_job_a(&src, &repo, &key, log), env);
        serde_json::from_str(fs::read_to_string(log).unwrap().trim()).unwrap()
    };
    let result = agent(&e.p("termination-1"), &[]);
    let a3 = result["id"].as_str().unwrap().to_string();
    assert_eq!(
        result["retention"],
        serde_json::json!({"kept": 1, "forgotten": [a2], "forgotten_total": 1, "bytes_freed": 0})
    );
    assert_eq!(
        listed(&repo),
        sorted(vec![b1.clone(), free.clone(), a3.clone()])
    );
    verify_read_data(&repo, &key, &[]);

    // A retention pass that cannot run (another backup holds a lock) is reported in the result;
    // the backup itself succeeded and is kept.
    support::plant_shared_lock(Path::new(&repo), "busy");
    let result = agent(&e.p("termination-2"), &[("SNAPCRYPT_LOCK_WAIT_SECS", "1")]);
    let error = result["retention"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("busy-host"), "{result}");
    let a4 = result["id"].as_str().unwrap().to_string();
    assert_eq!(listed(&repo), sorted(vec![b1, free, a3, a4]));
}

/// A snapshot pod killed during its retention pass (at its memory limit, say) has already
/// reported its backup as complete: the result line is written before retention starts,
/// saying retention did not finish, so the operator records a complete snapshot rather than
/// a failed pod to run again (each rerun a new backup, killed in the same place).
#[test]
fn an_agent_killed_during_retention_has_reported_its_complete_backup() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup_json(&src, &repo, &key, &["--tag", "job=a"], &[]);
    // Retention waits here for an exclusive lock: the window the kill lands in.
    let busy = support::plant_shared_lock(Path::new(&repo), "busy");
    let log = e.p("termination");
    let mut agent = std::process::Command::new(support::bin())
        .args(agent_keeping_last_of_job_a(&src, &repo, &key, &log))
        .env_remove("SNAPCRYPT_REPO")
        .env("SNAPCRYPT_LOCK_WAIT_SECS", "300")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let read = || -> Option<serde_json::Value> {
        serde_json::from_str(fs::read_to_string(&log).ok()?.trim()).ok()
    };
    support::wait_for(
        "the result line before retention",
        std::time::Duration::from_secs(60),
        || read().is_some(),
    );
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent should still be waiting for its retention lock"
    );
    agent.kill().unwrap(); // SIGKILL, as the kernel's OOM killer
    agent.wait().unwrap();
    let result = read().unwrap();
    let id = result["id"].as_str().unwrap().to_string();
    let error = result["retention"]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("retention did not finish") && error.contains("Sizing agent pods"),
        "{result}"
    );
    assert_eq!(result["retention"]["forgotten_total"], 0, "{result}");
    // The snapshot the line names is complete and restores exactly.
    fs::remove_file(busy).unwrap();
    restore(&repo, &key, &id, &e.p("out"), &[]);
    assert_same_tree(Path::new(&src), Path::new(&e.p("out")));
}

#[test]
fn a_stale_lock_expires_and_a_live_exclusive_lock_blocks() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup(&src, &repo, &key);
    let locks = Path::new(&repo).join("locks");
    fs::create_dir_all(&locks).unwrap();
    // A holder that died long ago: its lock is ignored and removed. Age is the store's (here
    // the file's mtime), never the holder's own clock in the file.
    let stale = format!(
        r#"{{"exclusive":true,"hostname":"gone","pid":1,"refreshed":{}}}"#,
        support::now_secs()
    );
    fs::write(locks.join("dead"), stale).unwrap();
    let hour_ago = filetime::FileTime::from_unix_time(support::now_secs() as i64 - 3600, 0);
    filetime::set_file_mtime(locks.join("dead"), hour_ago).unwrap();
    ok(
        &repo_args(&["prune"], &repo, &key, &["--keep-last", "5"]),
        &[],
    );
    assert!(!locks.join("dead").exists());
    // A live shared lock (a running backup) makes prune give up with a clear message.
    support::plant_shared_lock(Path::new(&repo), "live");
    let err = fails(
        &repo_args(&["prune"], &repo, &key, &["--keep-last", "5"]),
        &[("SNAPCRYPT_LOCK_WAIT_SECS", "1")],
    );
    assert!(
        err.contains("locked by") && err.contains("busy-host"),
        "{err}"
    );
}

#[test]
fn s3_round_trip_and_verify_against_a_real_s3_server() {
    let e = Env::new();
    let server = support::s3::S3Server::start(&e.dir.path().join("s3"), "backups");
    let env_owned = server.env();
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (src, key) = (e.p("src"), e.key());
    let repo = "s3://backups/mongo/rs0";
    let first = backup_json(&src, repo, &key, &[], &env);
    assert_eq!(first["files"], 8);
    restore(repo, &key, "latest", &e.p("out"), &env);
    assert_same_tree(Path::new(&src), Path::new(&e.p("out")));
    verify_read_data(repo, &key, &env);
    // Wrong credentials are refused by the server's signature check, in one line.
    let bad: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| {
            if *k == "AWS_SECRET_ACCESS_KEY" {
                (*k, "wrong")
            } else {
                (*k, *v)
            }
        })
        .collect();
    let err = fails(&repo_args(&["snapshots"], repo, &key, &[]), &bad);
    assert_eq!(err.lines().count(), 1, "{err}");
    // Damage through the server's backing directory: verify names the objects, of every kind.
    let bucket = server.root.join("backups");
    let pristine = bucket.join("mongo/rs0");
    assert_verify_names_damage(
        &pristine,
        &bucket,
        &|p: &Path| {
            format!(
                "s3://backups/{}",
                p.strip_prefix(&bucket).unwrap().display()
            )
        },
        &key,
        &env,
    );
}

/// A file of `size` bytes, sparse but for a distinct 4 KiB page at every `every` bytes.
fn sparse_file(path: &Path, size: u64, every: u64) -> fs::File {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    file.set_len(size).unwrap();
    for (i, at) in (0..size).step_by(every as usize).enumerate() {
        file.write_at(&support::pseudo_random(i as u64 + 1, 4096), at)
            .unwrap();
    }
    file
}

/// The memory design of backup, pinned (performance issue): a backup reads no index and
/// looks up only the chunks that differ from its parent's at the same offset, among a
/// bounded set of chunks it stored lately. A 4 GiB file with a parent costs lookups for what
/// changed, not for its size.
#[test]
fn a_backup_with_a_parent_looks_up_only_the_chunks_that_changed() {
    use std::os::unix::fs::FileExt;
    let e = Env::new();
    let (repo, key) = (e.p("repo"), e.key());
    let src = e.dir.path().join("sparse");
    fs::create_dir(&src).unwrap();
    // 262,144 chunks of 16 KiB: 64 distinct ones, the rest zeros (16 parts in the list).
    let file = sparse_file(&src.join("collection-0-1.wt"), 4 << 30, 64 << 20);
    let s = src.display().to_string();
    let first = backup_json(&s, &repo, &key, &[], &[]);
    // No parent: every chunk is looked up, and the zeros are stored once.
    assert_eq!(first["chunks_looked_up"], 262_144, "{first}");
    let stored = first["stored_bytes"].as_u64().unwrap();
    assert!(stored < 2 << 20, "{first}");

    // Three pages rewritten: three lookups, about three chunks stored.
    for (n, i) in [1u64, 30, 63].into_iter().enumerate() {
        file.write_at(
            &support::pseudo_random(1000 + n as u64, 4096),
            (i << 26) + 8192,
        )
        .unwrap();
    }
    let second = backup_json(&s, &repo, &key, &[], &[]);
    assert_eq!(second["chunks_looked_up"], 3, "{second}");
    // Read again in full (--force-read): nothing differs from the parent.
    let third = backup_json(&s, &repo, &key, &["--force-read"], &[]);
    assert_eq!(third["chunks_looked_up"], 0, "{third}");
    assert!(
        third["stored_bytes"].as_u64().unwrap() < stored,
        "{third} after {first}"
    );
}

/// A file of more than 16,384 chunks is listed in parts; it is restored exactly, and a
/// change in its last part is found through the parent's last part.
#[test]
fn a_file_listed_in_parts_round_trips() {
    use std::os::unix::fs::FileExt;
    let e = Env::new();
    let (repo, key) = (e.p("repo"), e.key());
    let src = e.dir.path().join("parts");
    fs::create_dir(&src).unwrap();
    // 4 KiB chunks: 2 x 16,384 + 3 of them, a distinct page every 1 MiB.
    let file = sparse_file(&src.join("big.wt"), (128 << 20) + 3 * 4096 - 100, 1 << 20);
    let s = src.display().to_string();
    backup_json(&s, &repo, &key, &["--chunk-size", "4096"], &[]);
    let out = e.p("out");
    restore(&repo, &key, "latest", &out, &[]);
    assert_same_tree(&src, Path::new(&out));

    file.write_at(b"changed in the third part", 128 << 20)
        .unwrap();
    let second = backup_json(&s, &repo, &key, &[], &[]);
    assert_eq!(second["chunks_looked_up"], 1, "{second}");
    let out2 = e.p("out2");
    restore(&repo, &key, "latest", &out2, &[]);
    assert_same_tree(&src, Path::new(&out2));
}

/// Every refusal of a restore target names what lets the restore go on: this command's flags,
/// or, for the agent in a Restore's pod (`--fixes-as-restore-spec`, which the operator passes),
/// the Restore's fields and no flag (before, the Restore controller rewrote two of the messages
/// by string and missed a third: see engine::restore::target's unit test).
#[test]
fn refusals_name_the_flags_or_the_restore_fields() {
    let e = Env::new();
    fs::create_dir_all(e.dir.path().join("src/db")).unwrap();
    fs::write(e.dir.path().join("src/db/x.wt"), "data").unwrap();
    let (repo, key) = (e.p("repo"), e.key());
    ok(&backup_args(&e.p("src"), &repo, &key, &[]), &[]);
    let spec = ["--fixes-as-restore-spec"];
    let restore_into = |target: &str, more: &[&str]| {
        let flags = fails(&restore_args(&repo, &key, "latest", target, more), &[]);
        let mut with_spec = more.to_vec();
        with_spec.extend(spec);
        let fields = fails(
            &restore_args(&repo, &key, "latest", target, &with_spec),
            &[],
        );
        (flags, fields)
    };
    // Not empty, without force.
    fs::create_dir_all(e.dir.path().join("busy")).unwrap();
    fs::write(e.dir.path().join("busy/keep.txt"), "mine").unwrap();
    let (flags, fields) = restore_into(&e.p("busy"), &[]);
    assert!(
        flags.contains("(use --force to restore into it anyway)"),
        "{flags}"
    );
    assert!(
        fields.contains("(set spec.target.force to restore into it anyway)")
            && !fields.contains("--"),
        "{fields}"
    );
    // Holding what the snapshot does not have, with force.
    let (flags, fields) = restore_into(&e.p("busy"), &["--force"]);
    assert!(
        flags.contains("or pass --delete-extra to have the restore remove them"),
        "{flags}"
    );
    assert!(
        fields.contains(
            "or set spec.target.deleteExtra (with force) to have the restore remove them"
        ) && !fields.contains("--"),
        "{fields}"
    );
    // A directory where the snapshot has a file, with force: what is extra is named.
    fs::create_dir_all(e.dir.path().join("clash/db/x.wt")).unwrap();
    let (flags, fields) = restore_into(&e.p("clash"), &["--force"]);
    assert!(
        flags.contains("(db/x.wt)") && flags.contains("pass --delete-extra"),
        "{flags}"
    );
    assert!(
        fields.contains("(db/x.wt)")
            && fields.contains("set spec.target.deleteExtra (with force)")
            && !fields.contains("--"),
        "{fields}"
    );
    assert_eq!(
        fs::read_dir(e.dir.path().join("clash/db/x.wt"))
            .unwrap()
            .count(),
        0
    );
}
