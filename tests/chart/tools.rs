//! The tools the tests run: helm 3 and helm 4, kubernetes-validate, the Prometheus Operator
//! CRD check and lua5.1.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{self, repo_root};

/// helm 3 or helm 4, as `.ci/install-deps.sh` installs them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Helm {
    V3,
    V4,
}

pub(crate) const HELMS: [Helm; 2] = [Helm::V3, Helm::V4];

impl Helm {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Helm::V3 => "helm3",
            Helm::V4 => "helm4",
        }
    }

    pub(crate) fn bin(self) -> PathBuf {
        let bin = support::cache_dir().join("bin").join(self.name());
        assert!(
            bin.is_file(),
            "{} is missing: run .ci/install-deps.sh (it installs helm 3 and helm 4 there)",
            bin.display()
        );
        bin
    }

    /// `helm ARGS` in the repository root, never touching a cluster unless `kubeconfig` is
    /// given.
    pub(crate) fn run(self, args: &[&str], kubeconfig: Option<&Path>) -> Output {
        let mut cmd = Command::new(self.bin());
        cmd.args(args).current_dir(repo_root());
        match kubeconfig {
            Some(k) => cmd.env("KUBECONFIG", k),
            None => cmd.env("KUBECONFIG", "/nonexistent/kubeconfig"),
        };
        cmd.output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.name()))
    }

    /// `helm ARGS`, which must succeed; returns stdout.
    pub(crate) fn ok(self, args: &[&str], kubeconfig: Option<&Path>) -> String {
        let out = self.run(args, kubeconfig);
        assert!(
            out.status.success(),
            "{} {} failed:\n{}{}",
            self.name(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("helm prints UTF-8")
    }
}

/// A path that `.ci/install-deps.sh` wrote into `$SNAPCRYPT_CACHE/services.env`, if any.
pub(crate) fn services_env(key: &str) -> Option<PathBuf> {
    let text = fs::read_to_string(support::cache_dir().join("services.env")).ok()?;
    let prefix = format!("export {key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| PathBuf::from(v.trim_matches('"')))
        .filter(|p| p.is_file())
}

/// kubernetes-validate in the test venv (services.env names it, or the venv's python).
pub(crate) fn kubernetes_validate() -> PathBuf {
    services_env("KUBERNETES_VALIDATE")
        .or_else(|| {
            let python = services_env("SNAPCRYPT_PYTHON")?;
            Some(python.with_file_name("kubernetes-validate")).filter(|p| p.is_file())
        })
        .expect("kubernetes-validate is not installed in the test venv: run .ci/install-deps.sh")
}

/// The Prometheus Operator's CRDs, vendored (each file's header names its source).
pub(crate) const PROMETHEUS_OPERATOR_CRDS: [&str; 2] = [
    "tests/fixtures/prometheus-operator/monitoring.coreos.com_prometheusrules.yaml",
    "tests/fixtures/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml",
];

/// The objects in `files` of the kinds the Prometheus Operator's CRDs define, checked against
/// their openAPIV3Schema with unknown fields refused (`tests/support/validate_cr.py`, in the test
/// venv: kubernetes-validate knows no CRD). Returns whether every one was valid, and at least one
/// was checked, with what it printed (`ok KIND/NAME`, or `KIND/NAME: PATH: ERROR`).
pub(crate) fn validate_prometheus_operator_objects(files: &[PathBuf]) -> (bool, String) {
    let python = services_env("SNAPCRYPT_PYTHON")
        .expect("the test venv's python is not installed: run .ci/install-deps.sh");
    let out = Command::new(python)
        .arg(repo_root().join("tests/support/validate_cr.py"))
        .args(PROMETHEUS_OPERATOR_CRDS.map(|crd| repo_root().join(crd)))
        .arg("--")
        .args(files)
        .output()
        .expect("run tests/support/validate_cr.py");
    (out.status.success(), output_text(&out))
}

/// What a tool printed: its stdout, then its stderr.
pub(crate) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// lua5.1 (services.env names it; else on PATH).
pub(crate) fn lua() -> PathBuf {
    services_env("LUA")
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("lua5.1"))
                .find(|p| p.is_file())
        })
        .expect("lua5.1 is not installed: run .ci/install-deps.sh")
}
