//! The test node agent (tests/node-agent/agent.py, a test double of a kubelet: see
//! tests/README.md) started from a test: ready line with a deadline, SIGTERM on drop, the
//! parent-death signal if the test process dies, the logs of the pods it ran.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::unique_name;

/// How to start the node agent.
#[derive(Clone, Debug)]
pub struct NodeAgentOptions {
    /// Node names it registers and serves. One node name belongs to one agent at a time.
    pub nodes: Vec<String>,
    /// Image substrings whose containers run their command as it is (e.g. `busybox`).
    pub run_images: Vec<String>,
    /// Bind pods that do not name a node. Tests that run agents side by side leave this off,
    /// so each agent only takes pods pinned (kubernetes.io/hostname) to its own nodes.
    pub schedule_unpinned: bool,
    /// More arguments for agent.py.
    pub extra_args: Vec<String>,
}

impl NodeAgentOptions {
    /// Serve `nodes`, binding only pods pinned to them.
    pub fn nodes(nodes: &[&str]) -> Self {
        NodeAgentOptions {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            run_images: Vec::new(),
            schedule_unpinned: false,
            extra_args: Vec::new(),
        }
    }
}

/// How long the agent gets to register its nodes and start watching pods.
const AGENT_READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long it gets to stop after SIGTERM (it kills its pods with at most 10 s grace).
const AGENT_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// A running test node agent; stopped with SIGTERM when dropped (a clean stop: it kills its
/// pods' processes and marks its nodes NotReady). If the test process dies, the agent still
/// gets SIGTERM (parent-death signal), and tests/cluster/stop.sh stops it through its pid file.
pub struct NodeAgent {
    pid: u32,
    nodes: Vec<String>,
    state_dir: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<Option<ExitStatus>>>,
}

impl NodeAgent {
    /// Starts `python3 tests/node-agent/agent.py` for `kubeconfig` with the snapcrypt binary
    /// under test and waits (deadline 60 s) for its `node-agent ready` line.
    pub async fn start(kubeconfig: &Path, options: NodeAgentOptions) -> NodeAgent {
        assert!(!options.nodes.is_empty(), "a node agent needs a node name");
        let state_dir = tempfile::Builder::new()
            .prefix("node-agent-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("node agent state dir")
            .keep();
        let stderr = std::fs::File::create(state_dir.join("node-agent.stderr")).unwrap();
        let repo = super::super::repo_root();
        let mut cmd = Command::new("python3");
        cmd.current_dir(&repo)
            .arg(repo.join("tests/node-agent/agent.py"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--snapcrypt-binary")
            .arg(env!("CARGO_BIN_EXE_snapcrypt"));
        for node in &options.nodes {
            cmd.args(["--node", node]);
        }
        for image in &options.run_images {
            cmd.args(["--run-image", image]);
        }
        if !options.schedule_unpinned {
            cmd.arg("--no-schedule-unpinned");
        }
        // A pid file where tests/cluster/stop.sh looks, in case this process is killed.
        if let Some(pids) = std::env::var_os("SNAPCRYPT_CLUSTER_DIR")
            .map(|d| PathBuf::from(d).join("pids"))
            .filter(|p| p.is_dir())
        {
            let file = format!("{}.pid", unique_name("node-agent", "e2e"));
            cmd.arg("--pid-file").arg(pids.join(file));
        }
        cmd.args(&options.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);

        let (pid, stdout, stop, keeper) = spawn_kept(cmd)
            .unwrap_or_else(|e| panic!("cannot start python3 tests/node-agent/agent.py: {e}"));
        let mut agent = NodeAgent {
            pid,
            nodes: options.nodes,
            state_dir,
            stop: Some(stop),
            keeper: Some(keeper),
        };

        // It prints one line when ready; a reader thread hands it over.
        let (line_tx, line_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(read.map(|_| line));
        });
        let problem = match tokio::time::timeout(AGENT_READY_DEADLINE, line_rx).await {
            Ok(Ok(Ok(line))) if line.trim() == "node-agent ready" => return agent,
            Ok(Ok(Ok(line))) if line.is_empty() => "exited before it was ready".to_string(),
            Ok(Ok(Ok(line))) => format!("printed {line:?} instead of \"node-agent ready\""),
            Ok(Ok(Err(e))) => format!("stdout could not be read: {e}"),
            Ok(Err(_)) => "stdout reader vanished".to_string(),
            Err(_) => format!("not ready within {AGENT_READY_DEADLINE:?}"),
        };
        let status = agent.stop_now();
        panic!(
            "test node agent (nodes {:?}) {problem}; exit: {status:?}\n--- stderr:\n{}\n--- {}:\n{}",
            agent.nodes,
            tail(&read_lossy(&agent.state_dir.join("node-agent.stderr")), 40),
            agent.state_dir.join("node-agent.log").display(),
            agent.log_tail(40),
        );
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The agent's state directory (`logs/`, `pvcs/`, `pods/`, `node-agent.log`); kept after
    /// the test for a look.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The local directory that plays PVC `namespace/claim` (tests may seed it directly).
    pub fn pvc_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        self.state_dir.join("pvcs").join(namespace).join(claim)
    }

    /// Everything container `container` of pod `namespace/pod` wrote (stdout and stderr,
    /// across restarts); empty if it never ran.
    pub fn pod_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        read_lossy(
            &self
                .state_dir
                .join("logs")
                .join(format!("{namespace}_{pod}_{container}.log")),
        )
    }

    /// The last `lines` lines of the agent's own log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&read_lossy(&self.state_dir.join("node-agent.log")), lines)
    }

