//! Real nodes on the local test cluster: `tests/cluster/node.sh` starts a kube-scheduler, the
//! storage provisioner double and, per node, containerd and a kubelet; `tests/cluster/image.sh`
//! builds the snapcrypt image from the binary under test and loads it. The nodes belong to the
//! test ground (tests/run starts them with the cluster and `tests/cluster/stop.sh` stops them);
//! a test process starts them if they are not running and loads its image once. Each test
//! cleans up by deleting its namespace: the kubelets stop its pods, the provisioner deletes
//! its volumes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::Api;

use super::cluster::{TestNamespace, eventually};
use super::operator::LONG;

/// The image `image.sh` builds and loads.
pub const IMAGE: &str = "snapcrypt.test/snapcrypt:dev";
/// The pause image every node has (node.sh builds it); a member pod's stand-in for mongod.
pub const PAUSE_IMAGE: &str = "snapcrypt.test/pause:3.2";
/// Where pods reach a test server listening on this machine's loopback (`expose`).
pub const HOST_ALIAS: &str = "10.243.0.1";
/// The test ground's nodes.
pub const NODES: [&str; 2] = ["real-a", "real-b"];
/// The provisioner double's classes: node-local disks (the default) and network storage.
pub const LOCAL_CLASS: &str = "snapcrypt-local";
pub const SHARED_CLASS: &str = "snapcrypt-shared";

pub struct RealNodes {
    script: PathBuf,
    pub names: Vec<String>,
}

impl RealNodes {
    /// The running nodes with this test binary's image loaded, or `None` (after saying why)
    /// where real nodes cannot run: a cluster that is not this machine's test ground
    /// (`SNAPCRYPT_CLUSTER_DIR`'s admin kubeconfig) or a user who is not root. Starts the
    /// nodes if they are not running and loads the image once per test process.
    pub fn get() -> Option<&'static RealNodes> {
        static NODES_READY: OnceLock<Option<RealNodes>> = OnceLock::new();
        NODES_READY.get_or_init(Self::start).as_ref()
    }

    fn start() -> Option<RealNodes> {
        let local = std::env::var("KUBECONFIG")
            .is_ok_and(|k| k.starts_with(&cluster_dir()) && PathBuf::from(&k).exists());
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !local || !root {
            // Under CI a missing ground is a failure, never a silent pass (#30).
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                panic!(
                    "CI is set but the real nodes cannot run here (KUBECONFIG of the local test \
                     ground: {local}, root: {root}): CI must run the real-pods tests; run them \
                     through ./tests/run as root"
                );
            }
            println!("skipped: real nodes run only on the local test ground, as root");
            return None;
        }
        let script = super::repo_root().join("tests/cluster/node.sh");
        run(
            Command::new(&script).arg("start").args(NODES),
            "node.sh start",
        );
        run(
            Command::new(super::repo_root().join("tests/cluster/image.sh"))
                .arg(super::bin())
                .arg(IMAGE),
            "image.sh",
        );
        Some(RealNodes {
            script,
            names: NODES.iter().map(|n| n.to_string()).collect(),
        })
    }

    /// Let pods reach the test server on 127.0.0.1:`port` at [`HOST_ALIAS`]:`port` (until
    /// the nodes stop).
    pub fn expose(&self, port: u16) {
        run(
            Command::new(&self.script).args(["expose", &port.to_string()]),
            "node.sh expose",
        );
    }

    /// Kill the container `id` (`containerd://ID` from a pod's status) on whichever node runs
    /// it, as a crash or an OOM kill would: the kubelet sees it die.
    pub fn kill_container(&self, container_id: &str) {
        let id = container_id.trim_start_matches("containerd://");
        let dir = cluster_dir();
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

/// The taint a dedicated node registers with (`snapcrypt.test/dedicated=NAME:NoSchedule`): only
/// pods that tolerate it (member pods do, and the snapshot pods that take their tolerations)
/// go there, so a test may break that node without touching the pods of the tests beside it.
pub const DEDICATED_TAINT: &str = "snapcrypt.test/dedicated";

impl RealNodes {
    /// Start node `name` beside the ground's, registered with [`DEDICATED_TAINT`], with this
    /// test binary's image loaded. It stays until the nodes stop (`node.sh stop`).
    pub fn add_dedicated(&self, name: &str) {
        run(
            Command::new(&self.script)
                .arg("start")
                .args(NODES)
                .arg(name)
                .env(
                    "SNAPCRYPT_REGISTER_TAINTS",
                    format!("{DEDICATED_TAINT}={name}:NoSchedule"),
                ),
            "node.sh start (a dedicated node)",
        );
        run(
            Command::new(super::repo_root().join("tests/cluster/image.sh"))
                .arg(super::bin())
                .arg(IMAGE),
            "image.sh",
        );
    }
}

/// Node `name`'s kubelet stopped (SIGSTOP) as a node cut off from the control plane is: its
/// containers run on, nothing reports them. Resumed (SIGCONT) when dropped.
pub struct FrozenKubelet(i32);

impl FrozenKubelet {
    pub fn freeze(name: &str) -> FrozenKubelet {
        let pid_file = format!("{}/pids/kubelet-{name}.pid", cluster_dir());
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{pid_file}: {e}"))
            .trim()
            .parse()
            .expect("a pid");
        // SAFETY: kill has no memory-safety preconditions; the pid is our kubelet's.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {pid}"
        );
        FrozenKubelet(pid)
    }
}

impl Drop for FrozenKubelet {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

pub fn cluster_dir() -> String {
    std::env::var("SNAPCRYPT_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/snapcrypt-cluster".into())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory on this machine behind claim `claim` of `ns`, once the provisioner double
/// has bound it (a local claim binds when its first pod is scheduled).
pub async fn volume_dir(ns: &TestNamespace, claim: &str) -> PathBuf {
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let volumes: Api<PersistentVolume> = Api::all(ns.client());
    eventually(&format!("claim {claim} to be bound"), LONG, || async {
        let pvc = claims.get(claim).await.map_err(|e| e.to_string())?;
        let pv = pvc
            .spec
            .and_then(|s| s.volume_name)
            .ok_or_else(|| "no volume yet".to_string())?;
        let pv = volumes.get(&pv).await.map_err(|e| e.to_string())?;
        pv.spec
            .and_then(|s| s.host_path)
            .map(|h| PathBuf::from(h.path))
            .ok_or_else(|| format!("volume of {claim} is not a hostPath"))
    })
    .await
}

/// The last lines of every container log of the pods of `ns` (the kubelets write them under
/// /var/log/pods/NAMESPACE_POD_UID/CONTAINER/), for a failing test's message.
pub fn pod_logs(ns: &str) -> String {
    let mut out = String::new();
    let Ok(pods) = std::fs::read_dir("/var/log/pods") else {
        return "(no /var/log/pods)".into();
    };
    for pod in pods.flatten() {
        let name = pod.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{ns}_")) {
            continue;
        }
        for container in std::fs::read_dir(pod.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for log in std::fs::read_dir(container.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                out.push_str(&format!("--- {}\n{tail}\n", log.path().display()));
            }
        }
    }
    if out.is_empty() {
        out = format!("(no container logs of namespace {ns})");
    }
    out
}
