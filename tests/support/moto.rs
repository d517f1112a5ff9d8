//! moto's S3 server (from PyPI, .ci/install-deps.sh) on loopback, for what s3s-fs lacks: S3
//! Object Lock (versioned buckets, per-object retention, deletes of locked versions refused).
//! moto checks no signature (tests/services/README.md); what it enforces of object lock is in
//! tests/README.md, "Object lock". Started per test, stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Moto {
    child: Child,
    pub port: u16,
}

/// The test venv's python (boto3 for tests/services/s3/lock-admin.py).
fn python() -> PathBuf {
    std::env::var_os("SNAPCRYPT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::cache_dir().join("venv/bin/python"))
}

impl Moto {
    pub fn start() -> Moto {
        let port = super::free_port();
        let child = Command::new("bash")
            .arg(super::repo_root().join("tests/services/s3/start-moto.sh"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (run .ci/install-deps.sh to install it)");
        let mut moto = Moto { child, port };
        let addr = format!("127.0.0.1:{port}");
        super::wait_for("moto to listen", Duration::from_secs(30), || {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited at start ({status}): run .ci/install-deps.sh");
            }
            std::net::TcpStream::connect(&addr).is_ok()
        });
        moto.port = port;
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for snapcrypt to reach it (any credentials do).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "snapcrypt-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "snapcrypt-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// tests/services/s3/lock-admin.py ARGS against this server: its output.
    pub fn admin(&self, args: &[&str]) -> String {
        self.admin_as(None, args)
    }

    /// lock-admin.py ARGS signed with `keys` (access key, secret) when given.
    pub fn admin_as(&self, keys: Option<&IamKeys>, args: &[&str]) -> String {
        let mut cmd = Command::new(python());
        if let Some(k) = keys {
            cmd.env("LOCK_ADMIN_ACCESS_KEY", &k.access_key)
                .env("LOCK_ADMIN_SECRET_KEY", &k.secret_key);
        }
        let out = cmd
            .arg(super::repo_root().join("tests/services/s3/lock-admin.py"))
            .arg(self.endpoint())
            .args(args)
            .output()
            .expect("run lock-admin.py");
        assert!(
            out.status.success(),
            "lock-admin.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Each object under `prefix` of `bucket`: (key, mode, retain-until), "-" for none.
    pub fn retention(&self, bucket: &str, prefix: &str) -> Vec<(String, String, String)> {
        self.admin(&["retention", bucket, prefix])
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.into(), w.next()?.into(), w.next()?.into()))
            })
            .collect()
    }
}

/// An IAM user's access key.
#[derive(Clone, Debug)]
pub struct IamKeys {
    pub access_key: String,
    pub secret_key: String,
}

impl IamKeys {
    /// Environment for snapcrypt to reach `moto` as this user.
    pub fn env(&self, moto: &Moto) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", moto.endpoint()),
        ]
    }
}

impl Moto {
    /// Least privilege on `bucket` (lock-admin.py iam-users): per prefix, the writer's keys
    /// (no delete but under locks/ and unfinished/) and the pruner's; IAM is enforced from
    /// then on.
    pub fn iam_users(&self, bucket: &str, prefixes: &[&str]) -> Vec<(IamKeys, IamKeys)> {
        let out = self.admin(&[&["iam-users", bucket], prefixes].concat());
        let user = |name: String| {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in {out}"));
            let w: Vec<&str> = line.split_whitespace().collect();
            IamKeys {
                access_key: w[1].into(),
                secret_key: w[2].into(),
            }
        };
        prefixes
            .iter()
            .map(|p| (user(format!("writer-{p}")), user(format!("pruner-{p}"))))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
