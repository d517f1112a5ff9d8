//! Operator end-to-end helpers: the operator binary as a process, objects created as a user
//! would, a fake replica-set member (scenery pod with a data PVC), Events of an object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use super::cluster::{TestNamespace, wait_for};
use super::real_nodes::{DEDICATED_TAINT, IMAGE, PAUSE_IMAGE, pod_logs, volume_dir};

/// Deadline for anything the operator or a snapshot pod does.
pub const LONG: Duration = Duration::from_secs(120);

/// The operator binary, watching one namespace; killed when dropped.
pub struct Operator(Child, u16);

impl Operator {
    pub fn start(kubeconfig: &Path, namespace: &str) -> Operator {
        Self::start_with(kubeconfig, namespace, &[])
    }

    /// Start with extra operator flags.
    pub fn start_with(kubeconfig: &Path, namespace: &str, extra: &[&str]) -> Operator {
        Self::start_with_image(kubeconfig, namespace, IMAGE, extra)
    }

    /// Start with the agent image `image` and extra operator flags.
    pub fn start_with_image(
        kubeconfig: &Path,
        namespace: &str,
        image: &str,
        extra: &[&str],
    ) -> Operator {
        let port = super::free_port();
        let child = Command::new(super::bin())
            .args([
                "operator",
                "--namespace",
                namespace,
                "--http-port",
                &port.to_string(),
                "--http-bind",
                "127.0.0.1",
                "--agent-image",
                image,
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("SNAPCRYPT_TEST_OPERATOR_LOG")
                    .unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("start the operator");
        Operator(child, port)
    }
}

impl Operator {
    /// The operator process's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// What the operator's /metrics serves now (plain HTTP on loopback).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut conn =
            std::net::TcpStream::connect(("127.0.0.1", self.1)).expect("connect to /metrics");
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .expect("request /metrics");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read /metrics");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "{head}"
        );
        body.to_string()
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The operator as the Helm chart runs it: `helm install` of charts/snapcrypt into `ns`
/// (watching only `ns`), the operator a pod of the chart's Deployment with the chart's
/// ServiceAccount and RBAC, from the test image (also its agents' image). Uninstalled on drop
/// (its ClusterRole and binding are cluster-wide).
pub struct ChartOperator {
    pub release: String,
    namespace: String,
    /// The operator pod, once Ready.
    pub pod: Pod,
}

impl ChartOperator {
    pub async fn install(ns: &TestNamespace) -> ChartOperator {
        let helm = super::cache_dir().join("bin/helm3");
        assert!(
            helm.is_file(),
            "{} missing: run .ci/install-deps.sh",
            helm.display()
        );
        let (repo, tag) = IMAGE.rsplit_once(':').expect("image tag");
        let release = super::cluster::unique_name("op", "chart");
        let out = Command::new(&helm)
            .args(["install", &release, "charts/snapcrypt", "--skip-crds"])
            .args(["--namespace", ns.name()])
            .args(["--set", &format!("image.repository={repo}")])
            .args(["--set", &format!("image.tag={tag}")])
            .args(["--set", "image.pullPolicy=Never"])
            .args(["--set", &format!("operator.watchNamespace={}", ns.name())])
            .current_dir(super::repo_root())
            .output()
            .expect("run helm");
        assert!(
            out.status.success(),
            "helm install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut chart = ChartOperator {
            release,
            namespace: ns.name().to_string(),
            pod: Pod::default(),
        };
        let pods: Api<Pod> = ns.api();
        chart.pod = super::cluster::eventually("the operator pod to be ready", LONG, || async {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .ok_or_else(|| format!("no ready operator pod yet\n{}", pod_logs(ns.name())))
        })
        .await;
        chart
    }
}

impl ChartOperator {
    /// `helm test` of the release (the chart's `kubectl snapcrypt check` hook): its output,
    /// and whether it passed.
    pub fn helm_test(&self) -> (bool, String) {
        let out = Command::new(super::cache_dir().join("bin/helm3"))
            .args(["test", &self.release, "--namespace", &self.namespace])
            .args(["--timeout", "3m"])
            .output()
            .expect("run helm test");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for ChartOperator {
    fn drop(&mut self) {
        let _ = Command::new(super::cache_dir().join("bin/helm3"))
            .args(["uninstall", &self.release, "--namespace", &self.namespace])
            .output();
    }
}

pub async fn create<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create")
}

/// A member pod on `node` with its data claim `mongo-data-NAME` on that node's disk (the
/// provisioner double's default class), labelled `app: rs-e2e`. Its container is the pause
/// image: mongod cannot run here (tests/README.md), so the test fills the dbPath. Returns the
/// volume's directory on this machine.
pub async fn member(ns: &TestNamespace, name: &str, node: &str) -> PathBuf {
    member_pod(ns, name, node, false).await
}

/// [`member`] on its node's network: its pod IP is the node's address, where a test double
/// of mongod can listen from this machine.
pub async fn member_on_host_network(ns: &TestNamespace, name: &str, node: &str) -> PathBuf {
    member_pod(ns, name, node, true).await
}

async fn member_pod(ns: &TestNamespace, name: &str, node: &str, host_network: bool) -> PathBuf {
    let claim = format!("mongo-data-{name}");
    create::<PersistentVolumeClaim>(
        &ns.api(),
        json!({"metadata": {"name": claim}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    create::<Pod>(
        &ns.api(),
        json!({
            "metadata": {"name": name, "labels": {"app": "rs-e2e"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [{"key": DEDICATED_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                "hostNetwork": host_network,
                "containers": [{"name": "mongod", "image": PAUSE_IMAGE, "imagePullPolicy": "Never",
                    "volumeMounts": [{"name": "mongo-data", "mountPath": "/data/db"}]}],
                "volumes": [{"name": "mongo-data", "persistentVolumeClaim": {"claimName": claim}}],
            },
        }),
    )
    .await;
    let pods: Api<Pod> = ns.api();
    wait_for(&pods, name, "the member pod to run", LONG, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    volume_dir(ns, &claim).await
}

/// A new local master key in `dir`/key.json, made as a user makes one, and the Secret
/// `rs0-key` holding it in `ns`. Returns the key file's path.
pub async fn key_secret(ns: &TestNamespace, dir: &Path) -> PathBuf {
    let key = dir.join("key.json");
    super::ok(&["key", "new", "--out", &key.display().to_string()], &[]);
    let text = std::fs::read_to_string(&key).expect("key");
    create::<k8s_openapi::api::core::v1::Secret>(
        &ns.api(),
        json!({"metadata": {"name": "rs0-key"}, "stringData": {"key": text}}),
    )
    .await;
    key
}

/// A claim `name` of the provisioner double's class `class` (`None`: the default, a disk of
/// the node of the first pod that mounts it).
pub async fn claim(ns: &TestNamespace, name: &str, class: Option<&str>) {
    let mut spec =
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
    if let Some(class) = class {
        spec["storageClassName"] = json!(class);
    }
    create::<PersistentVolumeClaim>(&ns.api(), json!({"metadata": {"name": name}, "spec": spec}))
        .await;
}

/// (reason, note) of the Events about `name`.
pub async fn events_for(ns: &TestNamespace, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = ns.api();
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .inspect(|(reason, note)| {
            super::plain::assert_plain(&format!("Event {reason} about {name}"), note)
        })
        .collect()
}

/// Wait until an Event with `reason` about `name` exists, and return its note. Controllers
/// post Events after they write status, so a test that has just seen the status must wait
/// for the Event rather than list once (the race that failed CI once for "Rotated").
pub async fn wait_for_event(ns: &TestNamespace, name: &str, reason: &str) -> String {
    let what = format!("an Event {reason} about {name}");
    super::cluster::eventually(&what, LONG, || async {
        let events = events_for(ns, name).await;
        events
            .iter()
            .find(|(r, _)| r == reason)
            .map(|(_, note)| note.clone())
            .ok_or_else(|| format!("the Events so far: {events:?}"))
    })
    .await
}

/// Condition `type_` of a Snapshot's status as "STATUS REASON: MESSAGE" (empty if absent).
pub fn snapshot_condition(st: &snapcrypt::api::SnapshotStatus, type_: &str) -> String {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| format!("{} {}: {}", c.status, c.reason, c.message))
        .unwrap_or_default()
}

/// Whether a Snapshot has finished (succeeded or failed).
pub fn snapshot_finished(s: &snapcrypt::api::Snapshot) -> bool {
    use snapcrypt::api::snapshot::RunPhase;
    s.status
        .as_ref()
        .is_some_and(|st| matches!(st.phase, RunPhase::Succeeded | RunPhase::Failed))
}

/// A BackupJob's `spec.source` for the test members (label app=rs-e2e, volume mongo-data),
/// copying member `member`.
pub fn member_source(member: &str) -> serde_json::Value {
    json!({"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
           "syncSource": {"mode": "member", "member": member}})
}

/// Whether a Restore has ended (Succeeded or Failed).
pub fn restore_finished(r: &snapcrypt::api::Restore) -> bool {
    use snapcrypt::api::snapshot::RunPhase;
    r.status
        .as_ref()
        .is_some_and(|st| matches!(st.phase, RunPhase::Succeeded | RunPhase::Failed))
}

/// Wait until Snapshot `name` finishes, and require that it succeeded; failures carry the
/// container logs of the namespace's pods.
pub async fn wait_for_success(
    snaps: &Api<snapcrypt::api::Snapshot>,
    name: &str,
    ns: &TestNamespace,
) -> snapcrypt::api::SnapshotStatus {
    use snapcrypt::api::snapshot::RunPhase;
    let snap = super::cluster::try_wait_for(
        snaps,
        name,
        "the Snapshot to finish",
        LONG,
        snapshot_finished,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pod_logs(ns.name())));
    let st = snap.status.clone().unwrap_or_default();
    assert_eq!(
        st.phase,
        RunPhase::Succeeded,
        "{st:?}\n{}",
        pod_logs(ns.name())
    );
    st
}

/// The samples of a /metrics text as (name, labels) -> value.
pub type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

pub fn parse_metrics(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.insert((name.to_string(), labels), value.parse().expect("value"));
    }
    out
}

/// The value of `name` for BackupJob `ns`/`job` (fails the test if it is absent).
pub fn job_sample(m: &Samples, name: &str, ns: &str, job: &str) -> f64 {
    let labels = BTreeMap::from([("namespace".into(), ns.into()), ("job".into(), job.into())]);
    *m.get(&(name.to_string(), labels))
        .unwrap_or_else(|| panic!("no {name} for {ns}/{job} in /metrics"))
}
