//! The identity agent pods (every kind of run) run as: one ServiceAccount per BackupJob (owned
//! by it, annotated for a cloud's workload identity), whose own Role grants nothing; and per
//! run, a Role and RoleBinding owned by the Snapshot or Restore that let that ServiceAccount
//! read that one object and patch its status (`resourceNames`), for progress and the result.
//! An agent can never write another job's objects, nor a finished run's (its Role goes with
//! it). Built pure ([`agent_rbac`], [`run_rbac`]), listed in order by [`identity_changes`]
//! for `controller::execute` to apply.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::BackupJob;
use crate::api::destination::Destination;
use crate::controller::execute::Change;
use crate::controller::names::{MANAGED_BY, agent_service_account, job_labels};

/// Every rule any agent needs (for the chart's ClusterRole that states them for review):
/// read Snapshots and Restores, patch their status. The operator grants them per run, for
/// one object at a time ([`run_rules`]).
pub fn agent_rules() -> Vec<PolicyRule> {
    ["snapshots", "restores"]
        .into_iter()
        .flat_map(|r| run_rules(r, None))
        .collect()
}

/// What the agent of one run needs: get `resource` and get and patch its status, limited to
/// the object `name` (all of them with `None`).
pub fn run_rules(resource: &str, name: Option<&str>) -> Vec<PolicyRule> {
    let names = name.map(|n| vec![n.to_string()]);
    vec![
        PolicyRule {
            api_groups: Some(vec![crate::api::GROUP.into()]),
            resources: Some(vec![resource.into()]),
            verbs: vec!["get".into()],
            resource_names: names.clone(),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec![crate::api::GROUP.into()]),
            resources: Some(vec![format!("{resource}/status")]),
            verbs: vec!["get".into(), "patch".into()],
            resource_names: names,
            ..Default::default()
        },
    ]
}

/// The object a run's agent reports into: a Snapshot or a Restore.
pub struct RunObject<'a> {
    /// `snapshots` or `restores`.
    pub resource: &'static str,
    pub name: &'a str,
    pub uid: &'a str,
    /// Its controller owner reference (the Role and RoleBinding go with it).
    pub owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
}

impl<'a> RunObject<'a> {
    pub fn of<K: Resource<DynamicType = ()>>(obj: &'a K, resource: &'static str) -> Option<Self> {
        Some(RunObject {
            resource,
            name: obj.meta().name.as_deref()?,
            uid: obj.meta().uid.as_deref()?,
            owner: obj.controller_owner_ref(&())?,
        })
    }
}

/// The Role and RoleBinding that let `job`'s agent ServiceAccount read `run` and patch its
/// status, and nothing else; owned by the run. Named by the run's uid.
pub fn run_rbac(job: &BackupJob, run: &RunObject<'_>) -> (Role, RoleBinding) {
    let name = format!("snapcrypt-agent-run-{}", run.uid);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: job.namespace(),
        labels: Some(job_labels(&job.name_any())),
        owner_references: Some(vec![run.owner.clone()]),
        ..Default::default()
    };
    let sa = agent_service_account(&job.name_any());
    role_for_agent(&sa, meta, run_rules(run.resource, Some(run.name)))
}

/// A Role with `rules` and the RoleBinding that grants it to `job`'s agent ServiceAccount,
/// both with `meta` (the Role's name and owner).
fn role_for_agent(
    service_account: &str,
    meta: ObjectMeta,
    rules: Vec<PolicyRule>,
) -> (Role, RoleBinding) {
    let binding = RoleBinding {
        metadata: meta.clone(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: meta.name.clone().unwrap_or_default(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: service_account.to_string(),
            namespace: meta.namespace.clone(),
            api_group: None,
        }]),
    };
    let role = Role {
        metadata: meta,
        rules: Some(rules),
    };
    (role, binding)
}

/// What a run's agent needs applied before its pod, in order: `job`'s ServiceAccount, Role and
/// RoleBinding, then (for a run object) the run's own Role and RoleBinding; `stage` names them
/// in errors and metrics. Pure.
pub fn identity_changes(
    stage: &'static str,
    job: &BackupJob,
    run: Option<&RunObject<'_>>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    if let Some((sa, role, binding)) = agent_rbac(job) {
        changes.push(Change::apply(stage, &sa));
        changes.push(Change::apply(stage, &role));
        changes.push(Change::apply(stage, &binding));
    }
    if let Some(run) = run {
        let (role, binding) = run_rbac(job, run);
        changes.push(Change::apply(stage, &role));
        changes.push(Change::apply(stage, &binding));
    }
    changes
}

/// The Role and RoleBinding that let `job`'s agent ServiceAccount write the job's catalog
/// ConfigMap (get and patch that one ConfigMap, which the operator creates), owned by the job.
pub fn catalog_rbac(job: &BackupJob) -> (Role, RoleBinding) {
    let map = crate::controller::names::catalog_name(&job.name_any());
    let meta = ObjectMeta {
        name: Some(format!("snapcrypt-agent-{map}")),
        namespace: job.namespace(),
        labels: Some(job_labels(&job.name_any())),
        owner_references: job.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    };
    let rules = vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".into()]),
        verbs: vec!["get".into(), "patch".into()],
        resource_names: Some(vec![map]),
        ..Default::default()
    }];
    role_for_agent(&agent_service_account(&job.name_any()), meta, rules)
}

