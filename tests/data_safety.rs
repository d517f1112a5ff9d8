//! The data-safety issue's items, each as a user (or an attacker) would meet it, through the
//! CLI and the agent; and a stress run of backups, prunes and restores against one repository
//! with lock refreshes delayed past their expiry. Items tested at unit level are named in
//! tests/README.md (engine::backend, engine::repo, engine::restore, engine::lock,
//! controller::backup_job::validate, tests/api_schema.rs).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::cli::{backup_args, repo_args, restore_args};
use support::{
    Env, assert_same_tree, backup_id, describe, fails, make_source, ok, run, snapshot_ids,
};

/// Item 1: a dbPath that climbs out of the data volume never makes the agent read the pod's
/// own files (the key file, the KMIP client key).
#[test]
fn item01_agent_refuses_a_source_outside_its_mount() {
    let e = Env::new();
    let volume = e.dir.path().join("volume");
    fs::create_dir_all(volume.join("db")).unwrap();
    fs::create_dir_all(e.dir.path().join("etc/snapcrypt")).unwrap();
    fs::write(e.dir.path().join("etc/snapcrypt/key.json"), "secret").unwrap();
    let climbing = format!("{}/db/../../etc/snapcrypt", volume.display());
    let log = e.p("termination-log");
    let err = fails(
        &[
            "agent",
            "snapshot",
            "--source",
            &climbing,
            "--source-within",
            &volume.display().to_string(),
            "--repo",
            &e.p("repo"),
            "--key-file",
            &e.key(),
            "--termination-log",
            &log,
        ],
        &[],
    );
    assert!(err.contains("outside the data volume"), "{err}");
    assert!(
        fs::read_to_string(&log)
            .unwrap()
            .contains("outside the data volume")
    );
    assert!(!Path::new(&e.p("repo")).join("snapshots").exists());
}

/// Item 2: a backup that cannot be sure of its lock (its refreshes stalled past the expiry, or
/// another process removed it as stale) writes no snapshot.
#[test]
fn item02_a_backup_that_lost_its_lock_writes_no_snapshot() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    let first = backup_id(&src, &repo, &key, &[]);

    // Refreshes stall 10 s while the backup stalls 3 s before its commit; locks expire at 2 s.
    let err = fails(
        &backup_args(&src, &repo, &key, &[]),
        &[
            ("SNAPCRYPT_LOCK_STALE_SECS", "2"),
            ("SNAPCRYPT_FAULT_LOCK_REFRESH_DELAY_SECS", "10"),
            ("SNAPCRYPT_FAULT_BACKUP_STALL_SECS", "3"),
        ],
    );
    assert!(
        err.contains("lost the repository lock") && err.contains("not refreshed"),
        "{err}"
    );
    assert_eq!(snapshot_ids(&repo, &key, &[]), vec![first.clone()]);

    // Another process removes the lock as stale while the backup stalls: the holder notices at
    // its next refresh and never recreates it.
    fs::write(Path::new(&src).join("new.wt"), b"new data").unwrap();
    let locks = Path::new(&repo).join("locks");
    let child = Command::new(support::bin())
        .args(backup_args(&src, &repo, &key, &[]))
        .env("SNAPCRYPT_LOCK_STALE_SECS", "4")
        .env("SNAPCRYPT_FAULT_BACKUP_STALL_SECS", "4")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lock_mtime = || -> Option<std::time::SystemTime> {
        let l = fs::read_dir(&locks).ok()?.next()?.ok()?;
        l.metadata().ok()?.modified().ok()
    };
    let mut seen = None;
    // Taken, and refreshed once: the holder is past taking it and refreshing.
    support::wait_for(
        "the backup's lock refreshed",
        Duration::from_secs(30),
        || match (seen, lock_mtime()) {
            (None, now) => {
                seen = now;
                false
            }
            (Some(a), Some(b)) => a != b,
            _ => false,
        },
    );
    for l in fs::read_dir(&locks).unwrap() {
        fs::remove_file(l.unwrap().path()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the backup succeeded without its lock"
    );
    assert!(err.contains("removed it as stale"), "{err}");
    assert_eq!(snapshot_ids(&repo, &key, &[]), vec![first]);
    assert_eq!(fs::read_dir(&locks).unwrap().count(), 0, "lock recreated");
    // What the failed backups wrote is garbage that prune removes; then all verifies.
    ok(
        &repo_args(&["prune"], &repo, &key, &["--delete-after", "0s"]),
        &[],
    );
    ok(&repo_args(&["verify"], &repo, &key, &["--read-data"]), &[]);
}

