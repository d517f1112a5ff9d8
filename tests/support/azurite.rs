//! A real Azure Blob Storage emulator on loopback for tests: Azurite's blob service (npm
//! azurite 3.35.0, checks Shared Key signatures), installed by .ci/install-deps.sh and started
//! per test, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Azurite's built-in account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The well-known key of [`ACCOUNT`].
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    child: Child,
    pub port: u16,
    /// Azurite's state: its data (metadata and blob extents) is in `<state>/azurite`.
    pub state: PathBuf,
}

impl Azurite {
    /// Start Azurite's blob service with its data under `state`, with container `container`
    /// created.
    pub fn start(state: &Path, container: &str) -> Self {
        let port = super::free_port();
        let dir = super::repo_root().join("tests/services/azure");
        std::fs::create_dir_all(state).unwrap();
        let child = Command::new("bash")
            .arg(dir.join("start-azurite.sh"))
            .arg(state)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite (run .ci/install-deps.sh to install it)");
        let mut server = Azurite {
            child,
            port,
            state: state.to_path_buf(),
        };
        let addr = format!("127.0.0.1:{port}");
        super::wait_for("azurite to listen", Duration::from_secs(30), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "azurite exited at start ({status}): is it installed? run .ci/install-deps.sh"
                );
            }
            std::net::TcpStream::connect(&addr).is_ok()
        });
        // A container needs a Shared Key-signed PUT: done by a standard-library Python script.
        let python = std::env::var_os("SNAPCRYPT_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| super::cache_dir().join("venv/bin/python"));
        let python = if python.exists() {
            python
        } else {
            PathBuf::from("python3")
        };
        let out = Command::new(&python)
            .arg(dir.join("create-container.py"))
            .arg(server.endpoint())
            .arg(container)
            .output()
            .unwrap_or_else(|e| panic!("run {} create-container.py: {e}", python.display()));
        assert!(
            out.status.success(),
            "creating container {container} in azurite failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    /// The blob endpoint, without the account: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for snapcrypt (object_store's `MicrosoftAzureBuilder::from_env`) to reach
    /// this server as it reaches any account: its name, its key, and its blob endpoint (as for
    /// a sovereign cloud; what a BackupJob's `destination.azure.endpoint` sets). Plain HTTP is
    /// allowed for an `http://` endpoint.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env_at(&format!("127.0.0.1:{}", self.port))
    }

    /// [`Azurite::env`] with the server reached at `host_port` (from a pod: the host's alias).
    pub fn env_at(&self, host_port: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.to_string()),
            ("AZURE_STORAGE_ACCOUNT_KEY", KEY.to_string()),
            (
                "AZURE_STORAGE_ENDPOINT",
                format!("http://{host_port}/{ACCOUNT}"),
            ),
        ]
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
