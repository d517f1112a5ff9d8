//! Real nodes on the local test cluster: `tests/cluster/node.sh` starts a kube-scheduler and,
//! per node, containerd and a kubelet; `tests/cluster/image.sh` builds the snapcrypt image from
//! the binary under test and loads it. Stopped (containers, state, iptables rule) on drop.

use std::path::PathBuf;
use std::process::Command;

/// The image `image.sh` builds and loads.
pub const IMAGE: &str = "snapcrypt.test/snapcrypt:dev";
/// Where pods reach a test server listening on this machine's loopback (`expose`).
pub const HOST_ALIAS: &str = "10.243.0.1";

pub struct RealNodes {
    script: PathBuf,
    pub names: Vec<String>,
}

impl RealNodes {
    /// Start nodes `names` and load the snapcrypt image into them, or `None` (after saying
    /// why) where real nodes cannot run: a cluster that is not this machine's test ground
    /// (`SNAPCRYPT_CLUSTER_DIR`'s admin kubeconfig) or a user who is not root.
    pub fn start(names: &[&str]) -> Option<RealNodes> {
        let dir = std::env::var("SNAPCRYPT_CLUSTER_DIR")
            .unwrap_or_else(|_| "/tmp/snapcrypt-cluster".into());
        let local = std::env::var("KUBECONFIG")
            .is_ok_and(|k| k.starts_with(&dir) && PathBuf::from(&k).exists());
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !local || !root {
            println!("skipped: real nodes run only on the local test ground, as root");
            return None;
        }
        let script = super::repo_root().join("tests/cluster/node.sh");
        let nodes = RealNodes {
            script: script.clone(),
            names: names.iter().map(|n| n.to_string()).collect(),
        };
        let out = Command::new(&script)
            .arg("start")
            .args(names)
            .output()
            .expect("run node.sh");
        assert!(
            out.status.success(),
            "node.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(super::repo_root().join("tests/cluster/image.sh"))
            .arg(super::bin())
            .arg(IMAGE)
            .output()
            .expect("run image.sh");
        assert!(
            out.status.success(),
            "image.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(nodes)
    }

    /// Let pods reach the test server on 127.0.0.1:`port` at [`HOST_ALIAS`]:`port` (removed
    /// with the nodes).
    pub fn expose(&self, port: u16) {
        let out = Command::new(&self.script)
            .args(["expose", &port.to_string()])
            .output()
            .expect("run node.sh expose");
        assert!(
            out.status.success(),
            "node.sh expose: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kill the container `id` (`containerd://ID` from a pod's status) on whichever node runs
    /// it, as a crash or an OOM kill would: the kubelet sees it die.
    pub fn kill_container(&self, container_id: &str) {
        let id = container_id.trim_start_matches("containerd://");
        let dir = std::env::var("SNAPCRYPT_CLUSTER_DIR")
            .unwrap_or_else(|_| "/tmp/snapcrypt-cluster".into());
        let killed = self.names.iter().any(|n| {
            Command::new("ctr")
                .args(["--address", &format!("{dir}/nodes/{n}/containerd.sock")])
                .args(["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(killed, "no node runs container {id}");
    }
}

impl Drop for RealNodes {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).arg("stop").output();
    }
}