/// Item 3: a planted symlink in a --force target (a file or a directory of the snapshot) is
/// replaced, never written through.
#[test]
fn item03_restore_never_writes_through_a_planted_link() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup_id(&src, &repo, &key, &[]);
    let victim = e.dir.path().join("victim");
    fs::write(&victim, "root:x:0:0").unwrap();
    let victim_dir = e.dir.path().join("victim-dir");
    fs::create_dir_all(&victim_dir).unwrap();
    let target = e.dir.path().join("target");
    fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&victim, target.join("WiredTiger")).unwrap();
    std::os::unix::fs::symlink(&victim_dir, target.join("journal")).unwrap();
    let t = target.display().to_string();
    let mut args = restore_args(&repo, &key, "latest", &t, &[]);
    args.push("--force");
    ok(&args, &[]);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root:x:0:0");
    assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 0);
    assert_same_tree(Path::new(&src), &target);
}

/// Item 4: restore and verify hold a shared lock, so a prune (exclusive) cannot run under
/// them; here a live exclusive lock makes them wait and give up, naming it.
#[test]
fn item04_restore_and_verify_take_a_lock() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup_id(&src, &repo, &key, &[]);
    let locks = Path::new(&repo).join("locks");
    fs::create_dir_all(&locks).unwrap();
    fs::write(
        locks.join("pruning"),
        r#"{"exclusive":true,"hostname":"prune-host","pid":7,"refreshed":0}"#,
    )
    .unwrap();
    let wait = [("SNAPCRYPT_LOCK_WAIT_SECS", "1")];
    let out = e.p("out");
    let err = fails(&restore_args(&repo, &key, "latest", &out, &[]), &wait);
    assert!(
        err.contains("locked by an exclusive lock") && err.contains("prune-host"),
        "{err}"
    );
    let err = fails(&repo_args(&["verify"], &repo, &key, &[]), &wait);
    assert!(err.contains("prune-host"), "{err}");
    fs::remove_file(locks.join("pruning")).unwrap();
    ok(&restore_args(&repo, &key, "latest", &out, &[]), &[]);
    assert_eq!(
        fs::read_dir(&locks).unwrap().count(),
        0,
        "lock not released"
    );
}

/// One traced event of a process.
#[derive(Debug)]
enum Traced {
    Fsync(String),
    Rename(String, String),
}

/// Run snapcrypt under strace, returning the fsync and rename calls in order.
fn traced(args: &[&str], log: &Path) -> Vec<Traced> {
    let status = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "4096", "-o"])
        .arg(log)
        .args([
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat",
        ])
        .arg(support::bin())
        .args(args)
        .status()
        .expect("strace (installed by .ci/install-deps.sh)");
    assert!(status.success(), "snapcrypt {args:?} under strace failed");
    let fsync = regex_lite_fsync;
    let mut out = Vec::new();
    for line in fs::read_to_string(log).unwrap().lines() {
        if let Some(p) = fsync(line) {
            out.push(Traced::Fsync(p));
        } else if let Some((a, b)) = rename_paths(line) {
            out.push(Traced::Rename(a, b));
        }
    }
    out
}

/// `fsync(9</path>)` or `fdatasync(...)`: the path.
fn regex_lite_fsync(line: &str) -> Option<String> {
    let i = line.find("fsync(").or_else(|| line.find("fdatasync("))?;
    let rest = &line[i..];
    let open = rest.find('<')?;
    let close = rest[open..].find('>')?;
    Some(rest[open + 1..open + close].to_string())
}

