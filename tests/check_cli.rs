//! The two checks behind scheduled verification (issue 13), through the CLI as a user (or the
//! operator's agent) runs them: `verify --read-data-subset K/N` reads each pack in exactly one
//! group and finds a damaged pack in its group only; `restore --check` reads every restored
//! file back and fails, naming the file, when what the volume returns is not the snapshot.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::cli::{repo_args, restore_args};
use support::{Env, backup_id, fails};

/// `verify --json` of `repo` with `extra` flags: its report.
fn verify_json(repo: &str, key: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = repo_args(&["verify"], repo, key, &["--json"]);
    args.extend(extra);
    let out = support::run(&args, &[]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify {extra:?}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn read_data_subsets_read_every_pack_once_and_find_damage_in_its_group() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup_id(&src, &repo, &key, &[]);
    // A second, different source adds packs, so that there are several to split.
    std::fs::write(
        e.dir.path().join("src/collection-9.wt"),
        support::pseudo_random(99, 9 << 20),
    )
    .expect("write");
    backup_id(&src, &repo, &key, &[]);
    let all = verify_json(&repo, &key, &["--read-data"]);
    let packs = all["packs"].as_u64().expect("packs");
    assert_eq!(all["packs_read"].as_u64(), Some(packs));
    assert!(packs >= 2, "{all}");

    let n = 3;
    let read: Vec<u64> = (1..=n)
        .map(|k| {
            let r = verify_json(&repo, &key, &["--read-data-subset", &format!("{k}/{n}")]);
            assert_eq!(r["subset"], format!("{k}/{n}"));
            assert_eq!(r["problems"], serde_json::json!([]), "{r}");
            r["packs_read"].as_u64().expect("packs_read")
        })
        .collect();
    assert_eq!(
        read.iter().sum::<u64>(),
        packs,
        "groups {read:?} of {packs} packs"
    );

    // Damage one pack: exactly one group finds it, naming it; the others read clean.
    // The largest pack: one of data chunks (a pack holding file-list pieces is read by every
    // verify, with or without a subset, so every group would name it).
    let data = support::files_under(&Path::new(&repo).join("data"));
    let pack = data
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let mut bytes = std::fs::read(pack).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(pack, bytes).expect("write");
    let name = pack
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let finding: Vec<bool> = (1..=n)
        .map(|k| {
            let r = verify_json(&repo, &key, &["--read-data-subset", &format!("{k}/{n}")]);
            let problems = r["problems"].as_array().expect("problems").clone();
            assert!(
                problems
                    .iter()
                    .all(|p| p.as_str().unwrap_or_default().contains(&name)),
                "{r}"
            );
            !problems.is_empty()
        })
        .collect();
    assert_eq!(finding.iter().filter(|f| **f).count(), 1, "{finding:?}");

    // Bad input names the flag and what is allowed.
    let err = fails(
        &repo_args(&["verify"], &repo, &key, &["--read-data-subset", "4/3"]),
        &[],
    );
    assert!(
        err.contains("--read-data-subset") && err.contains("1 <= K <= N"),
        "{err}"
    );
}

#[test]
fn restore_check_reads_every_file_back_and_names_what_differs() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let id = backup_id(&src, &repo, &key, &[]);
    let restore = |target: &str, env: &[(&str, &str)]| {
        support::run(
            &restore_args(&repo, &key, &id, target, &["--check", "--json"]),
            env,
        )
    };
    let good = e.p("good");
    let out = restore(&good, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(stats["checked"], true, "{stats}");
    support::assert_same_tree(Path::new(&src), Path::new(&good));

    // A volume that returns other bytes than it was given: the check fails naming the file,
    // and the target is marked as a restore that did not finish.
    let bad = e.p("bad");
    let out = restore(
        &bad,
        &[("SNAPCRYPT_FAULT_RESTORE_TAMPER", "collection-0-123.wt")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the changed file went unnoticed: {stderr}"
    );
    assert!(
        stderr.contains("collection-0-123.wt: chunk 0") && stderr.contains("differ from snapshot"),
        "{stderr}"
    );
    assert!(
        Path::new(&bad)
            .join(".snapcrypt-restore-incomplete")
            .exists()
    );
    // Without --check the same restore reports success: the check is what caught it.
    let unchecked = e.p("unchecked");
    support::restore(
        &repo,
        &key,
        &id,
        &unchecked,
        &[("SNAPCRYPT_FAULT_RESTORE_TAMPER", "collection-0-123.wt")],
    );
}

/// A restore into a directory someone else owns (a volume's root is root's; the restore pod
/// runs as uid 999): everything inside is restored and checked, the directory's own mode and
/// times stay. Needs root, to run the restore as another user.
#[test]
fn a_restore_as_another_user_into_a_directory_it_does_not_own() {
    if !support::is_root() {
        eprintln!("skipped: needs root to run the restore as uid 999");
        return;
    }
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let id = backup_id(&src, &repo, &key, &[]);
    // The repository and key are mongod's user's (as on the restore pod's mounts); the
    // target is root's, writable by all, as a fresh volume's root with fsGroup.
    support::chown_mongodb(Path::new(&repo));
    support::chown_mongodb(Path::new(&key));
    let target = e.dir.path().join("volume");
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::set_permissions(e.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "999", "--regid", "999", "--clear-groups"])
        .arg(support::bin())
        .args(repo_args(
            &["restore"],
            &repo,
            &key,
            &["--snapshot", &id, "--check"],
        ))
        .arg("--target")
        .arg(&target)
        .env("HOME", "/tmp")
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("every file read back and matched"),
        "{stderr}"
    );
    let meta = std::fs::metadata(&target).expect("target");
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o777,
        "the root's own mode stays"
    );
    for f in ["collection-0-123.wt", "journal/WiredTigerLog.0000000001"] {
        let a = std::fs::read(Path::new(&src).join(f)).expect("source");
        let b = std::fs::read(target.join(f)).expect("restored");
        assert!(a == b, "{f} differs");
    }
}
