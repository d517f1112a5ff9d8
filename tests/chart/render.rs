//! Offline: the chart's versions and CRDs, lint, valid renders, what each value set renders,
//! and the values it refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::rbac::role_triples_with_names;
use crate::support::repo_root;
use crate::tools::{
    HELMS, Helm, kubernetes_validate, output_text, validate_prometheus_operator_objects,
};
use crate::values::{VALUE_SETS, kind_name, named, objects, one, render, strings, values_file};
use crate::{CHART, KUBE_VERSIONS, RENDER_ARGS};

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
        let text = output_text(&out);
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
        // `helm test` (tests/chart/helm_test.rs)
        "ServiceAccount/snapcrypt-test",
        "Role/snapcrypt-test",
        "RoleBinding/snapcrypt-test",
        "Pod/snapcrypt-test",
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
    check_default_deployment(deploy);
    check_default_metrics_access(&objs, deploy);
    check_cluster_wide_render();
}

/// The default Deployment: one replica, never two at once, a restricted pod and container, the
/// operator's args, env, probes and port.
fn check_default_deployment(deploy: &Value) {
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
}

/// The metrics Service, the operator's RoleBinding in the release's namespace, and the
/// NetworkPolicy in front of /metrics.
fn check_default_metrics_access(objs: &[Value], deploy: &Value) {
    let service = one(objs, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http-metrics");
    assert_eq!(
        service["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"],
        "the metrics Service selects the operator's pods"
    );
    // Namespaced by default: the release's namespace watched, the rights bound there only.
    let binding = named(objs, "RoleBinding", "snapcrypt-operator");
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
    let np = one(objs, "NetworkPolicy");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"ports": [{"port": "http-metrics", "protocol": "TCP"}], "from": [{"podSelector": {}}]}])
    );
}

fn check_cluster_wide_render() {
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
fn other_values_render_as_asked() {
    check_ha_render();
    check_one_namespace_render();
    check_bring_your_own_rbac_render();
}

/// Three replicas with leader election: rolling updates, a Lease, a PDB, a ServiceMonitor.
fn check_ha_render() {
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
    assert_args_include(
        &args,
        &[
            "--agent-image=registry.example.com/snapcrypt-agent:0.1.0-rc1",
            "--leader-elect",
            "--leader-elect-lease=snapcrypt-operator",
        ],
    );
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
}

/// One namespace watched: a RoleBinding there instead of a ClusterRoleBinding; cluster-wide
/// only the reading of Nodes by name (cluster-scoped, so no RoleBinding can grant it).
fn check_one_namespace_render() {
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
        serde_json::json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["kube-system"], "verbs": ["get"]}
        ])
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
    let sa = named(&objs, "ServiceAccount", "backup-operator");
    assert_eq!(sa["metadata"]["name"], "backup-operator");
    assert_eq!(sa["metadata"]["annotations"]["example.com/role"], "backups");
    let c = &one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&c["args"]);
    assert_args_include(
        &args,
        &[
            "--namespace=mongodb",
            "--log-format=text",
            "--http-port=9090",
        ],
    );
    assert_eq!(c["ports"][0]["containerPort"], 9090);
}

/// Bring your own ServiceAccount and RBAC: the chart makes neither.
fn check_bring_your_own_rbac_render() {
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
    // `helm test` runs as the operator's own ServiceAccount.
    assert_eq!(
        named(&objs, "Pod", "backups-test")["spec"]["serviceAccountName"],
        "snapcrypt-operator"
    );
    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["metadata"]["name"], "backups-operator");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["serviceAccountName"],
        "snapcrypt-operator"
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

/// Every one of `want` is among the operator's `args`.
fn assert_args_include(args: &[String], want: &[&str]) {
    for want in want {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
}
