//! The NOTES an install prints.

use serde_json::Value;

use crate::CHART;
use crate::support::repo_root;
use crate::tools::Helm;

/// The NOTES of an install of release `name` in `namespace` say how to check the operator,
/// what to apply next, and what uninstalling keeps.
pub(crate) fn check_notes(helm: Helm, install_json: &str, name: &str, namespace: &str) {
    let release: Value = serde_json::from_str(install_json).expect("helm install -o json");
    let notes = release["info"]["notes"].as_str().expect("notes");
    for want in [
        format!("kubectl -n {namespace} rollout status deployment/{name}-snapcrypt-operator"),
        "kubectl apply -f deploy/examples/kmipserver.yaml".into(),
        "kubectl apply -f deploy/examples/backupjob-pvc-kmip.yaml".into(),
        "kubectl get backupjobs,snapshots -A".into(),
        "keeps the CRDs".into(),
        format!("helm uninstall {name} -n {namespace}"),
        format!("helm test {name} -n {namespace}"),
    ] {
        assert!(
            notes.contains(&want),
            "{}: NOTES lack {want:?}:\n{notes}",
            helm.name()
        );
    }
    for example in [
        "kmipserver.yaml",
        "backupjob-pvc-kmip.yaml",
        "backupjob-s3-localkey.yaml",
    ] {
        assert!(repo_root().join("deploy/examples").join(example).is_file());
    }
}

/// Offline with helm 4 (helm 3's client-side dry run wants a cluster; the install tests check
/// its NOTES there).
#[test]
fn notes_say_what_to_do_next() {
    let out = Helm::V4.ok(
        &[
            "install",
            "backups",
            CHART,
            "--namespace",
            "snapcrypt-system",
            "--dry-run=client",
            "-o",
            "json",
        ],
        None,
    );
    check_notes(Helm::V4, &out, "backups", "snapcrypt-system");
}
