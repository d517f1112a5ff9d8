//! The chart's alert expressions evaluated against a scrape of the operator's /metrics: each
//! alert's `expr` read from charts/snapcrypt/templates/prometheusrule.yaml with the chart's
//! default values put in, and evaluated here.
//!
//! DOUBLE (tests/README.md): Prometheus does not run here (its binaries are not on the
//! registries this machine reaches), so the evaluator is this one: it evaluates exactly the
//! form snapcrypt's per-series alerts take, `AGG without (LABELS) (METRIC) OP NUMBER` with AGG
//! `max` or `min` and OP one of `>`, `<`, `==`, and panics on any other form, so an alert
//! rewritten into a form it cannot judge is noticed rather than passed.

use std::collections::BTreeMap;

use super::operator::Samples;
use super::repo_root;

/// One series an alert expression returns: its labels and value.
pub type Firing = Vec<(BTreeMap<String, String>, f64)>;

/// The `expr` of alert `name` in the chart, with the chart's defaults for `$perJob` and the
/// `$rule` tunables.
pub fn chart_expr(name: &str) -> String {
    let root = repo_root();
    let template =
        std::fs::read_to_string(root.join("charts/snapcrypt/templates/prometheusrule.yaml"))
            .expect("the PrometheusRule template");
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("charts/snapcrypt/values.yaml")).expect("values"),
    )
    .expect("values.yaml");
    let rule = &values["metrics"]["prometheusRule"];
    let per_job = template
        .lines()
        .find_map(|l| l.split("$perJob := \"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("$perJob in the template");
    let mut lines = template
        .lines()
        .skip_while(|l| l.trim() != format!("- alert: {name}"));
    lines
        .next()
        .unwrap_or_else(|| panic!("no alert {name} in the chart"));
    let expr: Vec<&str> = lines
        .skip_while(|l| l.trim() != "expr: |")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with("for:"))
        .collect();
    let mut expr = expr.join(" ").replace("{{ $perJob }}", per_job);
    while let Some(start) = expr.find("{{ $rule.") {
        let end = start + expr[start..].find("}}").expect("closed") + 2;
        let key = expr[start + 9..end - 2]
            .split_whitespace()
            .next()
            .expect("a tunable")
            .to_string();
        let value = rule[key.as_str()]
            .as_i64()
            .unwrap_or_else(|| panic!("values: {key}"));
        expr.replace_range(start..end, &value.to_string());
    }
    expr.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn unsupported<T>(expr: &str) -> T {
    panic!("the alert evaluator does not judge this form: {expr}")
}

/// Evaluate `expr` (the form above) over the samples `m`: the series it returns.
pub fn eval(expr: &str, m: &Samples) -> Firing {
    let (agg, rest) = expr
        .split_once(" without (")
        .unwrap_or_else(|| unsupported(expr));
    let (dropped, rest) = rest.split_once(") (").unwrap_or_else(|| unsupported(expr));
    let (metric, rest) = rest.split_once(") ").unwrap_or_else(|| unsupported(expr));
    let (op, number) = rest.split_once(' ').unwrap_or_else(|| unsupported(expr));
    let dropped: Vec<&str> = dropped.split(',').map(str::trim).collect();
    let number: f64 = number.trim().parse().unwrap_or_else(|_| unsupported(expr));
    let mut groups: BTreeMap<BTreeMap<String, String>, f64> = BTreeMap::new();
    for ((name, labels), value) in m {
        if name != metric.trim() {
            continue;
        }
        let kept: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| !dropped.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let slot = groups.entry(kept).or_insert(*value);
        *slot = match agg.trim() {
            "max" => slot.max(*value),
            "min" => slot.min(*value),
            _ => unsupported(expr),
        };
    }
    groups
        .into_iter()
        .filter(|(_, v)| match op {
            ">" => *v > number,
            "<" => *v < number,
            "==" => *v == number,
            _ => unsupported(expr),
        })
        .collect()
}
