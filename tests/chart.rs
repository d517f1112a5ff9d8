//! The Helm chart (`charts/snapcrypt`), the plain manifests rendered from it (`deploy/`) and the
//! Argo CD health checks (`docs/argocd.md`).
//!
//! Offline, with helm 3 and helm 4 (installed by `.ci/install-deps.sh` into
//! `$SNAPCRYPT_CACHE/bin`): lint, render, `kubernetes-validate --strict`, the values schema,
//! least-privilege RBAC, the CRDs and `deploy/snapcrypt.yaml` kept in step, and every health
//! script run by `lua5.1` (Argo CD's Lua is 5.1) against sample objects. Against the cluster of
//! `KUBECONFIG` (`./tests/run` starts one): `helm install` and `helm uninstall` with each helm,
//! and the operator's and the agent's ServiceAccounts doing what the code does, and no more.
//!
//! `SNAPCRYPT_UPDATE_DEPLOY=1 cargo test --test chart` rewrites `deploy/snapcrypt.yaml`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

use support::cluster::{Cluster, api_error_code, cluster_or_skip, unique_name};
use support::repo_root;

const CHART: &str = "charts/snapcrypt";
const DEPLOY: &str = "deploy/snapcrypt.yaml";
/// The command whose output `deploy/snapcrypt.yaml` is (after its header).
const RENDER_ARGS: [&str; 6] = [
    "template",
    "snapcrypt",
    CHART,
    "--namespace",
    "snapcrypt-system",
    "--include-crds",
];
/// Kubernetes versions the renders are validated against: the oldest and newest that
/// kubernetes-validate 1.37.0 has schemas for.
const KUBE_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

// ------------------------------------------------------------------------------------------
// Tools

/// helm 3 or helm 4, as `.ci/install-deps.sh` installs them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Helm {
    V3,
    V4,
}

const HELMS: [Helm; 2] = [Helm::V3, Helm::V4];

impl Helm {
    fn name(self) -> &'static str {
        match self {
            Helm::V3 => "helm3",
            Helm::V4 => "helm4",
        }
    }

    fn bin(self) -> PathBuf {
        let bin = support::cache_dir().join("bin").join(self.name());
        assert!(
            bin.is_file(),
            "{} is missing: run .ci/install-deps.sh (it installs helm 3 and helm 4 there)",
            bin.display()
        );
        bin
    }

    /// `helm ARGS` in the repository root, never touching a cluster unless `kubeconfig` is
    /// given.
    fn run(self, args: &[&str], kubeconfig: Option<&Path>) -> Output {
        let mut cmd = Command::new(self.bin());
        cmd.args(args).current_dir(repo_root());
        match kubeconfig {
            Some(k) => cmd.env("KUBECONFIG", k),
            None => cmd.env("KUBECONFIG", "/nonexistent/kubeconfig"),
        };
        cmd.output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.name()))
    }

    /// `helm ARGS`, which must succeed; returns stdout.
    fn ok(self, args: &[&str], kubeconfig: Option<&Path>) -> String {
        let out = self.run(args, kubeconfig);
        assert!(
            out.status.success(),
            "{} {} failed:\n{}{}",
            self.name(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("helm prints UTF-8")
    }
}

/// A path that `.ci/install-deps.sh` wrote into `$SNAPCRYPT_CACHE/services.env`, if any.
fn services_env(key: &str) -> Option<PathBuf> {
    let text = fs::read_to_string(support::cache_dir().join("services.env")).ok()?;
    let prefix = format!("export {key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| PathBuf::from(v.trim_matches('"')))
        .filter(|p| p.is_file())
}

/// kubernetes-validate in the test venv (services.env names it, or the venv's python).
fn kubernetes_validate() -> PathBuf {
    services_env("KUBERNETES_VALIDATE")
        .or_else(|| {
            let python = services_env("SNAPCRYPT_PYTHON")?;
            Some(python.with_file_name("kubernetes-validate")).filter(|p| p.is_file())
        })
        .expect("kubernetes-validate is not installed in the test venv: run .ci/install-deps.sh")
}

/// The Prometheus Operator's CRDs, vendored (each file's header names its source).
const PROMETHEUS_OPERATOR_CRDS: [&str; 2] = [
    "tests/fixtures/prometheus-operator/monitoring.coreos.com_prometheusrules.yaml",
    "tests/fixtures/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml",
];

/// The objects in `files` of the kinds the Prometheus Operator's CRDs define, checked against
/// their openAPIV3Schema with unknown fields refused (`tests/support/validate_cr.py`, in the test
/// venv: kubernetes-validate knows no CRD). Returns whether every one was valid, and at least one
/// was checked, with what it printed (`ok KIND/NAME`, or `KIND/NAME: PATH: ERROR`).
fn validate_prometheus_operator_objects(files: &[PathBuf]) -> (bool, String) {
    let python = services_env("SNAPCRYPT_PYTHON")
        .expect("the test venv's python is not installed: run .ci/install-deps.sh");
    let out = Command::new(python)
        .arg(repo_root().join("tests/support/validate_cr.py"))
        .args(PROMETHEUS_OPERATOR_CRDS.map(|crd| repo_root().join(crd)))
        .arg("--")
        .args(files)
        .output()
        .expect("run tests/support/validate_cr.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// lua5.1 (services.env names it; else on PATH).
fn lua() -> PathBuf {
    services_env("LUA")
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("lua5.1"))
                .find(|p| p.is_file())
        })
        .expect("lua5.1 is not installed: run .ci/install-deps.sh")
}

// ------------------------------------------------------------------------------------------
// Values and renders

/// Value sets the chart must take: the defaults, and each other branch of the templates.
const VALUE_SETS: [(&str, &str); 4] = [
    ("default", ""),
    (
        "ha-monitored",
        r#"
replicas: 3
leaderElection: {enabled: true}
podDisruptionBudget: {minAvailable: 2}
metrics:
  serviceMonitor: {enabled: true, interval: 1m, labels: {release: prometheus}}
  prometheusRule: {enabled: true, labels: {release: prometheus}}
image: {repository: registry.example.com/snapcrypt, tag: 0.1.0-rc1, pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
agent: {image: registry.example.com/snapcrypt-agent:0.1.0-rc1}
resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {cpu: "1", memory: 512Mi}}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]
priorityClassName: system-cluster-critical
podAnnotations: {example.com/team: storage}
"#,
    ),
    (
        "one-namespace",
        r#"
operator: {watchNamespace: mongodb, logFormat: text, logLevel: "snapcrypt=debug,info", httpPort: 9090}
agent: {env: {HTTPS_PROXY: "http://proxy.example:3128", NO_PROXY: "10.0.0.0/8,.svc"}}
serviceAccount: {name: backup-operator, annotations: {example.com/role: backups}}
metrics: {service: {enabled: false}}
"#,
    ),
    (
        "bring-your-own-rbac",
        r#"
serviceAccount: {create: false, name: snapcrypt-operator}
rbac: {create: false}
fullnameOverride: backups
"#,
    ),
];

