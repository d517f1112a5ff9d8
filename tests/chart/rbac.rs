//! RBAC: what the operator and the agent do (src/controller/, src/cli/agent.rs), and the
//! rendered roles granting exactly that.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::tools::Helm;
use crate::values::{kind_name, named, objects, render, strings};

/// The operator's rules, as (apiGroup, resource, verbs). Changing them is a deliberate act:
/// every verb here is one the operator's code uses (or, for kmipservers and restores, the
/// controllers to come), and nothing else.
pub(crate) const OPERATOR_RULES: &[(&str, &str, &str)] = &[
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
    ("", "configmaps", "get create patch delete"),
];

/// The agent's rules: read its Snapshot or Restore, report progress into its status.
pub(crate) const AGENT_RULES: &[(&str, &str, &str)] = &[
    ("snapcrypt.dev", "snapshots", "get"),
    ("snapcrypt.dev", "snapshots/status", "get patch"),
    ("snapcrypt.dev", "restores", "get"),
    ("snapcrypt.dev", "restores/status", "get patch"),
    ("", "configmaps", "get patch"),
];

/// What the operator must not do: write what users apply (spec of BackupJobs, KmipServers,
/// Restores), delete anything of theirs, list Secrets, or reach beyond its kinds. (It deletes
/// Snapshots, but only those its BackupJob's retention policy has forgotten in the repository,
/// and the VolumeSnapshots and restored claims of its own volumeSnapshot captures, by uid.)
pub(crate) const OPERATOR_DENIED: &[(&str, &str, &str)] = &[
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
pub(crate) fn triples(rules: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
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
pub(crate) fn role_triples(role: &Value) -> BTreeSet<(String, String, String)> {
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

/// (resource, verb, resourceName) triples of a Role whose rules may name resources.
pub(crate) fn role_triples_with_names(role: &Value) -> BTreeSet<(String, String, String)> {
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
