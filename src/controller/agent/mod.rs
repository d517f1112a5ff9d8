//! The agent-run layer: everything the controllers that run `snapcrypt agent` in a pod share,
//! below all of them. A new kind of run (a verification or restore-test pod, a run on a volume
//! snapshot's clone) plugs in here: build its pod from [`pod`] (container, security context,
//! the job's repository and key), run it as the job's [`identity`], check the job with [`job`],
//! and read its pod with [`run::run_step`] into the run's own status.
//!
//! - [`pod`]: mounts, security contexts, the repository and key as volumes and arguments (pure)
//! - [`destination`]: the job's repository (a PVC or an object store) and its credentials
//! - [`target`]: a second repository (a copy's) beside the first, its mounts, flags and
//!   credentials kept apart
//! - [`identity`]: the per-job ServiceAccount, Role and RoleBinding (built pure, applied)
//! - [`job`]: the job's spec and references checked, its KmipServer's active key
//! - [`run`]: a run's pod as one [`run::RunStep`], with the agent's result line parsed
//! - [`node`], [`deadline`]: the deadlines the operator holds a run's pod to (pendingTimeout,
//!   nodeLostTimeout), its node read to judge the second

pub mod deadline;
pub mod destination;
pub mod identity;
pub mod job;
pub mod node;
pub mod pod;
pub mod run;
pub mod target;

use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;

use super::kube_api::scoped_api;

/// A controller for kind K that also wakes for every change of the agent pods it owns (labelled
/// `app.kubernetes.io/component=COMPONENT`).
pub fn owning_agent_pods<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    component: &str,
) -> kube::runtime::Controller<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use crate::controller::kube_api::{lean_controller, owns};
    owns::<K, Pod>(
        lean_controller(scoped_api::<K>(client, namespace)),
        client,
        namespace,
        watcher::Config::default()
            .labels(&format!("app.kubernetes.io/component={component}"))
            .any_semantic(),
    )
}