/// A values file in `dir` with `yaml`, for `-f`.
fn values_file(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    fs::write(&path, yaml).unwrap();
    path
}

/// `helm template` of the chart with `values` (YAML), as release `snapcrypt` in
/// `snapcrypt-system`; CRDs included.
fn render(helm: Helm, name: &str, values: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = values_file(dir.path(), name, values);
    let mut args = RENDER_ARGS.to_vec();
    args.extend(["-f", file.to_str().unwrap()]);
    helm.ok(&args, None)
}

/// The objects of a multi-document YAML stream (empty documents left out).
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("bad YAML: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kind_name(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The one object of `kind` in `objs`.
fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind}, found {:?}",
        found.iter().map(|o| kind_name(o)).collect::<Vec<_>>()
    );
    found[0]
}

fn named<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind}/{name} among {:?}",
                objs.iter().map(kind_name).collect::<Vec<_>>()
            )
        })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// RBAC: what the operator and the agent do (src/controller/, src/cli/agent.rs)

/// The operator's rules, as (apiGroup, resource, verbs). Changing them is a deliberate act:
/// every verb here is one the operator's code uses (or, for kmipservers and restores, the
/// controllers to come), and nothing else.
const OPERATOR_RULES: &[(&str, &str, &str)] = &[
    ("snapcrypt.dev", "backupjobs", "get list watch"),
    ("snapcrypt.dev", "kmipservers", "get list watch"),
    ("snapcrypt.dev", "restores", "get list watch create delete"),
    (
        "snapcrypt.dev",
        "snapshots",
        "get list watch create patch delete",
    ),
    ("snapcrypt.dev", "snapshots/status", "get patch"),
    ("snapcrypt.dev", "restores/status", "get patch"),
    ("snapcrypt.dev", "backupjobs/status", "patch"),
    ("snapcrypt.dev", "kmipservers/status", "patch"),
    ("snapcrypt.dev", "backupjobs/finalizers", "update"),
    ("snapcrypt.dev", "snapshots/finalizers", "update"),
    ("snapcrypt.dev", "restores/finalizers", "update"),
    ("", "pods", "get list watch create patch delete"),
    ("", "secrets", "get"),
    (
        "",
        "persistentvolumeclaims",
        "get list watch create patch delete",
    ),
    (
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "list create delete",
    ),
    ("apps", "statefulsets", "get"),
    ("", "serviceaccounts", "create patch"),
    ("rbac.authorization.k8s.io", "roles", "create patch"),
    ("rbac.authorization.k8s.io", "rolebindings", "create patch"),
    ("networking.k8s.io", "networkpolicies", "create patch"),
    ("events.k8s.io", "events", "create patch"),
];

/// The agent's rules: read its Snapshot or Restore, report progress into its status.
const AGENT_RULES: &[(&str, &str, &str)] = &[
    ("snapcrypt.dev", "snapshots", "get"),
    ("snapcrypt.dev", "snapshots/status", "get patch"),
    ("snapcrypt.dev", "restores", "get"),
    ("snapcrypt.dev", "restores/status", "get patch"),
];

/// What the operator must not do: write what users apply (spec of BackupJobs, KmipServers,
/// Restores), delete anything of theirs, list Secrets, or reach beyond its kinds. (It deletes
/// Snapshots, but only those its BackupJob's retention policy has forgotten in the repository,
/// and the VolumeSnapshots and restored claims of its own volumeSnapshot captures, by uid.)
const OPERATOR_DENIED: &[(&str, &str, &str)] = &[
    ("snapcrypt.dev", "backupjobs", "patch"),
    ("snapcrypt.dev", "backupjobs", "update"),
    ("snapcrypt.dev", "backupjobs", "delete"),
    ("snapcrypt.dev", "kmipservers", "patch"),
    ("snapcrypt.dev", "restores", "patch"),
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "secrets", "create"),
    ("", "secrets", "delete"),
    ("", "pods/exec", "create"),
    ("apps", "statefulsets", "patch"),
    ("apps", "deployments", "create"),
    ("rbac.authorization.k8s.io", "clusterroles", "create"),
    ("rbac.authorization.k8s.io", "roles", "escalate"),
    ("rbac.authorization.k8s.io", "roles", "bind"),
];

/// (apiGroup, resource, verb) triples of a rule table.
fn triples(rules: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    rules
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .split_whitespace()
                .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

/// (apiGroup, resource, verb) triples of a rendered Role or ClusterRole, refusing wildcards
/// and resourceNames (a rule with resourceNames grants less than a triple says).
fn role_triples(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "{}: unexpected rule {rule}",
            kind_name(role)
        );
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    for part in [&g, &r, &v] {
                        assert!(
                            !part.contains('*'),
                            "{}: wildcard in rule {rule}",
                            kind_name(role)
                        );
                    }
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Offline tests

#[test]
fn chart_versions_follow_cargo_toml() {
    let chart: Value = serde_yaml::from_str(
        &fs::read_to_string(repo_root().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        chart["appVersion"], version,
        "charts/snapcrypt/Chart.yaml appVersion must be Cargo.toml's version"
    );
    assert_eq!(
        chart["version"], version,
        "charts/snapcrypt/Chart.yaml version moves with the release: set it to {version}"
    );
}

#[test]
fn chart_crds_are_the_repository_crds() {
    let listing = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    fs::read(&p).unwrap(),
                )
            })
            .collect()
    };
    let ours = listing(&repo_root().join("crds"));
    let chart = listing(&repo_root().join(CHART).join("crds"));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "charts/snapcrypt/crds/ must hold exactly the files of crds/: cp crds/*.yaml charts/snapcrypt/crds/"
    );
    for (name, bytes) in &ours {
        assert!(
            chart[name] == *bytes,
            "charts/snapcrypt/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/snapcrypt/crds/"
        );
    }
}

#[test]
fn lint_passes_with_helm_3_and_4() {
    let dir = tempfile::tempdir().unwrap();
    for helm in HELMS {
        for (name, values) in VALUE_SETS {
            let file = values_file(dir.path(), name, values);
            let out = helm.ok(
                &["lint", "--strict", CHART, "-f", file.to_str().unwrap()],
                None,
            );
            assert!(
                out.contains("0 chart(s) failed"),
                "{} lint with {name} values:\n{out}",
                helm.name()
            );
        }
    }
}