/// The two quoted paths of a rename or link call.
fn rename_paths(line: &str) -> Option<(String, String)> {
    if !["rename", "link"].iter().any(|c| line.contains(c)) {
        return None;
    }
    let quoted: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
    match quoted[..] {
        [a, b, ..] => Some((a.to_string(), b.to_string())),
        _ => None,
    }
}

/// Item 6: in a local (PVC) repository every pack, index and key object is synced, renamed
/// into place and its directory synced before the snapshot object is written; the snapshot
/// object likewise; and every restored file is synced before the restore reports success.
#[test]
fn item06_local_repository_and_restore_are_synced() {
    let e = Env::new();
    let (src, key) = (e.p("src"), e.key());
    let repo = fs::canonicalize(e.dir.path())
        .unwrap()
        .join("repo")
        .display()
        .to_string();
    let events = traced(
        &backup_args(&src, &repo, &key, &[]),
        &e.dir.path().join("backup.strace"),
    );
    let synced_before = |path: &str, before: usize| {
        events[..before]
            .iter()
            .any(|t| matches!(t, Traced::Fsync(p) if p == path))
    };
    let snap_at = events
        .iter()
        .position(
            |t| matches!(t, Traced::Rename(_, to) if to.starts_with(&format!("{repo}/snapshots/"))),
        )
        .expect("the snapshot object is renamed into place");
    for dir in ["data", "index", "keys"] {
        let mut objects = Vec::new();
        let mut stack = vec![PathBuf::from(&repo).join(dir)];
        while let Some(d) = stack.pop() {
            for f in fs::read_dir(d).unwrap() {
                let p = f.unwrap().path();
                if p.is_dir() {
                    stack.push(p)
                } else {
                    objects.push(p.display().to_string())
                }
            }
        }
        assert!(!objects.is_empty(), "no {dir} objects");
        for obj in objects {
            let at = events[..snap_at]
                .iter()
                .position(|t| matches!(t, Traced::Rename(_, to) if *to == obj))
                .unwrap_or_else(|| panic!("{obj} was not moved into place before the snapshot"));
            let Traced::Rename(from, _) = &events[at] else {
                unreachable!()
            };
            assert!(
                synced_before(from, at),
                "{obj}: not synced before its rename"
            );
            let parent = Path::new(&obj).parent().unwrap().display().to_string();
            assert!(
                events[at..snap_at]
                    .iter()
                    .any(|t| matches!(t, Traced::Fsync(p) if *p == parent)),
                "{obj}: its directory was not synced before the snapshot was written"
            );
        }
    }
    let Traced::Rename(from, _) = &events[snap_at] else {
        unreachable!()
    };
    assert!(synced_before(from, snap_at), "snapshot object not synced");
    assert!(
        events[snap_at..]
            .iter()
            .any(|t| matches!(t, Traced::Fsync(p) if *p == format!("{repo}/snapshots"))),
        "snapshots/ not synced"
    );

    let target = fs::canonicalize(e.dir.path()).unwrap().join("out");
    let t = target.display().to_string();
    let events = traced(
        &restore_args(&repo, &key, "latest", &t, &[]),
        &e.dir.path().join("restore.strace"),
    );
    for (rel, desc) in describe(Path::new(&src)) {
        if desc.starts_with("file") {
            let p = format!("{t}/{rel}");
            assert!(
                events
                    .iter()
                    .any(|ev| matches!(ev, Traced::Fsync(x) if *x == p)),
                "restored {rel} was not synced"
            );
        }
    }
}

/// Item 7: a file swapped for a link between the scan and the read is never followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item07_backup_never_follows_a_file_swapped_for_a_link() {
    use snapcrypt::engine::backend::{Backend, Location, StoreOptions};
    use snapcrypt::engine::backup::{BackupOptions, backup, scan};
    use snapcrypt::engine::progress::Progress;
    use snapcrypt::engine::repo::{DEFAULT_CHUNK_SIZE, Repository};
    use snapcrypt::kms::local::LocalKeyManager;

    let e = Env::new();
    let src = e.dir.path().join("src");
    let secret = e.dir.path().join("kmip-client.key");
    fs::write(&secret, "-----BEGIN EC PRIVATE KEY-----").unwrap();
    let scanned = scan(&src, None, 100_000).unwrap();
    fs::remove_file(src.join("WiredTiger")).unwrap();
    std::os::unix::fs::symlink(&secret, src.join("WiredTiger")).unwrap();

    let km = LocalKeyManager::create(Path::new(&e.key())).unwrap();
    let backend = Backend::open(
        &Location::Local(e.dir.path().join("repo")),
        &StoreOptions::default(),
        true,
    )
    .unwrap();
    let (mut repo, _) = Repository::open_or_init(backend, &km, DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    let err = backup(
        &mut repo,
        &km,
        scanned,
        BackupOptions::default(),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("WiredTiger") && err.contains("symbolic link after the scan"),
        "{err}"
    );
    assert!(repo.snapshots().await.unwrap().is_empty());
}

