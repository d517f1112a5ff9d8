//! The identity agent pods (every kind of run) run as: one ServiceAccount per BackupJob, with
//! a Role that can only read Snapshots and Restores and patch their status (for progress).
//! Owned by the BackupJob. Built pure ([`agent_rbac`]), applied by [`apply_agent_identity`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::ObjectMeta;
use kube::{Api, Resource, ResourceExt};

use crate::api::BackupJob;
use crate::controller::names::{agent_service_account, job_labels};
use crate::controller::{Context, apply};

/// The rules the agent needs, and nothing more.
pub fn agent_rules() -> Vec<PolicyRule> {
    vec![
        PolicyRule {
            api_groups: Some(vec![crate::api::GROUP.into()]),
            resources: Some(vec!["snapshots".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec![crate::api::GROUP.into()]),
            resources: Some(vec!["snapshots/status".into()]),
            verbs: vec!["get".into(), "patch".into()],
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec![crate::api::GROUP.into()]),
            resources: Some(vec!["restores".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec![crate::api::GROUP.into()]),
            resources: Some(vec!["restores/status".into()]),
            verbs: vec!["get".into(), "patch".into()],
            ..Default::default()
        },
    ]
}

/// The annotations that tie the agent's ServiceAccount to a cloud identity: GKE Workload
/// Identity's Google service account, AKS Workload Identity's client id.
fn workload_identity_annotations(job: &BackupJob) -> Option<BTreeMap<String, String>> {
    let d = &job.spec.destination;
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
            annotations: workload_identity_annotations(job),
            ..meta.clone()
        },
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(agent_rules()),
    };
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: job.namespace(),
            api_group: None,
        }]),
    };
    Some((sa, role, binding))
}

/// Apply the agent's ServiceAccount, Role and RoleBinding for `job`. On failure, which object.
pub async fn apply_agent_identity(
    ctx: &Context,
    ns: &str,
    job: &BackupJob,
) -> Result<(), (&'static str, kube::Error)> {
    let Some((sa, role, binding)) = agent_rbac(job) else {
        return Ok(());
    };
    let client = &ctx.client;
    apply(&Api::<ServiceAccount>::namespaced(client.clone(), ns), &sa)
        .await
        .map_err(|e| ("ServiceAccount", e))?;
    apply(&Api::<Role>::namespaced(client.clone(), ns), &role)
        .await
        .map_err(|e| ("Role", e))?;
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        &binding,
    )
    .await
    .map_err(|e| ("RoleBinding", e))?;
    Ok(())
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
        let rules = role.rules.expect("rules");
        let verbs: Vec<String> = rules
            .iter()
            .map(|r| format!("{:?} {:?}", r.resources, r.verbs))
            .collect();
        assert_eq!(
            verbs,
            [
                "Some([\"snapshots\"]) [\"get\"]",
                "Some([\"snapshots/status\"]) [\"get\", \"patch\"]",
                "Some([\"restores\"]) [\"get\"]",
                "Some([\"restores/status\"]) [\"get\", \"patch\"]"
            ]
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