/// Every render passes kubernetes-validate --strict (unknown fields refused) for the oldest
/// and newest Kubernetes it knows, and helm 3 and helm 4 render the same.
#[test]
fn renders_are_valid_kubernetes_manifests() {
    let validate = kubernetes_validate();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, values) in VALUE_SETS {
        let three = render(Helm::V3, name, values);
        let four = render(Helm::V4, name, values);
        assert!(
            three == four,
            "helm 3 and helm 4 render the {name} values differently"
        );
        let path = dir.path().join(format!("{name}.rendered.yaml"));
        fs::write(&path, &three).unwrap();
        files.push(path);
    }
    for version in KUBE_VERSIONS {
        let out = Command::new(&validate)
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "kubernetes-validate --strict -k {version} refused a render:\n{text}"
        );
        // It knows no schema of a CRD's kind (checked below); everything else it checked.
        for line in text.lines().filter(|l| l.contains("WARN")) {
            assert!(
                line.contains("ServiceMonitor") || line.contains("PrometheusRule"),
                "unexpected: {line}"
            );
        }
    }
    let (valid, text) = validate_prometheus_operator_objects(&files);
    assert!(
        valid && text.contains("ok ServiceMonitor/") && text.contains("ok PrometheusRule/"),
        "a render's ServiceMonitor or PrometheusRule is not valid against the Prometheus \
         Operator's CRD:\n{text}"
    );
}

#[test]
fn default_render_is_a_restricted_operator() {
    let objs = objects(&render(Helm::V3, "default", ""));
    let kinds: BTreeSet<String> = objs.iter().map(kind_name).collect();
    let want: BTreeSet<String> = [
        "CustomResourceDefinition/backupjobs.snapcrypt.dev",
        "CustomResourceDefinition/kmipservers.snapcrypt.dev",
        "CustomResourceDefinition/restores.snapcrypt.dev",
        "CustomResourceDefinition/snapshots.snapcrypt.dev",
        "ServiceAccount/snapcrypt-operator",
        "ClusterRole/snapcrypt-operator",
        "ClusterRole/snapcrypt-agent",
        "RoleBinding/snapcrypt-operator",
        "ClusterRole/snapcrypt-operator-nodes",
        "ClusterRoleBinding/snapcrypt-operator-nodes",
        "Service/snapcrypt-metrics",
        "NetworkPolicy/snapcrypt-operator",
        "Deployment/snapcrypt-operator",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kinds, want, "objects of the default render");
    for o in &objs {
        if o["kind"] != "CustomResourceDefinition" && !kind_name(o).starts_with("Cluster") {
            assert_eq!(
                o["metadata"]["namespace"],
                "snapcrypt-system",
                "{}",
                kind_name(o)
            );
        }
    }

    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(
        deploy["spec"]["strategy"]["type"], "Recreate",
        "without leader election two operators must never overlap"
    );
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "snapcrypt-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(pod.get("imagePullSecrets").is_none());
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        format!("snapcrypt:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let args = strings(&c["args"]);
    assert_eq!(
        args,
        [
            "operator".to_string(),
            format!("--agent-image=snapcrypt:{}", env!("CARGO_PKG_VERSION")),
            "--http-port=8080".into(),
            "--http-bind=0.0.0.0".into(),
            "--log-format=json".into(),
            "--cluster-domain=cluster.local".into(),
            "--mongo-timeout=5".into(),
            "--namespace=snapcrypt-system".into(),
        ]
    );
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "POD_NAME names the Event reporter's instance"
    );
    assert_eq!(env["RUST_LOG"]["value"], "info");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http-metrics", "{probe}");
    }
    assert_eq!(c["ports"][0]["name"], "http-metrics");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/tmp", "a writable /tmp");
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    let service = one(&objs, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http-metrics");
    assert_eq!(
        service["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"],
        "the metrics Service selects the operator's pods"
    );
    // Namespaced by default: the release's namespace watched, the rights bound there only.
    let binding = named(&objs, "RoleBinding", "snapcrypt-operator");
    assert_eq!(binding["metadata"]["namespace"], "snapcrypt-system");
    assert_eq!(binding["roleRef"]["name"], "snapcrypt-operator");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "snapcrypt-operator", "namespace": "snapcrypt-system"}])
    );
    let args = strings(&deploy["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        args.iter().any(|a| a == "--namespace=snapcrypt-system"),
        "{args:?}"
    );
    // Who reaches /metrics: its port only, from the release's namespace only.
    let np = one(&objs, "NetworkPolicy");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"ports": [{"port": "http-metrics", "protocol": "TCP"}], "from": [{"podSelector": {}}]}])
    );
    // Every namespace only when asked for: a ClusterRoleBinding, no --namespace.
    let wide = objects(&render(Helm::V3, "wide", "operator: {clusterWide: true}"));
    let binding = named(&wide, "ClusterRoleBinding", "snapcrypt-operator");
    assert_eq!(binding["roleRef"]["name"], "snapcrypt-operator");
    let args =
        strings(&one(&wide, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "{args:?}"
    );
}

#[test]
fn rbac_is_exactly_what_the_operator_and_agent_do() {
    let objs = objects(&render(Helm::V3, "default", ""));
    let operator = role_triples(named(&objs, "ClusterRole", "snapcrypt-operator"));
    let agent = role_triples(named(&objs, "ClusterRole", "snapcrypt-agent"));
    assert_eq!(
        operator,
        triples(OPERATOR_RULES),
        "the operator's ClusterRole"
    );
    assert_eq!(agent, triples(AGENT_RULES), "the agent's ClusterRole");
    // The operator creates each job's agent Role: it may grant only what it holds.
    let missing: Vec<_> = agent.difference(&operator).collect();
    assert!(
        missing.is_empty(),
        "the operator cannot grant the agent {missing:?}"
    );
    for denied in triples(OPERATOR_DENIED) {
        assert!(
            !operator.contains(&denied),
            "the operator may not {denied:?}"
        );
    }
}

