//! The WiredTiger double (tests/doubles/wiredtiger/): a writer that plays a live mongod's
//! storage engine in a member's volume, and the judge of whether a captured copy opens and
//! verifies in WiredTiger (mongod cannot run here; WiredTiger is the engine inside it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::Duration;

/// How long the writer gets to open its database and write its first checkpoint.
const READY: Duration = Duration::from_secs(60);

fn doubles() -> PathBuf {
    super::repo_root().join("tests/doubles/wiredtiger")
}

/// A running writer; stopped (SIGTERM: final checkpoint, clean close) when dropped.
pub struct Writer(Child);

impl Writer {
    /// The writer's process id (a lock double stops it while the member is locked).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Build the writer if needed and start it on `dir`, waiting (deadline 60 s) for its
    /// `writer ready` line.
    pub fn start(dir: &Path) -> Writer {
        let out = Command::new(doubles().join("build.sh"))
            .output()
            .expect("run tests/doubles/wiredtiger/build.sh");
        assert!(
            out.status.success(),
            "wiredtiger build.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let binary = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        let mut child = Command::new(&binary)
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        let lines = super::stdout_lines(&mut child);
        let deadline = std::time::Instant::now() + READY;
        let ready = std::iter::from_fn(|| {
            lines
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .ok()
        })
        .any(|l| l.trim() == "writer ready");
        if !ready {
            let _ = child.kill();
            panic!("the WiredTiger writer did not print `writer ready` within {READY:?}");
        }
        Writer(child)
    }
}

impl Writer {
    /// Freeze the writer (SIGSTOP: a crash-consistent instant, as a lock or a volume
    /// snapshot gives) or let it go on (SIGCONT).
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, sig);
        }
    }
}

/// Copy `from` into `to` file by file (directories first, in name order), waiting `pause`
/// after each file: a copy that spans the writer's checkpoints, as a slow copy of a large
/// live dbPath does. Files that vanish mid-copy (WiredTiger removes old journal files) are
/// skipped, as `cp -r` would report and go on.
pub fn slow_copy(from: &Path, to: &Path, pause: Duration) {
    std::fs::create_dir_all(to).expect("copy target");
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            slow_copy(&path, &target, pause);
        } else if std::fs::copy(&path, &target).is_ok() {
            std::thread::sleep(pause);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// Whether WiredTiger opens `dir` with recovery and verifies it (and, for a writer's
/// database, finds one transaction-consistent state): `Ok` or the judge's one-line reason.
pub fn judge(dir: &Path) -> Result<(), String> {
    let out = Command::new(doubles().join("judge.sh"))
        .arg(dir)
        .output()
        .expect("run tests/doubles/wiredtiger/judge.sh");
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(said),
        _ => panic!(
            "judge.sh could not run on {}: {said} {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