/// Item 11: a backup never deduplicates against an index entry whose pack is gone.
#[test]
fn item11_backup_does_not_reuse_chunks_of_a_lost_pack() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup_id(&src, &repo, &key, &[]);
    // Lose every pack (a partial bucket restore, a hand-made mistake).
    fs::remove_dir_all(Path::new(&repo).join("data")).unwrap();
    let second = backup_id(&src, &repo, &key, &[]);
    // verify still names the lost packs (the first snapshot is damaged), but nothing of the
    // second snapshot.
    let err = fails(
        &repo_args(
            &["verify"],
            &repo,
            &key,
            &["--snapshot", &second, "--read-data"],
        ),
        &[],
    );
    assert!(err.contains("is missing"), "{err}");
    assert!(!err.contains(&format!("snapshot {second}")), "{err}");
    let out = e.p("out");
    ok(&restore_args(&repo, &key, "latest", &out, &[]), &[]);
    assert_same_tree(Path::new(&src), Path::new(&out));
}

/// Item 12: `restore --force` never leaves files the snapshot does not have beside restored
/// ones: it refuses and names them, or with --delete-extra removes them.
#[test]
fn item12_restore_force_leaves_no_extra_files() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup_id(&src, &repo, &key, &[]);
    let target = e.dir.path().join("dbpath");
    make_source(&target);
    fs::write(
        target.join("journal/WiredTigerLog.0000000007"),
        "old journal",
    )
    .unwrap();
    fs::write(target.join("collection-9-999.wt"), "old collection").unwrap();
    let t = target.display().to_string();
    let mut args = restore_args(&repo, &key, "latest", &t, &[]);
    args.push("--force");
    let err = fails(&args, &[]);
    assert!(
        err.contains("2 entries the snapshot does not have")
            && err.contains("collection-9-999.wt")
            && err.contains("journal/WiredTigerLog.0000000007"),
        "{err}"
    );
    assert!(target.join("collection-9-999.wt").exists(), "{err}");
    args.push("--delete-extra");
    ok(&args, &[]);
    assert_same_tree(Path::new(&src), &target);
}

/// A progress report that cannot reach the API server is dropped after a short timeout; the
/// backup goes on and the result is in the termination message.
#[test]
fn progress_to_an_unreachable_api_server_never_holds_up_a_backup() {
    let e = Env::new();
    // A server that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let kubeconfig = e.dir.path().join("kubeconfig");
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let log = e.p("termination-log");
    ok(&["key", "new", "--out", &e.key()], &[]);
    let mut child = Command::new(support::bin())
        .args([
            "agent",
            "snapshot",
            "--snapshot",
            "rs0-1",
            "--namespace",
            "db",
            "--progress-interval",
            "0.2",
            "--source",
            &e.p("src"),
            "--repo",
            &e.p("repo"),
            "--key-file",
            &e.key(),
            "--termination-log",
            &log,
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the agent was still waiting on its progress reports after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("report dropped"), "{err}");
    let result: serde_json::Value =
        serde_json::from_str(fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(result["files"], 8, "{result}");
    drop(silent);
}

/// An S3 repository with no credentials says what to set.
#[test]
fn s3_without_credentials_says_what_to_set() {
    let e = Env::new();
    ok(&["key", "new", "--out", &e.key()], &[]);
    let mut cmd = Command::new(support::bin());
    cmd.args(repo_args(&["snapshots"], "s3://backups/rs0", &e.key(), &[]));
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("SNAPCRYPT_S3") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the job's credentialsSecret"
        ),
        "{err}"
    );
}

