//! `helm test`: the chart's test hook (templates/tests/check.yaml) is a restricted pod running
//! `snapcrypt kubectl check` for this release's operator pods, as a ServiceAccount that may
//! only list pods and reach them through the API server; it is off with
//! `helmTest.enabled: false` and never in deploy/snapcrypt.yaml. `helm test` itself runs on
//! the test ground in tests/real_pods.rs (`the_chart_runs_the_operator_as_a_pod`).

use serde_json::Value;

use crate::rbac::{role_triples, triples};
use crate::tools::Helm;
use crate::values::{kind_name, named, objects, render, strings};

const HOOKS: [&str; 4] = [
    "ServiceAccount/snapcrypt-test",
    "Role/snapcrypt-test",
    "RoleBinding/snapcrypt-test",
    "Pod/snapcrypt-test",
];

fn hooks(objs: &[Value]) -> Vec<&Value> {
    objs.iter()
        .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"].is_string())
        .collect()
}

#[test]
fn helm_test_hook_is_a_restricted_check_of_the_release() {
    for helm in [Helm::V3, Helm::V4] {
        let objs = objects(&render(helm, "helm-test", ""));
        let found: Vec<String> = hooks(&objs).iter().map(|o| kind_name(o)).collect();
        assert_eq!(found, HOOKS, "{}: the test hooks", helm.name());
        for o in hooks(&objs) {
            let a = &o["metadata"]["annotations"];
            assert_eq!(a["helm.sh/hook"], "test", "{}", kind_name(o));
            // Removed when it passes; a failed pod stays for its log.
            assert_eq!(
                a["helm.sh/hook-delete-policy"],
                "before-hook-creation,hook-succeeded",
                "{}",
                kind_name(o)
            );
            assert_eq!(o["metadata"]["namespace"], "snapcrypt-system");
        }
        // The ServiceAccount and its rights exist before the pod runs.
        for o in &hooks(&objs)[..3] {
            assert_eq!(o["metadata"]["annotations"]["helm.sh/hook-weight"], "-1");
        }

        let role = named(&objs, "Role", "snapcrypt-test");
        assert_eq!(
            role_triples(role),
            triples(&[("", "pods", "list"), ("", "pods/proxy", "get")]),
            "the test's rights: list the operator pods, reach their /healthz"
        );
        let binding = named(&objs, "RoleBinding", "snapcrypt-test");
        assert_eq!(binding["subjects"][0]["name"], "snapcrypt-test");
        assert_eq!(binding["roleRef"]["name"], "snapcrypt-test");

        let pod = named(&objs, "Pod", "snapcrypt-test");
        let spec = &pod["spec"];
        assert_eq!(spec["serviceAccountName"], "snapcrypt-test");
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(spec["securityContext"]["runAsUser"], 65532);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &spec["containers"][0];
        assert_eq!(
            c["image"],
            named(&objs, "Deployment", "snapcrypt-operator")["spec"]["template"]["spec"]["containers"]
                [0]["image"]
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(
            strings(&c["securityContext"]["capabilities"]["drop"]),
            ["ALL"]
        );
        assert_eq!(
            strings(&c["args"]),
            [
                "kubectl",
                "check",
                "--namespace=snapcrypt-system",
                "--selector=app.kubernetes.io/instance=snapcrypt,app.kubernetes.io/component=operator",
            ]
        );
    }
}

#[test]
fn helm_test_hook_is_off_when_disabled() {
    let objs = objects(&render(
        Helm::V3,
        "no-helm-test",
        "helmTest: {enabled: false}",
    ));
    assert!(hooks(&objs).is_empty(), "{:?}", hooks(&objs));
    assert!(objs.iter().any(|o| o["kind"] == "Deployment"));
}
