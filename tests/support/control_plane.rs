//! Extra control-plane processes a fault test starts beside the test ground's own, so it can
//! kill them without disturbing the tests that run at the same time: a second kube-apiserver
//! on the ground's etcd (tests/cluster/apiserver.sh), as in a highly available control plane.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::cluster::eventually;
use super::operator::LONG;

/// A kube-apiserver of the test ground on its own port; killed (SIGKILL) when dropped.
pub struct SecondApiServer {
    child: Option<Child>,
    port: u16,
    /// The ground's admin kubeconfig, pointing at this server.
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl SecondApiServer {
    /// Start one beside the ground's (whose admin kubeconfig is `admin`) and wait until it is
    /// ready.
    pub async fn start(admin: &Path) -> SecondApiServer {
        let port = super::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let text = std::fs::read_to_string(admin).expect("admin kubeconfig");
        let server = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("a server in the admin kubeconfig")
            .to_string();
        let text = text.replace(&server, &format!("https://127.0.0.1:{port}"));
        std::fs::write(&kubeconfig, text).expect("write kubeconfig");
        let mut api = SecondApiServer {
            child: None,
            port,
            kubeconfig,
            _dir: dir,
        };
        api.restart().await;
        api
    }

    /// Kill it at once (SIGKILL), as a crashed or rebooted control-plane machine stops.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and wait until it is ready.
    pub async fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self._dir.path().join("apiserver.log")).expect("log");
        let child = Command::new(super::repo_root().join("tests/cluster/apiserver.sh"))
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tests/cluster/apiserver.sh");
        self.child = Some(child);
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig"),
            &KubeConfigOptions::default(),
        )
        .await
        .expect("config");
        let client = Client::try_from(config).expect("client");
        let log = self._dir.path().join("apiserver.log");
        eventually(
            &format!(
                "the second kube-apiserver on port {} to be ready",
                self.port
            ),
            LONG,
            || {
                let client = client.clone();
                let log = log.clone();
                async move {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .map_err(|e| e.to_string())?;
                    match client.request_text(req).await {
                        Ok(body) if body == "ok" => Ok(()),
                        Ok(body) => Err(body),
                        Err(e) => Err(format!(
                            "{e}; log tail: {}",
                            std::fs::read_to_string(&log)
                                .unwrap_or_default()
                                .lines()
                                .rev()
                                .take(3)
                                .collect::<Vec<_>>()
                                .join(" | ")
                        )),
                    }
                }
            },
        )
        .await;
    }
}

impl Drop for SecondApiServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kubernetes' node lifecycle controller (tests/cluster/node-lifecycle.sh) with a grace period
/// of `grace`: it marks a node whose kubelet stopped reporting Ready=Unknown and taints it.
/// Stopped when dropped.
pub struct NodeLifecycle(Child);

impl NodeLifecycle {
    pub fn start(grace: &str) -> NodeLifecycle {
        let child = Command::new(super::repo_root().join("tests/cluster/node-lifecycle.sh"))
            .arg(super::free_port().to_string())
            .arg(grace)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tests/cluster/node-lifecycle.sh");
        NodeLifecycle(child)
    }
}

impl Drop for NodeLifecycle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