/// A key file others can read gets a warning; creating one never changes the mode of a
/// directory that already exists (only the ones it creates are private).
#[test]
fn key_file_modes() {
    let e = Env::new();
    let shared = e.dir.path().join("shared");
    fs::create_dir_all(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    let key = shared.join("new/key.json");
    ok(&["key", "new", "--out", &key.display().to_string()], &[]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&shared), 0o755, "an existing directory's mode changed");
    assert_eq!(mode(&shared.join("new")), 0o700);
    assert_eq!(mode(&key), 0o600);
    let k = key.display().to_string();
    let (src, repo) = (e.p("src"), e.p("repo"));
    let out = run(&backup_args(&src, &repo, &k, &[]), &[]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&repo_args(&["snapshots"], &repo, &k, &[]), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: key file") && err.contains("mode 644"),
        "{err}"
    );
}

/// Backups, prunes (deleting at once: no grace) and restores against one repository for a
/// bounded time, with locks expiring after 2 s and some holders' refreshes delayed past that
/// by the fault hook. Every snapshot reported done and not forgotten by a prune verifies with
/// `verify --read-data`; every restore is bit-exact or failed loudly.
#[test]
fn stress_backups_prunes_and_restores_with_delayed_lock_refreshes() {
    let e = Env::new();
    let stress = Stress {
        e: &e,
        repo: e.p("repo"),
        key: e.key(),
        stop_at: Instant::now() + Duration::from_secs(40),
        expected: Mutex::default(),
        forgotten: Mutex::default(),
        counts: Mutex::default(),
    };
    let first = backup_id(&e.p("src"), &stress.repo, &stress.key, &[]);
    stress
        .expected
        .lock()
        .unwrap()
        .insert(first, describe(Path::new(&e.p("src"))));

    std::thread::scope(|s| {
        s.spawn(|| stress.backups());
        s.spawn(|| stress.prunes());
        s.spawn(|| stress.restores());
    });
    stress.check_the_repository();
}

/// What the stress run's threads share: the repository, what each reported snapshot holds,
/// the snapshots prunes forgot, how each kind of run ended, and when to stop.
struct Stress<'a> {
    e: &'a Env,
    repo: String,
    key: String,
    stop_at: Instant,
    expected: Mutex<HashMap<String, BTreeMap<String, String>>>,
    forgotten: Mutex<Vec<String>>,
    counts: Mutex<BTreeMap<&'static str, u32>>,
}

