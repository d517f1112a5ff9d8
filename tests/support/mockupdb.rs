//! Starting a mockupdb double (tests/fixtures/mockupdb/*.py, PyPI `mockupdb`) in the test venv
//! that .ci/install-deps.sh fills: stdin and stdout piped, its `READY ...` line waited for.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The venv python with mockupdb (or `SNAPCRYPT_PYTHON`).
pub fn python() -> PathBuf {
    std::env::var_os("SNAPCRYPT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::cache_dir().join("venv/bin/python"))
}

/// A started double: the process, its later stdout lines, and what followed `READY `.
pub struct Started {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub ready: String,
}

/// Start `tests/fixtures/mockupdb/SCRIPT ARGS...` and wait (30 s) for its `READY` line.
pub fn start<S: AsRef<OsStr>>(script: &str, args: &[S]) -> Started {
    let mut child = Command::new(python())
        .arg(
            super::repo_root()
                .join("tests/fixtures/mockupdb")
                .join(script),
        )
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (run .ci/install-deps.sh for the test venv with mockupdb): {e}",
                python().display()
            )
        });
    let lines = super::stdout_lines(&mut child);
    let first = lines
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!("{script} did not start within 30 s (is mockupdb installed in the test venv?)")
        });
    let ready = first
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("unexpected first line from {script}: {first:?}"))
        .trim()
        .to_string();
    Started {
        child,
        lines,
        ready,
    }
}

/// One command a lockable member received (tests/fixtures/mockupdb/lockable.py's record).
#[derive(Clone, Debug)]
pub struct LockCommand {
    pub cmd: String,
    /// Unix time of the reply.
    pub t: f64,
    pub lock_count_after: i64,
    pub error: Option<String>,
}

/// A lockable member (lockable.py); stops when dropped (its stdin closes).
pub struct Lockable {
    child: Child,
    ctl: std::sync::Arc<
        std::sync::Mutex<(Option<std::process::ChildStdin>, mpsc::Receiver<String>)>,
    >,
    pub port: u16,
    record: tempfile::NamedTempFile,
}

impl Lockable {
    /// A secondary on localhost, or listening at `listen` (HOST:PORT).
    pub fn start(listen: Option<&str>) -> Lockable {
        let record = tempfile::NamedTempFile::new().expect("record file");
        let fixture = super::repo_root().join("tests/fixtures/hello/secondary.json");
        let mut args = vec![
            fixture.into_os_string(),
            record.path().as_os_str().to_os_string(),
        ];
        if let Some(l) = listen {
            args.push("--listen".into());
            args.push(l.into());
        }
        let started = start("lockable.py", &args);
        let port = started.ready.parse().expect("port");
        let (mut child, lines) = (started.child, started.lines);
        let ctl = std::sync::Arc::new(std::sync::Mutex::new((child.stdin.take(), lines)));
        Lockable {
            child,
            ctl,
            port,
            record,
        }
    }

    /// A handle that sends control lines (for use inside a lock's work).
    pub fn controller(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let ctl = self.ctl.clone();
        move |line: &str| {
            use std::io::Write;
            let mut c = ctl.lock().expect("control");
            let stdin = c.0.as_mut().expect("stdin");
            writeln!(stdin, "{line}").expect("write control line");
            stdin.flush().expect("flush");
            let ack =
                c.1.recv_timeout(Duration::from_secs(10))
                    .expect("no acknowledgement");
            assert_eq!(ack, format!("OK {line}"));
        }
    }

    /// Send a control line (see lockable.py) and wait for its acknowledgement.
    pub fn control(&self, line: &str) {
        self.controller()(line);
    }

    pub fn record_path(&self) -> &std::path::Path {
        self.record.path()
    }

    /// The lock-related commands received (fsync, fsyncUnlock, currentOp), in order.
    pub fn lock_commands(&self) -> Vec<LockCommand> {
        std::fs::read_to_string(self.record.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                matches!(
                    v["cmd"].as_str(),
                    Some("fsync" | "fsyncUnlock" | "currentOp")
                )
            })
            .map(|v| LockCommand {
                cmd: v["cmd"].as_str().unwrap_or_default().to_string(),
                t: v["t"].as_f64().unwrap_or_default(),
                lock_count_after: v["lockCount_after"].as_i64().unwrap_or(-1),
                error: v["error"].as_str().map(str::to_string),
            })
            .collect()
    }

    /// (command, lock count after) of [`Lockable::lock_commands`].
    pub fn commands(&self) -> Vec<(String, i64)> {
        self.lock_commands()
            .into_iter()
            .map(|c| (c.cmd, c.lock_count_after))
            .collect()
    }

    /// The lock count after each lock command, in order.
    pub fn counts(&self) -> Vec<i64> {
        self.lock_commands()
            .iter()
            .map(|c| c.lock_count_after)
            .collect()
    }

    /// The lock count after the last lock command (0 if none).
    pub fn lock_count(&self) -> i64 {
        self.lock_commands()
            .last()
            .map_or(0, |c| c.lock_count_after)
    }
}

impl Drop for Lockable {
    fn drop(&mut self) {
        if let Ok(mut c) = self.ctl.lock() {
            drop(c.0.take());
        }
        let _ = self.child.wait();
    }
}
