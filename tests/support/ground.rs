//! The ground of the consistent-capture e2e tests (consistency_e2e, lock_e2e): the nodes, a
//! namespace with member rs0-0 on real-b (its data claim of the default class), a repository
//! claim on network storage, a key Secret, and the operator; BackupJobs and Snapshots made as
//! a user makes them, and restores with the CLI.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::json;

use snapcrypt::api::{BackupJob, Snapshot};

use super::cluster::{Cluster, TestNamespace, cluster_or_skip, eventually};
use super::operator::{LONG, Operator, claim, create, key_secret, member, member_on_host_network};
use super::real_nodes::{RealNodes, SHARED_CLASS, volume_dir};

/// The snapshot.storage.k8s.io/v1 resource of `kind`.
pub fn snapshot_api(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", kind),
        plural,
    )
}

/// What a ground is set up with.
#[derive(Default)]
pub struct Options<'a> {
    /// The member pod on its node's network: its address is the node's, where a test's
    /// MongoDB double listens (the operator reaches the member there, as it reaches mongod).
    pub host_network: bool,
    /// Extra operator flags.
    pub operator_args: &'a [&'a str],
    /// The operator's kubeconfig, if not the ground's admin one (another API server).
    pub operator_kubeconfig: Option<&'a Path>,
    /// The member's node, if not real-b.
    pub member_node: Option<&'a str>,
}

pub struct Ground {
    pub ns: TestNamespace,
    pub data: PathBuf,
    pub key: PathBuf,
    _work: tempfile::TempDir,
    pub cluster: Cluster,
    pub operator: Option<Operator>,
    operator_args: Vec<String>,
    operator_kubeconfig: PathBuf,
}

impl Ground {
    pub async fn new(purpose: &str) -> Option<Ground> {
        Self::with(purpose, Options::default()).await
    }

    pub async fn with(purpose: &str, opts: Options<'_>) -> Option<Ground> {
        let cluster = cluster_or_skip().await?;
        RealNodes::get()?;
        cluster.apply_crds().await;
        let ns = cluster.namespace(purpose).await;
        let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let node = opts.member_node.unwrap_or("real-b");
        let data = if opts.host_network {
            member_on_host_network(&ns, "rs0-0", node).await
        } else {
            member(&ns, "rs0-0", node).await
        };
        claim(&ns, "backups", Some(SHARED_CLASS)).await;
        let key = key_secret(&ns, work.path()).await;
        let operator_args: Vec<String> = opts.operator_args.iter().map(|a| a.to_string()).collect();
        let operator_kubeconfig = opts
            .operator_kubeconfig
            .unwrap_or(cluster.kubeconfig())
            .to_path_buf();
        let mut g = Ground {
            ns,
            data,
            key,
            _work: work,
            cluster,
            operator: None,
            operator_args,
            operator_kubeconfig,
        };
        g.restart_operator();
        Some(g)
    }

    /// Stop the operator (if running) and start a new one with the ground's flags.
    pub fn restart_operator(&mut self) {
        drop(self.operator.take());
        let args: Vec<&str> = self.operator_args.iter().map(String::as_str).collect();
        self.operator = Some(Operator::start_with(
            &self.operator_kubeconfig,
            self.ns.name(),
            &args,
        ));
    }

    /// Fill the member's data volume with the usual source, owned by mongod's user.
    pub fn fill_member(&self) {
        super::make_source(&self.data);
        super::chown_mongodb(&self.data);
    }

    /// The member pod's address (its node's, with host_network).
    pub async fn member_ip(&self) -> String {
        let pods: Api<Pod> = self.ns.api();
        pods.get("rs0-0")
            .await
            .expect("member pod")
            .status
            .and_then(|s| s.pod_ip)
            .expect("member pod IP")
    }

    /// BackupJob `name` of member rs0-0 with `consistency`.
    pub async fn job(&self, name: &str, consistency: serde_json::Value) {
        self.job_with(name, json!({"consistency": consistency}), 0)
            .await;
    }

    /// BackupJob `name` of member rs0-0, `source` merged into its source, with `backoff_limit`;
    /// only on-demand Snapshots run it.
    pub async fn job_with(&self, name: &str, source: serde_json::Value, backoff_limit: u32) {
        self.job_spec(name, source, json!({"backoffLimit": backoff_limit}))
            .await;
    }

    /// BackupJob `name` of member rs0-0 to the repository claim with a local key, `source`
    /// merged into its source and `spec` into its spec; only on-demand Snapshots run it.
    pub async fn job_spec(&self, name: &str, source: serde_json::Value, spec: serde_json::Value) {
        let mut src = json!({"selector": {"matchLabels": {"app": "rs-e2e"}}, "dataVolumeName": "mongo-data",
                             "syncSource": {"mode": "member", "member": "rs0-0"}});
        merge(&mut src, source);
        let mut full = json!({
            "source": src,
            "destination": {"pvc": {"claimName": "backups", "path": "repo"}},
            "encryption": {"localKeySecret": {"name": "rs0-key"}},
            // Yearly: no scheduled run during a test, and no run-once Snapshot of a job
            // without a schedule racing the test's own.
            "schedule": {"cron": "0 0 1 1 *"},
            "backoffLimit": 0});
        merge(&mut full, spec);
        create::<BackupJob>(
            &self.ns.api(),
            json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob",
                   "metadata": {"name": name}, "spec": full}),
        )
        .await;
    }

    /// An on-demand Snapshot `name` of job `job`.
    pub async fn snapshot(&self, name: &str, job: &str) {
        create::<Snapshot>(
            &self.ns.api(),
            json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
                   "metadata": {"name": name}, "spec": {"backupJobRef": {"name": job}}}),
        )
        .await;
    }

    /// Restore repository snapshot `id` into `out` with the CLI, from the repository claim.
    pub async fn restore(&self, id: &str, out: &Path) {
        let repo = volume_dir(&self.ns, "backups").await.join("repo");
        super::ok(
            &[
                "restore",
                "--repo",
                &repo.display().to_string(),
                "--key-file",
                &self.key.display().to_string(),
                "--snapshot",
                id,
                "--target",
                &out.display().to_string(),
            ],
            &[],
        );
    }

    /// The VolumeSnapshots and claims restored from them that Snapshot `name` left, once
    /// their deletion is through: none, or the test fails.
    pub async fn no_captures_left(&self, name: &str) {
        let snaps: Api<Snapshot> = self.ns.api();
        let uid = snaps
            .get(name)
            .await
            .expect("snapshot")
            .metadata
            .uid
            .expect("uid");
        let mine = ListParams::default().labels(&format!("snapcrypt.dev/snapshot-uid={uid}"));
        let vs: Api<DynamicObject> = Api::namespaced_with(
            self.ns.client(),
            self.ns.name(),
            &snapshot_api("VolumeSnapshot", "volumesnapshots"),
        );
        let claims: Api<PersistentVolumeClaim> = self.ns.api();
        eventually(
            &format!("the captures of {name} to be deleted"),
            LONG,
            || async {
                let v = vs.list(&mine).await.map_err(|e| e.to_string())?.items.len();
                let c = claims
                    .list(&mine)
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
                if v + c == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "{v} VolumeSnapshot(s) and {c} restored claim(s) left"
                    ))
                }
            },
        )
        .await;
    }
}

/// `extra`'s top-level keys put into `base` (both objects).
fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
}