#[test]
fn other_values_render_as_asked() {
    // Three replicas with leader election: rolling updates, a Lease, a PDB, a ServiceMonitor.
    let objs = objects(&render(Helm::V3, "ha", VALUE_SETS[1].1));
    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["annotations"]["example.com/team"],
        "storage"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example.com/snapcrypt:0.1.0-rc1");
    assert_eq!(c["imagePullPolicy"], "Always");
    let args = strings(&c["args"]);
    for want in [
        "--agent-image=registry.example.com/snapcrypt-agent:0.1.0-rc1",
        "--leader-elect",
        "--leader-elect-lease=snapcrypt-operator",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    assert_eq!(c["resources"]["limits"]["cpu"], "1");
    let pdb = one(&objs, "PodDisruptionBudget");
    assert_eq!(
        pdb["apiVersion"], "policy/v1",
        "policy/v1 where the API serves it"
    );
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let monitor = one(&objs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "1m");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["honorLabels"], true,
        "the per-BackupJob metrics keep their namespace and job labels"
    );
    assert_eq!(
        one(&objs, "PrometheusRule")["metadata"]["labels"]["release"],
        "prometheus"
    );
    let lease = role_triples_with_names(named(&objs, "Role", "snapcrypt-leader-election"));
    assert_eq!(
        lease,
        BTreeSet::from([
            ("leases".into(), "create".into(), String::new()),
            ("leases".into(), "get".into(), "snapcrypt-operator".into()),
            (
                "leases".into(),
                "update".into(),
                "snapcrypt-operator".into()
            ),
            ("leases".into(), "patch".into(), "snapcrypt-operator".into()),
        ]),
        "leader election touches its one Lease"
    );
    named(&objs, "RoleBinding", "snapcrypt-leader-election");

    // One namespace watched: a RoleBinding there instead of a ClusterRoleBinding; cluster-wide
    // only the reading of Nodes by name (cluster-scoped, so no RoleBinding can grant it).
    let objs = objects(&render(Helm::V3, "one-namespace", VALUE_SETS[2].1));
    let cluster_wide: Vec<String> = objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding")
        .map(kind_name)
        .collect();
    assert_eq!(
        cluster_wide,
        vec!["ClusterRoleBinding/snapcrypt-operator-nodes".to_string()]
    );
    assert_eq!(
        named(&objs, "ClusterRole", "snapcrypt-operator-nodes")["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}])
    );
    assert!(
        objs.iter().all(|o| o["kind"] != "Service"),
        "metrics Service off"
    );
    let binding = named(&objs, "RoleBinding", "snapcrypt-operator");
    assert_eq!(binding["metadata"]["namespace"], "mongodb");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["subjects"][0]["name"], "backup-operator");
    assert_eq!(binding["subjects"][0]["namespace"], "snapcrypt-system");
    let sa = one(&objs, "ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "backup-operator");
    assert_eq!(sa["metadata"]["annotations"]["example.com/role"], "backups");
    let c = &one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&c["args"]);
    for want in [
        "--namespace=mongodb",
        "--log-format=text",
        "--http-port=9090",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    assert_eq!(c["ports"][0]["containerPort"], 9090);

    // Bring your own ServiceAccount and RBAC: the chart makes neither.
    let objs = objects(&render(Helm::V3, "byo", VALUE_SETS[3].1));
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ] {
        assert!(objs.iter().all(|o| o["kind"] != kind), "no {kind} expected");
    }
    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["metadata"]["name"], "backups-operator");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["serviceAccountName"],
        "snapcrypt-operator"
    );
}

/// (resource, verb, resourceName) triples of a Role whose rules may name resources.
fn role_triples_with_names(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let names = strings(&rule["resourceNames"]);
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for r in strings(&rule["resources"]) {
            for v in strings(&rule["verbs"]) {
                for n in &names {
                    out.insert((r.clone(), v.clone(), n.clone()));
                }
            }
        }
    }
    out
}

/// The alerts of the PrometheusRule (metrics.prometheusRule), in order; docs/OPERATIONS.md has
/// a section on each.
const ALERTS: [&str; 6] = [
    "SnapcryptNoRecentSnapshot",
    "SnapcryptRestoreTestFailed",
    "SnapcryptVerificationFoundDamage",
    "SnapcryptVerificationFailed",
    "SnapcryptMasterKeyOverdue",
    "SnapcryptSnapshotStuck",
];

/// The metric names (`snapcrypt_[a-z_]+`) a PromQL expression reads.
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    expr.match_indices("snapcrypt_")
        .map(|(i, _)| {
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect::<String>()
        })
        .collect()
}

