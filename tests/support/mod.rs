//! Helpers shared by the integration tests: running the snapcrypt binary as a user would,
//! making source trees, comparing trees byte for byte, and real servers on loopback.
#![allow(dead_code)]

pub mod alerts;
pub mod azurite;
pub mod cli;
pub mod cluster;
pub mod control_plane;
pub mod fault_proxy;
pub mod gcs;
pub mod ground;
pub mod mockupdb;
pub mod moto;
pub mod operator;
pub mod plain;
pub mod real_nodes;
pub mod s3;
pub mod wiredtiger;

use std::collections::BTreeMap;
use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A scratch directory for one CLI test, with a sample source tree in `src/` (see
/// [`make_source`]); removed when dropped.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        make_source(&dir.path().join("src"));
        Env { dir }
    }

    /// The path of `name` in the directory, as an argument.
    pub fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Where a test's key file goes.
    pub fn key(&self) -> String {
        self.p("key.json")
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

/// The snapcrypt binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snapcrypt"))
}

/// Run `snapcrypt ARGS` with extra environment; returns the output.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("SNAPCRYPT_REPO");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run snapcrypt")
}

/// Run and require success; returns stdout.
pub fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(args, env);
    assert!(
        out.status.success(),
        "snapcrypt {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run and require failure; returns stderr.
pub fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(args, env);
    assert!(
        !out.status.success(),
        "snapcrypt {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `snapcrypt backup --json` of `src` into `repo` with key file `key` and `extra` flags,
/// required to succeed; its result object.
pub fn backup_json(
    src: &str,
    repo: &str,
    key: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut args = cli::backup_args(src, repo, key, &["--json"]);
    args.extend_from_slice(extra);
    let out = ok(&args, env);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("backup --json printed {out:?}: {e}"))
}

/// The ids of the snapshots `snapshots --json` lists, sorted.
pub fn snapshot_ids(repo: &str, key: &str, env: &[(&str, &str)]) -> Vec<String> {
    let out = ok(&cli::repo_args(&["snapshots"], repo, key, &["--json"]), env);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("snapshots --json");
    let mut ids: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

/// [`backup_json`] without extra flags: the new snapshot's id.
pub fn backup_id(src: &str, repo: &str, key: &str, env: &[(&str, &str)]) -> String {
    backup_json(src, repo, key, &[], env)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `snapcrypt restore` of `snapshot` into `target`, required to succeed.
pub fn restore(repo: &str, key: &str, snapshot: &str, target: &str, env: &[(&str, &str)]) {
    ok(&cli::restore_args(repo, key, snapshot, target, &[]), env);
}

/// Deterministic pseudo-random bytes (xorshift), so sources are reproducible.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn set_mtime(p: &Path, secs: u64, nanos: u32) {
    let t = UNIX_EPOCH + Duration::new(secs, nanos);
    File::open(p)
        .unwrap()
        .set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

/// A small MongoDB-like dbPath with awkward cases: empty files, sizes around the chunk size,
/// random and compressible data, nested and empty directories, a symlink, odd modes and
/// nanosecond mtimes.
pub fn make_source(root: &Path) {
    fs::create_dir_all(root.join("journal")).unwrap();
    fs::create_dir_all(root.join("diagnostic.data/empty")).unwrap();
    let files: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "collection-0-123.wt",
            pseudo_random(1, 3 * 1024 * 1024 + 17),
            0o600,
        ),
        ("index-1-123.wt", b"{\"a\":1}".repeat(150_000), 0o644),
        (
            "WiredTiger",
            b"WiredTiger\nWiredTiger 11.2.0\n".to_vec(),
            0o644,
        ),
        ("mongod.lock", Vec::new(), 0o600),
        ("exact-chunk.wt", pseudo_random(2, 16 * 1024), 0o640),
        ("chunk-plus-one.wt", pseudo_random(3, 16 * 1024 + 1), 0o644),
        (
            "journal/WiredTigerLog.0000000001",
            pseudo_random(4, 100_000),
            0o600,
        ),
        (
            "diagnostic.data/metrics.2026",
            b"metrics".repeat(1000),
            0o755,
        ),
    ];
    for (i, (name, data, mode)) in files.into_iter().enumerate() {
        let p = root.join(name);
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(&p, 1_700_000_000 + i as u64 * 1000, 123_456_789 + i as u32);
    }
    std::os::unix::fs::symlink("collection-0-123.wt", root.join("latest.wt")).unwrap();
    for (d, mode) in [
        ("journal", 0o700),
        ("diagnostic.data/empty", 0o750),
        ("diagnostic.data", 0o755),
    ] {
        let p = root.join(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(&p, 1_690_000_000, 987_654_321);
    }
}

/// Everything about a tree that a restore must reproduce: per path, kind, mode, mtime (ns),
/// and content (files) or target (symlinks).
pub fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            let desc = if m.file_type().is_symlink() {
                format!("link -> {} {mtime}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o} {mtime}", m.mode() & 0o7777)
            } else {
                let data = fs::read(&p).unwrap();
                format!(
                    "file {:o} {mtime} {} {}",
                    m.mode() & 0o7777,
                    data.len(),
                    blake3::hash(&data).to_hex()
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

/// Assert two trees are identical, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (da, db) = (describe(a), describe(b));
    for (k, v) in &da {
        assert_eq!(
            Some(v),
            db.get(k),
            "{k} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    assert_eq!(
        da.len(),
        db.len(),
        "extra entries in {}: {:?}",
        b.display(),
        db.keys()
            .filter(|k| !da.contains_key(*k))
            .collect::<Vec<_>>()
    );
}

/// A free TCP port on loopback, never one this test process handed out before: tests run in
/// parallel threads, and a port released here is bound later by the server it is for, so two
/// servers started at once could be given the same port (seen in CI: a test's S3 server took
/// Azurite's port, Azurite's readiness check connected to it, and Azurite, unable to bind,
/// was gone when the container was created).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

/// A live shared lock of host `busy-host`, refreshed now, planted in `repo` as
/// `locks/NAME` (as a running backup holds one); its path.
pub fn plant_shared_lock(repo: &Path, name: &str) -> PathBuf {
    let locks = repo.join("locks");
    fs::create_dir_all(&locks).unwrap();
    let path = locks.join(name);
    fs::write(
        &path,
        format!(
            r#"{{"exclusive":false,"hostname":"busy-host","pid":4242,"refreshed":{}}}"#,
            now_secs()
        ),
    )
    .unwrap();
    path
}

/// Wait until `cond` holds, or panic after `deadline` naming `what`.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the services installed by .ci/install-deps.sh are.
/// Give `dir` (recursively) to mongod's usual user (999, the snapshot pod's default user),
/// as a member's volume would be.
pub fn chown_mongodb(dir: &Path) {
    let st = Command::new("chown")
        .args(["-R", "999:999"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(st.success(), "chown -R 999:999 {}", dir.display());
}

/// The lines `child` writes on its (piped) stdout, read on a thread of their own.
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("SNAPCRYPT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/snapcrypt"))
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every file under `dir`, recursively (directories left out).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Whether the tests run as root (uid 0).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
