//! The Grafana dashboard (dashboard.enabled): a ConfigMap the kube-prometheus-stack sidecar
//! loads, holding a dashboard current Grafana takes (schema version, unique panel ids, every
//! panel on the data-source variable) whose queries read only metrics the operator exports,
//! and which shows what #34 asks for per job.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::prometheus::metric_names_in;
use crate::tools::Helm;
use crate::values::{objects, one, render};

/// Every panel, rows' nested panels included.
fn all_panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The dashboard in a render with `values`, from its ConfigMap.
fn dashboard(values: &str) -> (Value, Value) {
    let objs = objects(&render(Helm::V3, "dashboard", values));
    let map = one(&objs, "ConfigMap").clone();
    let data = map["data"]
        .as_object()
        .expect("data")
        .values()
        .next()
        .expect("one dashboard");
    let d = serde_json::from_str(data.as_str().expect("text")).expect("dashboard JSON");
    (map, d)
}

#[test]
fn dashboard_is_a_valid_grafana_dashboard_on_exported_metrics() {
    let (map, d) = dashboard("dashboard: {enabled: true, annotations: {grafana_folder: Backups}}");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["namespace"], "snapcrypt-system");
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Backups");
    // Current Grafana: schema 36 or later (data sources by uid), a uid, unique panel ids.
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{}",
        d["schemaVersion"]
    );
    assert!(
        d["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    let panels = all_panels(&d);
    let ids: Vec<u64> = panels
        .iter()
        .map(|p| p["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "panel ids repeat: {ids:?}"
    );
    // A data-source variable of Prometheus, and every query on it.
    let vars = d["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus data-source variable"
    );
    let exported: BTreeSet<String> = snapcrypt::controller::metrics::metric_names()
        .into_iter()
        .collect();
    let mut read = BTreeSet::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().expect("title");
        assert!(
            p["gridPos"]["w"].as_u64().is_some_and(|w| w > 0 && w <= 24),
            "{title}: gridPos"
        );
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: data source"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{title}: a query's data source"
            );
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names_in(expr);
            let unknown: Vec<&String> = names.difference(&exported).collect();
            assert!(
                !names.is_empty() && unknown.is_empty(),
                "{title}: {expr} reads {unknown:?}"
            );
            read.extend(names);
        }
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"].as_str().expect("variable query");
        assert!(
            metric_names_in(q).is_subset(&exported),
            "variable {}: {q}",
            v["name"]
        );
    }
    // What it must show per job.
    for needed in [
        "snapcrypt_backupjob_last_success_timestamp_seconds",
        "snapcrypt_backupjob_schedule_period_seconds",
        "snapcrypt_backupjob_last_snapshot_duration_seconds",
        "snapcrypt_backupjob_last_snapshot_added_bytes",
        "snapcrypt_backupjob_last_fsync_lock_seconds",
        "snapcrypt_backupjob_last_verification_success",
        "snapcrypt_backupjob_last_restore_test_success",
        "snapcrypt_backupjob_master_key_age_seconds",
        "snapcrypt_backupjob_master_key_rotation_period_seconds",
        "snapcrypt_operator_reconcile_failures_total",
    ] {
        assert!(read.contains(needed), "no panel shows {needed}");
    }
}

#[test]
fn dashboard_renders_only_when_enabled() {
    for values in ["", "dashboard: {enabled: false}"] {
        let objs = objects(&render(Helm::V3, "no-dashboard", values));
        assert!(
            objs.iter().all(|o| o["kind"] != "ConfigMap"),
            "a dashboard ConfigMap without dashboard.enabled ({values:?})"
        );
    }
    let (map, _) = dashboard(
        "dashboard: {enabled: true, namespace: monitoring, label: my_dash, labelValue: on-call}",
    );
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["my_dash"], "on-call");
    // A misspelt value is refused by the schema.
    let out = Helm::V3.run(
        &[
            "template",
            "x",
            crate::CHART,
            "--set",
            "dashboard.enable=true",
        ],
        None,
    );
    assert!(!out.status.success(), "dashboard.enable was taken");
}
