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