impl Stress<'_> {
    /// Locks expiring after 2 s, waited for 4 s, and `extra`.
    fn env(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let base = [
            ("SNAPCRYPT_LOCK_STALE_SECS", "2"),
            ("SNAPCRYPT_LOCK_WAIT_SECS", "4"),
        ];
        base.iter().chain(extra).copied().collect()
    }

    fn count(&self, what: &'static str) {
        *self.counts.lock().unwrap().entry(what).or_default() += 1;
    }

    /// Backups: each from its own copy of a changing source; every third one's refreshes
    /// stall past the expiry while the backup stalls before its commit.
    fn backups(&self) {
        let (e, repo, key) = (self.e, &self.repo, &self.key);
        let mut round = 0u64;
        while Instant::now() < self.stop_at {
            round += 1;
            let src = e.dir.path().join(format!("src-{round}"));
            make_source(&src);
            fs::write(
                src.join("collection-0-123.wt"),
                support::pseudo_random(1000 + round, 2 * 1024 * 1024),
            )
            .unwrap();
            let env = if round.is_multiple_of(3) {
                Self::env(&[
                    ("SNAPCRYPT_FAULT_LOCK_REFRESH_DELAY_SECS", "5"),
                    ("SNAPCRYPT_FAULT_BACKUP_STALL_SECS", "3"),
                ])
            } else {
                Self::env(&[])
            };
            let s = src.display().to_string();
            let out = run(&backup_args(&s, repo, key, &["--json"]), &env);
            if out.status.success() {
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("backup --json");
                let id = v["id"].as_str().unwrap().to_string();
                self.expected.lock().unwrap().insert(id, describe(&src));
                self.count("backups done");
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("lost the repository lock") || err.contains("locked by"),
                    "a backup failed for another reason: {err}"
                );
                self.count("backups failed loudly");
            }
        }
    }

    /// Prunes: keep the newest 2, delete at once; some with delayed refreshes.
    fn prunes(&self) {
        let mut round = 0u32;
        while Instant::now() < self.stop_at {
            round += 1;
            let env = if round.is_multiple_of(4) {
                Self::env(&[("SNAPCRYPT_FAULT_LOCK_REFRESH_DELAY_SECS", "5")])
            } else {
                Self::env(&[])
            };
            let out = run(
                &repo_args(
                    &["prune"],
                    &self.repo,
                    &self.key,
                    &["--keep-last", "2", "--delete-after", "0s", "--json"],
                ),
                &env,
            );
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                for id in v["forgotten"].as_array().unwrap() {
                    self.forgotten
                        .lock()
                        .unwrap()
                        .push(id.as_str().unwrap().into());
                }
                self.count("prunes done");
            } else {
                self.count("prunes failed loudly");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Restores of the latest snapshot: bit-exact, or a loud failure.
    fn restores(&self) {
        let (repo, key) = (&self.repo, &self.key);
        let mut round = 0;
        while Instant::now() < self.stop_at {
            round += 1;
            let target = self.e.dir.path().join(format!("restore-{round}"));
            let t = target.display().to_string();
            let mut args = restore_args(repo, key, "latest", &t, &[]);
            args.push("--json");
            let out = run(&args, &Self::env(&[]));
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let id = v["snapshot"].as_str().unwrap().to_string();
                // The backup process may not have printed its id yet.
                support::wait_for("the backup's report", Duration::from_secs(30), || {
                    self.expected.lock().unwrap().contains_key(&id)
                        || !snapshot_ids(repo, key, &[]).contains(&id)
                });
                if let Some(want) = self.expected.lock().unwrap().get(&id) {
                    assert_eq!(&describe(&target), want, "restore of {id} is not bit-exact");
                    self.count("restores bit-exact");
                }
            } else {
                self.count("restores failed loudly");
            }
            let _ = fs::remove_dir_all(&target);
        }
    }

    /// After the run: every snapshot reported done is listed (and verifies) or was forgotten
    /// by a prune, the repository verifies, and each kind of outcome happened.
    fn check_the_repository(&self) {
        let (repo, key) = (&self.repo, &self.key);
        let listed = snapshot_ids(repo, key, &[]);
        let forgotten = self.forgotten.lock().unwrap().clone();
        for id in self.expected.lock().unwrap().keys() {
            assert!(
                listed.contains(id) || forgotten.contains(id),
                "snapshot {id} was reported done, then vanished without a prune forgetting it"
            );
            if listed.contains(id) {
                ok(
                    &repo_args(&["verify"], repo, key, &["--snapshot", id, "--read-data"]),
                    &[],
                );
            }
        }
        // A backup that lost its lock wrote its file list but no snapshot object; verify reports
        // such a file list (it is also what a deleted snapshot object leaves) until a prune
        // removes it: two passes, to mark its pack and then delete it. The stress ends at any
        // moment, so the last such backup may have come after the last prune.
        for _ in 0..2 {
            ok(
                &repo_args(
                    &["prune"],
                    repo,
                    key,
                    &["--keep-last", "1000", "--delete-after", "0s"],
                ),
                &[],
            );
        }
        ok(&repo_args(&["verify"], repo, key, &["--read-data"]), &[]);
        let counts = self.counts.lock().unwrap().clone();
        eprintln!("stress: {counts:?}");
        assert!(
            counts.get("backups done").copied().unwrap_or(0) >= 3,
            "{counts:?}"
        );
        assert!(
            counts.get("restores bit-exact").copied().unwrap_or(0) >= 1,
            "{counts:?}"
        );
        assert!(
            counts.get("backups failed loudly").copied().unwrap_or(0) >= 1,
            "{counts:?}"
        );
    }
}