    /// For failure messages: the tail of every container log of `namespace`, then the tail of
    /// the agent's own log.
    pub fn diagnostics(&self, namespace: &str) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.state_dir.join("logs"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{namespace}_")))
        });
        logs.sort();
        let mut out = String::new();
        for path in logs {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out += &format!("--- log of {name}:\n{}\n", tail(&read_lossy(&path), 30));
        }
        out += &format!("--- node agent log (tail):\n{}", self.log_tail(30));
        out
    }

    /// SIGTERM, wait (deadline), SIGKILL if it is still there; the exit status.
    fn stop_now(&mut self) -> Option<ExitStatus> {
        drop(self.stop.take());
        self.keeper.take().and_then(|k| k.join().ok().flatten())
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if self.keeper.is_none() {
            return; // stopped already (start failed)
        }
        let status = self.stop_now();
        if std::thread::panicking() {
            eprintln!(
                "node agent (nodes {:?}) stopped: {status:?}; its state is kept in {}",
                self.nodes,
                self.state_dir.display()
            );
        } else if status.is_some() {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

/// Spawns `cmd` from a thread of its own that outlives the caller's test thread and keeps the
/// child: the parent-death signal (SIGTERM) is tied to the thread that forked, so the child
/// gets it if this process dies, and not when some short-lived thread ends. Dropping the
/// returned sender stops the child (SIGTERM, then SIGKILL after the deadline); joining the
/// handle gives its exit status.
#[allow(clippy::type_complexity)]
fn spawn_kept(
    mut cmd: Command,
) -> io::Result<(
    u32,
    ChildStdout,
    mpsc::Sender<()>,
    JoinHandle<Option<ExitStatus>>,
)> {
    let (started_tx, started_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let keeper = std::thread::Builder::new()
        .name("node-agent-keeper".to_string())
        .spawn(move || {
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return None;
                }
            };
            let stdout = child.stdout.take().expect("piped stdout");
            let _ = started_tx.send(Ok((child.id(), stdout)));
            // Until a stop is asked for, or the owner is gone.
            let _ = stop_rx.recv();
            Some(terminate(&mut child, AGENT_STOP_DEADLINE))
        })?;
    let (pid, stdout) = started_rx
        .recv()
        .map_err(|_| io::Error::other("the keeper thread died"))??;
    Ok((pid, stdout, stop_tx, keeper))
}

/// SIGTERM to `child`, wait up to `deadline`, then SIGKILL.
fn terminate(child: &mut Child, deadline: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    // SAFETY: plain kill(2) on our own child's pid, which is not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "node agent (pid {}) ignored SIGTERM for {deadline:?}: SIGKILL",
        child.id()
    );
    let _ = child.kill();
    child.wait().expect("wait for the node agent")
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