/// What the agent of a run with no BackupJob to lend its identity (a Restore with
/// spec.source) needs before its pod: a ServiceAccount of its own (`service_account`, with the
/// destination's workload identity), and a Role and RoleBinding that let it read `run` and
/// patch its status; all owned by the run. Pure.
pub fn own_identity_changes(
    stage: &'static str,
    service_account: &str,
    namespace: Option<String>,
    run: &RunObject<'_>,
    destination: &Destination,
) -> Vec<Change> {
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.clone(),
        labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
        owner_references: Some(vec![run.owner.clone()]),
        ..Default::default()
    };
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            annotations: workload_identity_annotations(destination),
            ..meta(service_account)
        },
        ..Default::default()
    };
    let (role, binding) = role_for_agent(
        service_account,
        meta(&format!("snapcrypt-agent-run-{}", run.uid)),
        run_rules(run.resource, Some(run.name)),
    );
    vec![
        Change::apply(stage, &sa),
        Change::apply(stage, &role),
        Change::apply(stage, &binding),
    ]
}

/// The annotations that tie the agent's ServiceAccount to a cloud identity: GKE Workload
/// Identity's Google service account, AKS Workload Identity's client id.
fn workload_identity_annotations(d: &Destination) -> Option<BTreeMap<String, String>> {
    let gcs = d
        .gcs
        .as_ref()
        .and_then(|g| g.workload_identity.as_ref())
        .map(|w| ("iam.gke.io/gcp-service-account", w.service_account.clone()));
    let azure = d
        .azure
        .as_ref()
        .and_then(|a| a.workload_identity.as_ref())
        .map(|w| ("azure.workload.identity/client-id", w.client_id.clone()));
    gcs.or(azure)
        .map(|(k, v)| BTreeMap::from([(k.to_string(), v)]))
}

/// ServiceAccount, Role and RoleBinding for `job`'s snapshot pods; None if the job has no uid.
pub fn agent_rbac(job: &BackupJob) -> Option<(ServiceAccount, Role, RoleBinding)> {
    let owner = job.controller_owner_ref(&())?;
    let name = agent_service_account(&job.name_any());
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: job.namespace(),
        labels: Some(job_labels(&job.name_any())),
        owner_references: Some(vec![owner]),
        ..Default::default()
    };
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            annotations: workload_identity_annotations(&job.spec.destination),
            ..meta.clone()
        },
        ..Default::default()
    };
    // Nothing for the job as a whole: each run grants its own object ([`run_rbac`]). Applied
    // empty so that a Role an older operator made with every Snapshot and Restore of the
    // namespace in it is narrowed on upgrade.
    let (role, binding) = role_for_agent(&name, meta, Vec::new());
    Some((sa, role, binding))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_privilege_and_owned_by_the_job() {
        let job = crate::controller::fixtures::job("");
        let (sa, role, rb) = agent_rbac(&job).expect("rbac");
        assert_eq!(sa.name_any(), "snapcrypt-agent-rs0");
        assert_eq!(sa.owner_references()[0].name, "rs0");
        assert_eq!(
            role.rules,
            Some(Vec::new()),
            "the job's own Role grants nothing"
        );
        // A run's Role: its one object, owned by it, bound to the job's ServiceAccount.
        let snap = crate::controller::fixtures::snapshot("rs0-1", "2026-11-27T10:00:00Z");
        let run = RunObject::of(&snap, "snapshots").expect("run");
        let (run_role, run_binding) = run_rbac(&job, &run);
        let verbs: Vec<String> = run_role
            .rules
            .as_ref()
            .expect("rules")
            .iter()
            .map(|r| format!("{:?} {:?} {:?}", r.resources, r.verbs, r.resource_names))
            .collect();
        assert_eq!(
            verbs,
            [
                "Some([\"snapshots\"]) [\"get\"] Some([\"rs0-1\"])",
                "Some([\"snapshots/status\"]) [\"get\", \"patch\"] Some([\"rs0-1\"])",
            ]
        );
        assert_eq!(run_role.owner_references()[0].uid, "uid-rs0-1");
        assert_eq!(
            run_binding.subjects.expect("subjects")[0].name,
            "snapcrypt-agent-rs0"
        );
        assert_eq!(rb.role_ref.name, "snapcrypt-agent-rs0");
        assert_eq!(
            rb.subjects.expect("subjects")[0].namespace.as_deref(),
            Some("db")
        );
    }

    #[test]
    fn a_workload_identity_annotates_the_agents_service_account() {
        let mut job = crate::controller::fixtures::job("");
        assert_eq!(agent_rbac(&job).unwrap().0.metadata.annotations, None);
        job.spec.destination = serde_json::from_value(serde_json::json!({"gcs": {
            "bucket": "b", "workloadIdentity": {"serviceAccount": "sa@p.iam.gserviceaccount.com"}}}))
        .unwrap();
        let sa = agent_rbac(&job).unwrap().0;
        assert_eq!(
            sa.annotations()
                .get("iam.gke.io/gcp-service-account")
                .map(String::as_str),
            Some("sa@p.iam.gserviceaccount.com")
        );
        job.spec.destination = serde_json::from_value(serde_json::json!({"azure": {
            "account": "acct", "container": "backups",
            "workloadIdentity": {"clientId": "00000000-0000-0000-0000-000000000001"}}}))
        .unwrap();
        let sa = agent_rbac(&job).unwrap().0;
        assert_eq!(
            sa.annotations()
                .get("azure.workload.identity/client-id")
                .map(String::as_str),
            Some("00000000-0000-0000-0000-000000000001")
        );
    }
}
