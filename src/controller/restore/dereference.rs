//! Dereference: everything a Restore's reconcile reads from the API, into one [`World`]. What
//! is read depends on where the Restore is (a field not read stays empty); nothing after this
//! stage reads.

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::Error;
use super::build::pod_selector;
use crate::api::restore::RestoreStatus;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, KmipServer, Restore, Snapshot};
use crate::controller::agent::job::{
    Blocked, Needs, check_job, check_source, encryption_kmip, job_kmip,
};
use crate::controller::agent::node::node_of;
use crate::controller::agent::run::{RunStep, run_step};
use crate::controller::names::CHECK_RESTORE_UID_LABEL;
use crate::engine::restore::RestoreStats;

/// A Restore's surroundings, as read from the API.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// The restore pod, if one was started.
    pub pod: Option<Pod>,
    /// The node of the restore pod while it runs (None: not bound, or Nodes may not be read).
    pub node: Option<Node>,
    /// The Snapshot to restore (read while there is no pod, or one that has not ended: its
    /// job's deadlines).
    pub snapshot: Option<Snapshot>,
    /// The Snapshot's BackupJob (read once the Snapshot has succeeded, or for deadlines).
    pub job: Option<BackupJob>,
    /// Before the pod: why the job's repository and key cannot be used yet, if they cannot.
    pub blocked: Option<Blocked>,
    /// Before the pod: a KMIP job's KmipServer and active master key (Ok(None): a local key).
    pub kmip: Option<Result<Option<(KmipServer, String)>, Blocked>>,
    /// The target claim (before the pod, and a finished Restore's scratch claim).
    pub target: Option<PersistentVolumeClaim>,
    /// Before the pod: the namespace's pods (who mounts the target claim).
    pub namespace_pods: Vec<Pod>,
    /// After a restore pod that succeeded, with spec.check: the check pod and its node.
    pub check_pod: Option<Pod>,
    pub check_node: Option<Node>,
    /// A finished Restore with a scratch claim to delete: its pods that still exist.
    pub own_pods: Vec<Pod>,
}

/// Read what the Restore's state needs.
pub async fn dereference(r: &Restore, client: &Client) -> Result<World, Error> {
    let prev: RestoreStatus = r.status.clone().unwrap_or_default();
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let err = |what: &'static str| super::dereference_error(&name, what);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let claim = &r.spec.one_target().claim_name;
    let mut w = World::default();
    if matches!(prev.phase, RunPhase::Succeeded | RunPhase::Failed) {
        if r.spec.one_target().scratch.is_some() && !prev.scratch_claim_deleted {
            w.target = claims.get_opt(claim).await.map_err(err("scratch claim"))?;
            let named = [prev.pod_name.clone(), prev.check.map(|c| c.pod)];
            for pod in named.into_iter().flatten() {
                let found = pods
                    .get_opt(&pod)
                    .await
                    .map_err(err("the Restore's pods"))?;
                w.own_pods.extend(found);
            }
        }
        return Ok(w);
    }
    w.pod = match r.uid() {
        Some(uid) => pods
            .list(&ListParams::default().labels(&pod_selector(&uid)))
            .await
            .map_err(err("restore pod"))?
            .items
            .into_iter()
            .next(),
        None => None,
    };
    match &w.pod {
        Some(pod) => {
            let step = run_step::<RestoreStats>(pod, "restore");
            if matches!(step, RunStep::Pending { .. } | RunStep::Running { .. }) {
                (w.snapshot, w.job) = snapshot_and_job(r, client, false).await?;
                w.node = node_of(client, pod)
                    .await
                    .map_err(err("the restore pod's Node"))?;
            } else if matches!(step, RunStep::Succeeded { .. }) && r.spec.check.is_some() {
                let uid = r.uid().unwrap_or_default();
                let selector = format!(
                    "{CHECK_RESTORE_UID_LABEL}={uid},app.kubernetes.io/component=restore-check"
                );
                w.check_pod = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .map_err(err("check pod"))?
                    .items
                    .into_iter()
                    .next();
                if let Some(p) = &w.check_pod {
                    w.check_node = node_of(client, p)
                        .await
                        .map_err(err("the check pod's Node"))?;
                }
            }
        }
        None if prev.pod_name.is_some() => {}
        None => before_the_pod(r, client, &mut w).await?,
    }
    Ok(w)
}

/// What starting a restore pod needs: the Snapshot and its job (only a succeeded Snapshot's,
/// unless `any`), the job's references and KmipServer, the target claim and who mounts it.
async fn before_the_pod(r: &Restore, client: &Client, w: &mut World) -> Result<(), Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let err = |what: &'static str| super::dereference_error(&name, what);
    if let Some(source) = &r.spec.source {
        w.blocked = check_source(client, &ns, source)
            .await
            .map_err(err("spec.source's references"))?;
        w.kmip = Some(
            encryption_kmip(client, &ns, &source.encryption, "spec.source.encryption")
                .await
                .map_err(err("KmipServer"))?,
        );
    } else {
        (w.snapshot, w.job) = snapshot_and_job(r, client, true).await?;
        let Some(job) = &w.job else {
            return Ok(());
        };
        w.blocked = check_job(client, &ns, job, Needs::RepositoryAndKey)
            .await
            .map_err(err("the BackupJob's references"))?;
        w.kmip = Some(
            job_kmip(client, &ns, job)
                .await
                .map_err(err("KmipServer"))?,
        );
    }
    w.target = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get_opt(&r.spec.one_target().claim_name)
        .await
        .map_err(err("target PersistentVolumeClaim"))?;
    if w.target.is_some() || r.spec.one_target().scratch.is_some() {
        w.namespace_pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(err("the pods using the target claim"))?
            .items;
    }
    Ok(())
}

/// The Restore's Snapshot, and its BackupJob: when `succeeded_only`, only once the Snapshot
/// has succeeded (before that the job is not needed).
async fn snapshot_and_job(
    r: &Restore,
    client: &Client,
    succeeded_only: bool,
) -> Result<(Option<Snapshot>, Option<BackupJob>), Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let err = |what: &'static str| super::dereference_error(&name, what);
    if r.spec.snapshot_ref.is_none() {
        return Ok((None, None));
    }
    let snap = Api::<Snapshot>::namespaced(client.clone(), &ns)
        .get_opt(r.spec.snapshot_name())
        .await
        .map_err(err("Snapshot"))?;
    let Some(s) = &snap else {
        return Ok((None, None));
    };
    let phase = s.status.as_ref().map(|st| st.phase).unwrap_or_default();
    if succeeded_only && phase != RunPhase::Succeeded {
        return Ok((snap, None));
    }
    let job = Api::<BackupJob>::namespaced(client.clone(), &ns)
        .get_opt(&s.spec.backup_job_ref.name)
        .await
        .map_err(err("BackupJob"))?;
    Ok((snap, job))
}
