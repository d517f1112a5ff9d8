//! A real S3 server on loopback for tests: s3s-fs (checks SigV4 signatures), installed by
//! .ci/install-deps.sh and started per test, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ACCESS_KEY: &str = "snapcrypt-test";
pub const SECRET_KEY: &str = "snapcrypt-test-secret";

pub struct S3Server {
    child: Child,
    pub port: u16,
    /// The key pair it accepts.
    pub access_key: String,
    pub secret_key: String,
    /// The directory s3s-fs serves: `<root>/<bucket>/<key>`.
    pub root: PathBuf,
}

impl S3Server {
    /// Start s3s-fs serving `state/root`, with bucket `bucket` created.
    pub fn start(state: &Path, bucket: &str) -> Self {
        Self::start_with_keys(state, bucket, ACCESS_KEY, SECRET_KEY)
    }

    /// [`S3Server::start`], accepting only this key pair.
    pub fn start_with_keys(state: &Path, bucket: &str, access: &str, secret: &str) -> Self {
        let port = super::free_port();
        let script = super::repo_root().join("tests/services/s3/start-s3s-fs.sh");
        let root = state.join("root");
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let child = Command::new("bash")
            .arg(&script)
            .arg(state)
            .arg(port.to_string())
            .arg(access)
            .arg(secret)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs (run .ci/install-deps.sh to install it)");
        let mut server = S3Server {
            child,
            port,
            root,
            access_key: access.into(),
            secret_key: secret.into(),
        };
        let addr = format!("127.0.0.1:{port}");
        super::wait_for("s3s-fs to listen", Duration::from_secs(20), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "s3s-fs exited at start ({status}): is it installed? run .ci/install-deps.sh"
                );
            }
            std::net::TcpStream::connect(&addr).is_ok()
        });
        server.port = port;
        server
    }

    /// Environment for snapcrypt to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