#[test]
fn prometheus_rule_is_valid_and_alerts_on_exported_metrics() {
    let values = "metrics: {prometheusRule: {enabled: true, labels: {release: prometheus}}}";
    let three = render(Helm::V3, "rule", values);
    assert!(
        three == render(Helm::V4, "rule", values),
        "helm 3 and helm 4 render the PrometheusRule differently"
    );
    let objs = objects(&three);
    let rule = one(&objs, "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "snapcrypt-system");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");

    // Valid against the Prometheus Operator's CRD, unknown fields refused; and the check does
    // refuse a misspelt field and a malformed duration.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, obj: &Value| {
        let path = dir.path().join(format!("{name}.json"));
        fs::write(&path, serde_json::to_string(obj).unwrap()).unwrap();
        path
    };
    let (valid, text) = validate_prometheus_operator_objects(&[write("rule", rule)]);
    assert!(
        valid && text.contains("ok PrometheusRule/snapcrypt"),
        "the PrometheusRule is not valid against its CRD:\n{text}"
    );
    let expr = rule["spec"]["groups"][0]["rules"][0]["expr"].clone();
    let mut misspelt = rule.clone();
    misspelt["spec"]["groups"][0]["rules"][0]["exprr"] = expr;
    let mut bad_for = rule.clone();
    bad_for["spec"]["groups"][0]["rules"][0]["for"] = json!("10 minutes");
    for (name, broken, word) in [
        ("misspelt", misspelt, "exprr"),
        ("bad-for", bad_for, "10 minutes"),
    ] {
        let (valid, text) = validate_prometheus_operator_objects(&[write(name, &broken)]);
        assert!(
            !valid && text.contains(word),
            "the CRD check took a PrometheusRule with {word:?}:\n{text}"
        );
    }

    // The six alerts in one group, each reading only metrics the operator exports, with a
    // severity, words naming the BackupJob, and a runbook section in docs/OPERATIONS.md.
    let exported: BTreeSet<String> = snapcrypt::controller::metrics::metric_names()
        .into_iter()
        .collect();
    let operations = fs::read_to_string(repo_root().join("docs/OPERATIONS.md")).unwrap();
    let groups = rule["spec"]["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "snapcrypt");
    let rules = groups[0]["rules"].as_array().expect("rules");
    let alerts: Vec<&str> = rules
        .iter()
        .map(|r| r["alert"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(alerts, ALERTS, "the alerts of the PrometheusRule");
    for r in rules {
        let alert = r["alert"].as_str().unwrap();
        let expr = r["expr"].as_str().expect("expr");
        let read = metric_names_in(expr);
        assert!(
            !read.is_empty(),
            "{alert} reads no snapcrypt metric: {expr}"
        );
        let unknown: Vec<&String> = read.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{alert} reads {unknown:?}, which metric_names() does not list: {expr}"
        );
        assert!(r["labels"]["severity"].is_string(), "{alert}: no severity");
        assert!(
            r["annotations"]["summary"].is_string(),
            "{alert}: no summary"
        );
        assert!(
            r["annotations"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("{{ $labels.namespace }}/{{ $labels.job }}")),
            "{alert}: the description does not name the BackupJob"
        );
        assert_eq!(
            r["annotations"]["runbook_url"],
            format!("docs/OPERATIONS.md#{}", alert.to_lowercase())
        );
        assert!(
            operations.lines().any(|l| l == format!("### {alert}")),
            "docs/OPERATIONS.md has no section `### {alert}` (the runbook_url's anchor)"
        );
    }

    // Off by default.
    let objs = objects(&render(Helm::V3, "default", ""));
    assert!(
        objs.iter().all(|o| o["kind"] != "PrometheusRule"),
        "the default render has a PrometheusRule"
    );
}

/// The args the chart gives the operator, run through the real command line with `--help`
/// last: clap refuses an unknown flag or a bad value before it prints help.
fn operator_cli(args: &[String]) -> Output {
    Command::new(support::bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("run snapcrypt")
}

#[test]
fn operator_takes_the_args_the_chart_gives() {
    for (name, values) in [VALUE_SETS[0], VALUE_SETS[2]] {
        let objs = objects(&render(Helm::V3, name, values));
        let args =
            strings(&one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
        let out = operator_cli(&args);
        assert!(
            out.status.success(),
            "snapcrypt refuses the {name} chart args {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // With leader election: the operator takes the flags (--leader-elect and the Lease name the
    // chart's leader-election Role allows).
    let objs = objects(&render(Helm::V3, "ha", VALUE_SETS[1].1));
    let args =
        strings(&one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.iter().any(|a| a == "--leader-elect"), "{args:?}");
    let out = operator_cli(&args);
    assert!(
        out.status.success(),
        "snapcrypt refuses the leader-election chart args {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Values the schema or the templates refuse, and a word the refusal must contain.
const BAD_VALUES: &[(&str, &str)] = &[
    ("replicas: 0", "replicas"),
    ("replicas: two", "replicas"),
    (
        "image: {repository: snapcrypt, pullPolicy: Sometimes}",
        "pullPolicy",
    ),
    ("colour: blue", "colour"),
    ("agent: {env: {1BAD: x}}", "1BAD"),
    ("operator: {logFormat: xml}", "logFormat"),
    ("operator: {httpPort: 80}", "httpPort"),
    (
        "operator: {watchNamespace: Not_A_Namespace}",
        "watchNamespace",
    ),
    ("metrics: {serviceMonitor: {interval: soon}}", "interval"),
    (
        "metrics: {prometheusRule: {noSnapshotFactor: 0.5}}",
        "noSnapshotFactor",
    ),
    (
        "metrics: {prometheusRule: {for: {SnapcryptSnapshotStuck: soon}}}",
        "SnapcryptSnapshotStuck",
    ),
    (
        "metrics: {prometheusRule: {severity: {SnapcryptSnapshotStuk: page}}}",
        "SnapcryptSnapshotStuk",
    ),
    ("imagePullSecrets: [regcred]", "imagePullSecrets"),
    ("resources: {requests: {memory: lots}}", "memory"),
    // The templates: checks that span values.
    ("replicas: 2", "leaderElection.enabled"),
    (
        "{replicas: 2, leaderElection: {enabled: true}, podDisruptionBudget: {minAvailable: 2}}",
        "minAvailable",
    ),
    ("serviceAccount: {create: false}", "serviceAccount.name"),
    (
        "metrics: {service: {enabled: false}, serviceMonitor: {enabled: true}}",
        "metrics.service.enabled",
    ),
];

#[test]
fn bad_values_are_refused_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    for helm in HELMS {
        for (i, (values, word)) in BAD_VALUES.iter().enumerate() {
            let file = values_file(dir.path(), &format!("bad{i}"), values);
            let mut args = RENDER_ARGS.to_vec();
            args.extend(["-f", file.to_str().unwrap()]);
            let out = helm.run(&args, None);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{} accepted {values:?}", helm.name());
            assert!(
                err.contains(word),
                "{} refused {values:?} without naming {word:?}:\n{err}",
                helm.name()
            );
        }
    }
}

/// The NOTES of an install of release `name` in `namespace` say how to check the operator,
/// what to apply next, and what uninstalling keeps.
fn check_notes(helm: Helm, install_json: &str, name: &str, namespace: &str) {
    let release: Value = serde_json::from_str(install_json).expect("helm install -o json");
    let notes = release["info"]["notes"].as_str().expect("notes");
    for want in [
        format!("kubectl -n {namespace} rollout status deployment/{name}-snapcrypt-operator"),
        "kubectl apply -f deploy/examples/kmipserver.yaml".into(),
        "kubectl apply -f deploy/examples/backupjob-pvc-kmip.yaml".into(),
        "kubectl get backupjobs,snapshots -A".into(),
        "keeps the CRDs".into(),
        format!("helm uninstall {name} -n {namespace}"),
    ] {
        assert!(
            notes.contains(&want),
            "{}: NOTES lack {want:?}:\n{notes}",
            helm.name()
        );
    }
    for example in [
        "kmipserver.yaml",
        "backupjob-pvc-kmip.yaml",
        "backupjob-s3-localkey.yaml",
    ] {
        assert!(repo_root().join("deploy/examples").join(example).is_file());
    }
}

/// Offline with helm 4 (helm 3's client-side dry run wants a cluster; the install tests check
/// its NOTES there).
#[test]
fn notes_say_what_to_do_next() {
    let out = Helm::V4.ok(
        &[
            "install",
            "backups",
            CHART,
            "--namespace",
            "snapcrypt-system",
            "--dry-run=client",
            "-o",
            "json",
        ],
        None,
    );
    check_notes(Helm::V4, &out, "backups", "snapcrypt-system");
}

/// The header of deploy/snapcrypt.yaml, before the render.
fn deploy_header() -> String {
    format!(
        "# snapcrypt {}: the Helm chart charts/snapcrypt rendered with its default values, for\n\
         # `kubectl apply --server-side -k deploy/` (with deploy/namespace.yaml). Do not edit:\n\
         # `SNAPCRYPT_UPDATE_DEPLOY=1 cargo test --test chart` writes it, as\n\
         # helm {}\n",
        env!("CARGO_PKG_VERSION"),
        RENDER_ARGS.join(" ")
    )
}

#[test]
fn deploy_manifest_is_the_default_render() {
    let fresh = format!("{}{}", deploy_header(), Helm::V3.ok(&RENDER_ARGS, None));
    let path = repo_root().join(DEPLOY);
    if std::env::var("SNAPCRYPT_UPDATE_DEPLOY").is_ok_and(|v| v == "1") {
        fs::write(&path, &fresh).unwrap();
    }
    let current = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "{DEPLOY} is not the chart's default render: refresh it with \
         `SNAPCRYPT_UPDATE_DEPLOY=1 cargo test --test chart deploy_manifest` (helm {})",
        RENDER_ARGS.join(" ")
    );

    // The kustomization lists the namespace and the render, and the namespace is the render's.
    let kustomization: Value = serde_yaml::from_str(
        &fs::read_to_string(repo_root().join("deploy/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        strings(&kustomization["resources"]),
        ["namespace.yaml", "snapcrypt.yaml"]
    );
    let ns: Value = serde_yaml::from_str(
        &fs::read_to_string(repo_root().join("deploy/namespace.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(ns["kind"], "Namespace");
    assert_eq!(ns["metadata"]["name"], "snapcrypt-system");
    // The namespace enforces the restricted Pod Security Standard, which the operator meets
    // (default_render_is_a_restricted_operator checks its security context).
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    // kubectl builds it, where kubectl is installed (the test cluster's build.sh installs it).
    if let Ok(out) = Command::new("kubectl")
        .args(["kustomize", "deploy"])
        .current_dir(repo_root())
        .output()
    {
        assert!(
            out.status.success(),
            "kubectl kustomize deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let built = objects(&String::from_utf8_lossy(&out.stdout));
        let kinds: BTreeSet<String> = built.iter().map(kind_name).collect();
        for want in [
            "Namespace/snapcrypt-system",
            "Deployment/snapcrypt-operator",
            "CustomResourceDefinition/backupjobs.snapcrypt.dev",
        ] {
            assert!(
                kinds.contains(want),
                "kubectl kustomize deploy lacks {want}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Argo CD health checks (docs/argocd.md)

/// The `resource.customizations.health.snapcrypt.dev_<Kind>` scripts of the argocd-cm
/// ConfigMap shown in docs/argocd.md, by kind.
fn health_scripts() -> BTreeMap<String, String> {
    let doc = fs::read_to_string(repo_root().join("docs/argocd.md")).unwrap();
    let mut scripts = BTreeMap::new();
    let mut blocks = doc.split("```yaml\n").skip(1);
    for block in blocks.by_ref() {
        let yaml = block.split("\n```").next().unwrap();
        let value: Value = serde_yaml::from_str(yaml)
            .unwrap_or_else(|e| panic!("docs/argocd.md: a YAML block does not parse: {e}\n{yaml}"));
        if value["kind"] == "Application" {
            let path = value["spec"]["source"]["path"].as_str().unwrap_or_default();
            if path.starts_with("charts/") {
                assert!(
                    repo_root().join(path).join("Chart.yaml").is_file(),
                    "{path}"
                );
            }
        }
        if value["kind"] != "ConfigMap" {
            continue;
        }
        assert_eq!(value["metadata"]["name"], "argocd-cm");
        for (key, script) in value["data"].as_object().unwrap() {
            if let Some(kind) = key.strip_prefix("resource.customizations.health.snapcrypt.dev_") {
                scripts.insert(kind.to_string(), script.as_str().unwrap().to_string());
            }
        }
    }
    scripts
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `v` as a Lua table constructor, as Argo CD hands objects to health scripts.
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_value).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// Runs a health script on `obj` with lua5.1; returns (status, message).
fn health(lua: &Path, script: &str, obj: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal check = function()\n{script}\nend\nlocal hs = check()\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_value(obj)
    );
    let mut child = Command::new(lua)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lua5.1");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(program.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lua5.1 failed on {obj}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').expect("status and message");
    (status.to_string(), message.to_string())
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-27T03:00:00Z"})
}

/// An object of `kind` at generation 2 with `status` (None: no status yet).
fn sample(kind: &str, status: Option<Value>) -> Value {
    let mut o = json!({
        "apiVersion": "snapcrypt.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "rs0", "namespace": "mongodb", "generation": 2},
        "spec": {},
    });
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

#[test]
fn argocd_health_checks_follow_status() {
    let lua = lua();
    let scripts = health_scripts();
    assert_eq!(
        scripts.keys().collect::<Vec<_>>(),
        ["BackupJob", "KmipServer", "Restore", "Snapshot"],
        "docs/argocd.md has a health check per kind"
    );
    let ready = |msg: &str| cond("Ready", "True", "Valid", msg);
    let not_degraded = cond("Degraded", "False", "AsExpected", "AsExpected");
    let not_suspended = cond("Suspended", "False", "NotSuspended", "NotSuspended");
    let idle = cond("Progressing", "False", "Idle", "no Snapshot is running");
    // (kind, status, expected health, words of the message)
    let cases: Vec<(&str, Option<Value>, &str, &str)> = vec![
        (
            "BackupJob",
            None,
            "Progressing",
            "Waiting for the snapcrypt operator",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Ready", "observedGeneration": 1,
                        "conditions": [ready("next run at 03:00"), not_degraded]})),
            "Progressing",
            "latest spec",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Ready", "observedGeneration": 2,
                        "conditions": [ready("next run at 2026-11-28T03:00:00Z"), not_degraded, idle, not_suspended]})),
            "Healthy",
            "next run at 2026-11-28T03:00:00Z",
        ),
        (
            "BackupJob",
            Some(
                json!({"phase": "Running", "observedGeneration": 2, "runningSnapshot": "rs0-202611270300",
                        "conditions": [ready("next run at 04:00"), not_degraded,
                                       cond("Progressing", "True", "SnapshotRunning", "Snapshot rs0-202611270300 is running"),
                                       not_suspended]}),
            ),
            "Healthy",
            "Snapshot rs0-202611270300 is running",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Ready", "observedGeneration": 2,
                        "conditions": [ready("next run at 04:00"),
                                       cond("Degraded", "True", "LastSnapshotFailed", "Snapshot rs0-202611270300 failed: no secondary"),
                                       idle, not_suspended]})),
            "Degraded",
            "no secondary",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Waiting", "observedGeneration": 2,
                        "conditions": [cond("Ready", "False", "SecretNotFound", "Secret rs0-key not found"),
                                       cond("Degraded", "False", "SecretNotFound", "Secret rs0-key not found"),
                                       idle, not_suspended]})),
            "Progressing",
            "Secret rs0-key not found",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Failed", "observedGeneration": 2,
                        "conditions": [cond("Ready", "False", "SecretMissing", "Secret rs0-key not found"),
                                       cond("Degraded", "True", "SecretMissing", "Secret rs0-key not found"),
                                       idle, not_suspended]})),
            "Degraded",
            "Secret rs0-key not found",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Suspended", "observedGeneration": 2,
                        "conditions": [ready("suspended by spec.suspend"), not_degraded, idle,
                                       cond("Suspended", "True", "Suspended", "spec.suspend is true")]})),
            "Suspended",
            "spec.suspend",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Completed", "observedGeneration": 2,
                        "conditions": [ready("no schedule: one snapshot is taken"), not_degraded, idle, not_suspended]})),
            "Healthy",
            "one snapshot",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Pending", "observedGeneration": 2})),
            "Progressing",
            "Pending",
        ),
        ("Snapshot", None, "Progressing", "Waiting"),
        (
            "Snapshot",
            Some(
                json!({"phase": "Pending", "message": "pod rs0-1 is starting",
                        "conditions": [cond("Progressing", "True", "PodCreated", "pod rs0-1 is starting")]}),
            ),
            "Progressing",
            "pod rs0-1 is starting",
        ),
        (
            "Snapshot",
            Some(
                json!({"phase": "Running", "progressSummary": "41.5% 1.2 GiB/2.9 GiB, ETA 2m",
                        "message": "copying member rs0-1"}),
            ),
            "Progressing",
            "41.5%",
        ),
        (
            "Snapshot",
            Some(
                json!({"phase": "Succeeded", "message": "snapshot 3f2a in the repository: 12 files",
                        "conditions": [cond("Ready", "True", "Succeeded", "snapshot 3f2a"),
                                       cond("Failed", "False", "NotFailed", "NotFailed")]}),
            ),
            "Healthy",
            "snapshot 3f2a",
        ),
        (
            "Snapshot",
            Some(
                json!({"phase": "Failed", "message": "the master key 7 is not Active on the KMIP server",
                        "conditions": [cond("Failed", "True", "KeyNotActive", "the master key 7 is not Active")]}),
            ),
            "Degraded",
            "not Active",
        ),
        ("Restore", None, "Progressing", "Waiting"),
        (
            "Restore",
            Some(json!({"phase": "Running", "progressSummary": "10% 100 MiB/1 GiB"})),
            "Progressing",
            "10%",
        ),
        (
            "Restore",
            Some(json!({"phase": "Succeeded", "message": "restored and verified"})),
            "Healthy",
            "restored",
        ),
        (
            "Restore",
            Some(
                json!({"phase": "Failed", "conditions": [cond("Failed", "True", "TargetNotEmpty", "PVC data is not empty: set force")]}),
            ),
            "Degraded",
            "not empty",
        ),
        ("KmipServer", None, "Progressing", "Waiting"),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2})),
            "Progressing",
            "Connecting",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2, "activeKeyId": "7",
                        "conditions": [cond("Ready", "True", "Connected", "PyKMIP at kmip-1:5696, KMIP 1.4")]})),
            "Healthy",
            "Active master key 7",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2,
                        "conditions": [cond("Ready", "False", "Unreachable", "kmip-1:5696: connection refused")]})),
            "Degraded",
            "connection refused",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2,
                        "conditions": [cond("Ready", "Unknown", "Checking", "checking kmip-1:5696")]})),
            "Progressing",
            "checking",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2, "activeKeyId": "8",
                        "rewrap": {"targetKeyId": "8", "repositoriesDone": 1, "repositoriesTotal": 3, "dataKeysDone": 4},
                        "conditions": [cond("Ready", "True", "Connected", "ok")]})),
            "Progressing",
            "1 of 3 repositories",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2, "activeKeyId": "8",
                        "rewrap": {"targetKeyId": "8", "repositoriesDone": 3, "repositoriesTotal": 3,
                                   "dataKeysDone": 9, "completedAt": "2026-11-27T04:00:00Z"},
                        "conditions": [cond("Ready", "True", "Connected", "ok"),
                                       cond("Degraded", "False", "AsExpected", "AsExpected")]})),
            "Healthy",
            "Active master key 8",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2,
                        "conditions": [cond("Ready", "True", "Connected", "ok"),
                                       cond("Degraded", "True", "KeyNotActive", "master key 7 is Deactivated")]})),
            "Degraded",
            "Deactivated",
        ),
    ];
    for (kind, status, want, words) in cases {
        let obj = sample(kind, status);
        let (got, message) = health(&lua, &scripts[kind], &obj);
        assert_eq!(got, want, "{kind} health of {}", obj["status"]);
        assert!(
            message.contains(words),
            "{kind} health message {message:?} lacks {words:?} (status {})",
            obj["status"]
        );
    }
}

