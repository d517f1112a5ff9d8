//! The PrometheusRule: valid against the Prometheus Operator's CRD, alerting only on metrics
//! the operator exports, each alert with a runbook section.

use std::collections::BTreeSet;
use std::fs;

use serde_json::{Value, json};

use crate::support::repo_root;
use crate::tools::{Helm, validate_prometheus_operator_objects};
use crate::values::{objects, one, render};

/// The alerts of the PrometheusRule (metrics.prometheusRule), in order; docs/OPERATIONS.md has
/// a section on each.
const ALERTS: [&str; 9] = [
    "SnapcryptNoRecentSnapshot",
    "SnapcryptRestoreTestFailed",
    "SnapcryptVerificationFoundDamage",
    "SnapcryptVerificationFailed",
    "SnapcryptMasterKeyOverdue",
    "SnapcryptSnapshotStuck",
    "SnapcryptCopyLagging",
    "SnapcryptCopyFailed",
    "SnapcryptRetentionFailed",
];

/// The metric names (`snapcrypt_[a-z_]+`) a PromQL expression reads.
pub(crate) fn metric_names_in(expr: &str) -> BTreeSet<String> {
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
