//! A real PyKMIP server for one test: started on a free loopback port from
//! tests/services/kmip/start-pykmip.sh with its own state directory (test PKI, SQLite
//! database), killed and removed when the guard drops.
//!
//! PyKMIP comes from .ci/install-deps.sh (a venv under ~/.cache/snapcrypt/venv, or
//! $SNAPCRYPT_PYTHON).

#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use snapcrypt::kms::kmip::{KmipConfig, TlsMaterial};

/// How long PyKMIP may take to listen (it takes < 2 s; CI machines can be slow).
const START_DEADLINE: Duration = Duration::from_secs(60);

pub struct PyKmip {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PyKmip {
    /// The CLI's flags to reach this server as the test client (`--kmip-endpoint`, CA,
    /// client certificate and key).
    pub fn cli_flags(&self) -> Vec<String> {
        vec![
            "--kmip-endpoint".into(),
            self.endpoint(),
            "--kmip-ca".into(),
            self.file("ca.pem").display().to_string(),
            "--kmip-cert".into(),
            self.file("client.pem").display().to_string(),
            "--kmip-key".into(),
            self.file("client.key").display().to_string(),
        ]
    }

    /// Start PyKMIP and return once its port accepts connections.
    pub fn start() -> Self {
        let mut last = String::new();
        // A free port can be taken by someone else between our probe and PyKMIP's bind.
        for _ in 0..3 {
            match Self::try_start() {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("PyKMIP did not start: {last}");
    }

    fn try_start() -> Result<Self, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("tests/services/kmip/start-pykmip.sh");
        let python = std::env::var_os("SNAPCRYPT_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join("venv/bin/python"));
        if !python.exists() {
            panic!(
                "PyKMIP is not installed ({} missing): run .ci/install-deps.sh, or set SNAPCRYPT_PYTHON",
                python.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("snapcrypt-pykmip-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = free_port();
        let log = dir.path().join("start.log");
        let out = File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg(dir.path().join("state"))
            .arg(port.to_string())
            .env("SNAPCRYPT_PYTHON", &python)
            .env("PYKMIP_LOG_LEVEL", "INFO")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                // If this test thread dies without dropping the guard, PyKMIP dies too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", script.display()))?;
        let mut server = Self { child, port, dir };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("exited with {status}: {}", tail(&text)));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "port {port} not open after {START_DEADLINE:?}: {}",
                    tail(&text)
                ));
            }
            // Polling interval, not synchronisation: the loop ends on the port opening.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A file of the test PKI (ca.pem, client.pem, client.key, other-ca.pem, …).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }

    /// The state directory (removed when the guard drops).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// TLS material: the test CA and the client identity `who` (`client`, `client2`,
    /// `client-noeku`, `other-client`).
    pub fn tls_as(&self, who: &str) -> TlsMaterial {
        TlsMaterial::from_files(
            &self.file("ca.pem"),
            Some(&self.file(&format!("{who}.pem"))),
            Some(&self.file(&format!("{who}.key"))),
        )
        .expect("test PKI files")
    }

    /// A client configuration for this server as the normal test client, 10 s timeout.
    pub fn config(&self) -> KmipConfig {
        KmipConfig::new(vec![self.endpoint()], self.tls_as("client"))
    }

    /// The server's log (PyKMIP logs at INFO in these tests).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.file("server.log")).unwrap_or_default()
    }
}

impl Drop for PyKmip {
    fn drop(&mut self) {
        // start-pykmip.sh execs python, so this is PyKMIP itself; its helpers die with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("SNAPCRYPT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/snapcrypt")
        })
}

/// A loopback port nobody listens on right now, never one this file handed out before in
/// this process (two servers started at once must not be given one port: see
/// `support::free_port`, which this file, included on its own, cannot call).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A loopback endpoint that refuses connections (nothing listens there).
pub fn closed_endpoint() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `base` followed by `extra`, as one argument list.
pub fn with<'a>(base: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    base.iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect()
}
