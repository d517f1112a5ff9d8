//! Values the chart must take, its renders, and reading the objects of a render.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::RENDER_ARGS;
use crate::tools::Helm;

/// Value sets the chart must take: the defaults, and each other branch of the templates.
pub(crate) const VALUE_SETS: [(&str, &str); 4] = [
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
dashboard: {enabled: true, annotations: {grafana_folder: Backups}}
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
pub(crate) fn values_file(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    fs::write(&path, yaml).unwrap();
    path
}

/// `helm template` of the chart with `values` (YAML), as release `snapcrypt` in
/// `snapcrypt-system`; CRDs included.
pub(crate) fn render(helm: Helm, name: &str, values: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = values_file(dir.path(), name, values);
    let mut args = RENDER_ARGS.to_vec();
    args.extend(["-f", file.to_str().unwrap()]);
    helm.ok(&args, None)
}

/// The objects of a multi-document YAML stream (empty documents left out).
pub(crate) fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("bad YAML: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

pub(crate) fn kind_name(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The one object of `kind` in `objs`.
pub(crate) fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind}, found {:?}",
        found.iter().map(|o| kind_name(o)).collect::<Vec<_>>()
    );
    found[0]
}

pub(crate) fn named<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind}/{name} among {:?}",
                objs.iter().map(kind_name).collect::<Vec<_>>()
            )
        })
}

pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}