// ------------------------------------------------------------------------------------------
// On the cluster

/// A Helm release on the test cluster; uninstalled when dropped if the test did not.
struct Release<'a> {
    helm: Helm,
    name: String,
    namespace: String,
    cluster: &'a Cluster,
    installed: bool,
}

impl Release<'_> {
    fn uninstall(&mut self) {
        self.installed = false;
        self.helm.ok(
            &[
                "uninstall",
                self.name.as_str(),
                "--namespace",
                self.namespace.as_str(),
            ],
            Some(self.cluster.kubeconfig()),
        );
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.installed {
            let out = self.helm.run(
                &[
                    "uninstall",
                    self.name.as_str(),
                    "--namespace",
                    self.namespace.as_str(),
                ],
                Some(self.cluster.kubeconfig()),
            );
            if !out.status.success() {
                eprintln!(
                    "warning: helm uninstall {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// Whether `user` may `verb` `group/resource[/subresource]` in `namespace`.
async fn allowed(
    cluster: &Cluster,
    user: &str,
    namespace: &str,
    group: &str,
    resource: &str,
    verb: &str,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!(
                    "system:serviceaccounts:{}",
                    user.split(':').nth(2).unwrap_or_default()
                ),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_string()),
                group: Some(group.to_string()),
                resource: Some(resource),
                subresource,
                verb: Some(verb.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviews: Api<SubjectAccessReview> = Api::all(cluster.client.clone());
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.map(|s| s.allowed).unwrap_or(false)
}

/// An admin or ServiceAccount `Api` of any kind in `namespace`.
fn dynamic(client: &Client, namespace: &str, api_version: &str, kind: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let plural = format!("{}s", kind.to_ascii_lowercase());
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural),
    )
}

const SNAPSHOT: &str = "rs0-202611270300";

fn snapshots(client: &Client, namespace: &str) -> Api<DynamicObject> {
    dynamic(client, namespace, "snapcrypt.dev/v1alpha1", "Snapshot")
}

/// Installs the chart with `helm` into a fresh namespace, checks its objects and RBAC, and
/// uninstalls it.
async fn install_and_uninstall(helm: Helm) {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    // CRDs as this server takes them (1.20 drops CEL rules); Helm skips CRDs that exist.
    cluster.apply_crds().await;
    let ns = cluster.namespace(&format!("chart-{}", helm.name())).await;
    let mut release = Release {
        helm,
        name: unique_name("chart", helm.name()),
        namespace: ns.name().to_string(),
        cluster: &cluster,
        installed: true,
    };
    let mut args = vec![
        "install",
        release.name.as_str(),
        CHART,
        "--namespace",
        release.namespace.as_str(),
        // A PDB (policy/v1beta1 on 1.20, policy/v1 from 1.21) and the leader election Role.
        "--set",
        "replicas=2",
        "--set",
        "leaderElection.enabled=true",
        // The operator pods must not run: on the test ground's real nodes they would run as
        // operators of every namespace beside the ones other tests start. No node has this
        // label.
        "--set",
        "nodeSelector.snapcrypt\\.dev/chart-test=never",
        "-o",
        "json",
    ];
    if helm == Helm::V4 && !cluster.knows_crd_validation_rules() {
        // helm 4 applies CRDs server-side, which refuses x-kubernetes-validations before 1.23.
        args.push("--skip-crds");
    }
    let out = helm.ok(&args, Some(cluster.kubeconfig()));
    check_notes(helm, &out, &release.name, &release.namespace);

    let fullname = format!("{}-snapcrypt", release.name);
    let operator = format!("{fullname}-operator");
    check_installed_objects(&cluster, ns.name(), &fullname).await;
    check_operator_rbac(&cluster, ns.name(), &operator).await;
    act_as_operator_and_agent(&cluster, ns.name(), &operator).await;

    release.uninstall();
    let client = &cluster.client;
    let gone = |r: kube::Result<_>, what: &str| {
        assert_eq!(
            api_error_code(&r),
            Some(404),
            "helm uninstall removes {what}"
        );
    };
    gone(
        Api::<ClusterRole>::all(client.clone())
            .get(&operator)
            .await
            .map(drop),
        "the ClusterRole",
    );
    gone(
        ns.api::<Deployment>().get(&operator).await.map(drop),
        "the Deployment",
    );
    // What uninstall keeps: the CRDs, and the objects of users (here a Snapshot).
    Api::<CustomResourceDefinition>::all(client.clone())
        .get("snapshots.snapcrypt.dev")
        .await
        .expect("helm uninstall keeps the CRDs");
    snapshots(client, ns.name())
        .get(SNAPSHOT)
        .await
        .expect("helm uninstall keeps Snapshots");
}

/// The Deployment, ServiceAccount, Service, ClusterRoles, binding and PDB of the release.
async fn check_installed_objects(cluster: &Cluster, namespace: &str, fullname: &str) {
    let client = &cluster.client;
    let operator = format!("{fullname}-operator");
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(&operator)
        .await
        .expect("the operator Deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(operator.as_str()));
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("snapcrypt.dev/chart-test")
            .map(String::as_str),
        Some("never")
    );
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert_eq!(args[0], "operator");
    assert!(args.iter().any(|a| a == "--leader-elect"), "{args:?}");
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get(&operator)
        .await
        .expect("the operator ServiceAccount");
    Api::<Service>::namespaced(client.clone(), namespace)
        .get(&format!("{fullname}-metrics"))
        .await
        .expect("the metrics Service");
    let roles: Api<ClusterRole> = Api::all(client.clone());
    for name in [operator.clone(), format!("{fullname}-agent")] {
        roles
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("ClusterRole {name}: {e}"));
    }
    // Namespaced by default: the operator's rights bound in the release's namespace only.
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .get(&operator)
        .await
        .expect("the operator RoleBinding");
    assert!(
        Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt(&operator)
            .await
            .expect("read ClusterRoleBindings")
            .is_none(),
        "a ClusterRoleBinding by default"
    );
    let policy = if cluster.version_number() >= (1, 21) {
        "policy/v1"
    } else {
        "policy/v1beta1"
    };
    dynamic(client, namespace, policy, "PodDisruptionBudget")
        .get(fullname)
        .await
        .unwrap_or_else(|e| panic!("PodDisruptionBudget {policy} {fullname}: {e}"));
}

/// RBAC as the API server decides it for the operator's ServiceAccount, in a namespace of
/// backups (here the test's own): every rule it needs, none of what it must not do.
async fn check_operator_rbac(cluster: &Cluster, namespace: &str, operator: &str) {
    let user = format!("system:serviceaccount:{namespace}:{operator}");
    for (group, resource, verb) in triples(OPERATOR_RULES) {
        assert!(
            allowed(cluster, &user, namespace, &group, &resource, &verb).await,
            "the operator may not {verb} {group}/{resource}"
        );
    }
    for (group, resource, verb) in triples(OPERATOR_DENIED) {
        assert!(
            !allowed(cluster, &user, namespace, &group, &resource, &verb).await,
            "the operator may {verb} {group}/{resource}"
        );
    }
}

/// What the code does, with the ServiceAccounts' own tokens. The operator: a scheduled
/// Snapshot and its status by server-side apply, and the agent's ServiceAccount, Role and
/// RoleBinding (the API server allows these only if the operator holds every rule it grants).
/// The agent: progress into its Snapshot's status, and nothing else.
async fn act_as_operator_and_agent(cluster: &Cluster, namespace: &str, operator: &str) {
    let as_operator = cluster.service_account_client(namespace, operator).await;
    let apply = PatchParams::apply("snapcrypt-operator").force();
    let snap = json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
                      "metadata": {"name": SNAPSHOT}, "spec": {"backupJobRef": {"name": "rs0"}}});
    let operator_snapshots = snapshots(&as_operator, namespace);
    operator_snapshots
        .patch(SNAPSHOT, &apply, &Patch::Apply(&snap))
        .await
        .expect("the operator creates a Snapshot by server-side apply");
    let status = json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
                        "metadata": {"name": SNAPSHOT}, "status": {"phase": "Pending"}});
    operator_snapshots
        .patch_status(SNAPSHOT, &apply, &Patch::Apply(&status))
        .await
        .expect("the operator applies Snapshot status");

    let agent = "snapcrypt-agent-rs0";
    let rules: Vec<Value> = AGENT_RULES
        .iter()
        .map(|(g, r, v)| {
            json!({"apiGroups": [g], "resources": [r],
                   "verbs": v.split_whitespace().collect::<Vec<_>>()})
        })
        .collect();
    let rbac = "rbac.authorization.k8s.io/v1";
    for (api_version, kind, body) in [
        ("v1", "ServiceAccount", json!({})),
        (rbac, "Role", json!({"rules": rules})),
        (
            rbac,
            "RoleBinding",
            json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": agent},
                   "subjects": [{"kind": "ServiceAccount", "name": agent, "namespace": namespace}]}),
        ),
    ] {
        let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": agent}});
        obj.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        dynamic(&as_operator, namespace, api_version, kind)
            .patch(agent, &apply, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("the operator cannot apply the agent's {kind}: {e}"));
    }

    let as_agent = cluster.service_account_client(namespace, agent).await;
    let agent_snapshots = snapshots(&as_agent, namespace);
    let agent_apply = PatchParams::apply("snapcrypt-agent").force();
    let progress = json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
                          "metadata": {"name": SNAPSHOT},
                          "status": {"progressSummary": "10% 1 MiB/10 MiB"}});
    agent_snapshots
        .patch_status(SNAPSHOT, &agent_apply, &Patch::Apply(&progress))
        .await
        .expect("the agent reports progress");
    agent_snapshots
        .get(SNAPSHOT)
        .await
        .expect("the agent reads its Snapshot");
    let spec_write = agent_snapshots
        .patch(SNAPSHOT, &agent_apply, &Patch::Apply(&snap))
        .await;
    assert_eq!(
        api_error_code(&spec_write),
        Some(403),
        "the agent may not write a Snapshot"
    );
    let listed = agent_snapshots.list(&Default::default()).await;
    assert_eq!(
        api_error_code(&listed),
        Some(403),
        "the agent may not list Snapshots"
    );
}

#[tokio::test]
async fn helm_3_installs_and_uninstalls_on_the_cluster() {
    install_and_uninstall(Helm::V3).await;
}

#[tokio::test]
async fn helm_4_installs_and_uninstalls_on_the_cluster() {
    install_and_uninstall(Helm::V4).await;
}
