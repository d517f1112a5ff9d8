//! The Helm chart (`charts/snapcrypt`), the plain manifests rendered from it (`deploy/`) and the
//! Argo CD health checks (`docs/argocd.md`).
//!
//! Offline, with helm 3 and helm 4 (installed by `.ci/install-deps.sh` into
//! `$SNAPCRYPT_CACHE/bin`): lint, render, `kubernetes-validate --strict`, the values schema,
//! least-privilege RBAC, the CRDs and `deploy/snapcrypt.yaml` kept in step, and every health
//! script run by `lua5.1` (Argo CD's Lua is 5.1) against sample objects. Against the cluster of
//! `KUBECONFIG` (`./tests/run` starts one): `helm install` and `helm uninstall` with each helm,
//! and the operator's and the agent's ServiceAccounts doing what the code does, and no more.
//!
//! `SNAPCRYPT_UPDATE_DEPLOY=1 cargo test --test chart` rewrites `deploy/snapcrypt.yaml`.

#[path = "../support/mod.rs"]
mod support;

// Shared by the tests below: the tools they run, the charts' values and renders, and the RBAC
// the chart must grant.
mod rbac;
mod tools;
mod values;

// The tests, by concern.
mod argocd_health;
mod cli_args;
mod dashboard;
mod deploy;
mod helm_test;
mod install;
mod notes;
mod prometheus;
mod render;

const CHART: &str = "charts/snapcrypt";
const DEPLOY: &str = "deploy/snapcrypt.yaml";
/// The chart rendered as release `snapcrypt` in `snapcrypt-system`, CRDs and test hooks
/// included.
const RENDER_ARGS: [&str; 6] = [
    "template",
    "snapcrypt",
    CHART,
    "--namespace",
    "snapcrypt-system",
    "--include-crds",
];
/// Kubernetes versions the renders are validated against: the oldest and newest that
/// kubernetes-validate 1.37.0 has schemas for.
const KUBE_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];
