//! `deploy/`: the default render with a header, its kustomization and namespace.
//! `SNAPCRYPT_UPDATE_DEPLOY=1 cargo test --test chart deploy_manifest` rewrites
//! `deploy/snapcrypt.yaml`.

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use serde_json::Value;

use crate::support::repo_root;
use crate::tools::Helm;
use crate::values::{kind_name, objects, strings};
use crate::{DEPLOY, RENDER_ARGS};

/// The command whose output `deploy/snapcrypt.yaml` is (after its header): the render without
/// the `helm test` hooks, which `kubectl apply` would run as ordinary objects.
fn deploy_args() -> Vec<&'static str> {
    let mut args = RENDER_ARGS.to_vec();
    args.push("--skip-tests");
    args
}

/// The header of deploy/snapcrypt.yaml, before the render.
fn deploy_header() -> String {
    format!(
        "# snapcrypt {}: the Helm chart charts/snapcrypt rendered with its default values, for\n\
         # `kubectl apply --server-side -k deploy/` (with deploy/namespace.yaml). Do not edit:\n\
         # `SNAPCRYPT_UPDATE_DEPLOY=1 cargo test --test chart` writes it, as\n\
         # helm {}\n",
        env!("CARGO_PKG_VERSION"),
        deploy_args().join(" ")
    )
}

#[test]
fn deploy_manifest_is_the_default_render() {
    let fresh = format!("{}{}", deploy_header(), Helm::V3.ok(&deploy_args(), None));
    let path = repo_root().join(DEPLOY);
    if std::env::var("SNAPCRYPT_UPDATE_DEPLOY").is_ok_and(|v| v == "1") {
        fs::write(&path, &fresh).unwrap();
    }
    let current = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "{DEPLOY} is not the chart's default render: refresh it with \
         `SNAPCRYPT_UPDATE_DEPLOY=1 cargo test --test chart deploy_manifest` (helm {})",
        deploy_args().join(" ")
    );

    // The kustomization lists the namespace and the render, and the namespace is the render's.
    let kustomization: Value = serde_yaml::from_str(
        &fs::read_to_string(repo_root().join("deploy/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        strings(&kustomization["resources"]),
        ["namespace.yaml", "snapcrypt.yaml"]
    );
    let ns: Value = serde_yaml::from_str(
        &fs::read_to_string(repo_root().join("deploy/namespace.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(ns["kind"], "Namespace");
    assert_eq!(ns["metadata"]["name"], "snapcrypt-system");
    // The namespace enforces the restricted Pod Security Standard, which the operator meets
    // (default_render_is_a_restricted_operator checks its security context).
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    // kubectl builds it, where kubectl is installed (the test cluster's build.sh installs it).
    if let Ok(out) = Command::new("kubectl")
        .args(["kustomize", "deploy"])
        .current_dir(repo_root())
        .output()
    {
        assert!(
            out.status.success(),
            "kubectl kustomize deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let built = objects(&String::from_utf8_lossy(&out.stdout));
        let kinds: BTreeSet<String> = built.iter().map(kind_name).collect();
        for want in [
            "Namespace/snapcrypt-system",
            "Deployment/snapcrypt-operator",
            "CustomResourceDefinition/backupjobs.snapcrypt.dev",
        ] {
            assert!(
                kinds.contains(want),
                "kubectl kustomize deploy lacks {want}"
            );
        }
    }
}
