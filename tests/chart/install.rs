//! On the cluster: `helm install` and `helm uninstall` with each helm, and the operator's and
//! the agent's ServiceAccounts doing what the code does, and no more.

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

use crate::CHART;
use crate::notes::check_notes;
use crate::rbac::{AGENT_RULES, OPERATOR_DENIED, OPERATOR_RULES, triples};
use crate::support::cluster::{Cluster, api_error_code, cluster_or_skip, unique_name};
use crate::tools::Helm;

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
