//! Dereference: everything a BackupJob's reconcile reads from the API, into one [`World`];
//! nothing after this stage reads.

use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::Error;
use crate::api::agent::{CopyResult, RetentionResult, VerifyResult};
use crate::api::catalog::CatalogResult;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, KmipServer, Restore, Snapshot};
use crate::controller::agent::job::{Blocked, check_refs, encryption_kmip, job_kmip};
use crate::controller::agent::node::node_of;
use crate::controller::agent::run::{RunStep, run_step};
use crate::controller::job_spec::copies::{copy_field, copy_references};
use crate::controller::job_spec::references::find_references;
use crate::controller::job_spec::retention::any_retention_pods;
use crate::controller::job_spec::validate::{Found, references};
use crate::controller::names::{
    CATALOG_JOB_UID_LABEL, COPY_JOB_UID_LABEL, RESTORE_TEST_JOB_UID_LABEL, RETENTION_JOB_UID_LABEL,
    VERIFY_JOB_UID_LABEL, catalog_name,
};

use super::build::status::scheduled_time;

/// A BackupJob's surroundings, as read from the API.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// The job's Snapshots.
    pub snapshots: Vec<Snapshot>,
    /// Every object the spec names (Secrets' keys, claims, the KmipServer, the StatefulSet).
    pub found: Found,
    /// With spec.verification.readData: the job's verify pods, each with its node while it
    /// has not ended (None: not bound, or Nodes may not be read).
    pub verify_pods: Vec<(Pod, Option<Node>)>,
    /// The KmipServer and its active key (Ok(None): a local key).
    pub kmip: Option<Result<Option<(KmipServer, String)>, Blocked>>,
    /// With spec.verification.restoreTest: the job's restore-test Restores.
    pub restore_tests: Vec<Restore>,
    /// A PVC destination's claim is not bound to a volume yet (it holds no repository, and a
    /// catalog pod would bind a node-local volume to whichever node it lands on).
    pub destination_unbound: bool,
    /// The catalog pod (`snapcrypt agent catalog`), while one exists.
    pub catalog_pod: Option<Pod>,
    /// Its ConfigMap, once the pod has succeeded.
    pub catalog_map: Option<ConfigMap>,
    /// With spec.copies: the job's copy pods, each with its node while it has not ended.
    pub copy_pods: Vec<(Pod, Option<Node>)>,
    /// Per copy of spec.copies (in order): its KmipServer and active key (Ok(None): a local
    /// key), or why it cannot run (a reference missing).
    pub copy_access: Vec<Result<Option<(KmipServer, String)>, Blocked>>,
    /// With spec.retention.credentialsSecret: the job's retention pods, each with its node
    /// while it has not ended.
    pub retention_pods: Vec<(Pod, Option<Node>)>,
    /// With a restoreTest whose size or class is not given: the data claim of the member the
    /// newest successful Snapshot copied, if it still exists.
    pub source_claim: Option<PersistentVolumeClaim>,
}

/// An error for a failed read of `what` while reconciling `job`.
pub(super) fn dereference_error(
    job: &BackupJob,
    what: &str,
) -> impl FnOnce(kube::Error) -> Error + use<> {
    let (job, what) = (job.name_any(), what.to_string());
    move |source| Error::Dereference { job, what, source }
}

pub async fn dereference(job: &BackupJob, client: &Client) -> Result<World, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let err = |what: &str| dereference_error(job, what);
    let snapshots: Vec<Snapshot> = Api::<Snapshot>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(err("Snapshots"))?
        .items
        .into_iter()
        .filter(|s| s.spec.backup_job_ref.name == name)
        .collect();
    let found = find_references(client, &ns, &references(&job.spec))
        .await
        .map_err(err("referenced objects"))?;
    let mut w = World {
        snapshots,
        found,
        ..Default::default()
    };
    if let Some(pvc) = &job.spec.destination.pvc {
        w.destination_unbound = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get_opt(&pvc.claim_name)
            .await
            .map_err(err("the destination claim"))?
            .is_none_or(|c| c.status.and_then(|s| s.phase).as_deref() != Some("Bound"));
    }
    let Some(uid) = job.uid() else {
        return Ok(w);
    };
    let owned = |label: &str| ListParams::default().labels(&format!("{label}={uid}"));
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    w.catalog_pod = pods
        .list(&owned(CATALOG_JOB_UID_LABEL))
        .await
        .map_err(err("the catalog pod"))?
        .items
        .into_iter()
        .next();
    if w.catalog_pod.as_ref().is_some_and(|p| {
        matches!(
            run_step::<CatalogResult>(p, "catalog"),
            RunStep::Succeeded { .. }
        )
    }) {
        w.catalog_map = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt(&catalog_name(&name))
            .await
            .map_err(err("the catalog ConfigMap"))?;
    }
    // The KmipServer and its key: for the catalog pod and the verify pods.
    w.kmip = Some(
        job_kmip(client, &ns, job)
            .await
            .map_err(err("KmipServer"))?,
    );
    if !job.spec.copies.is_empty() {
        for (i, c) in job.spec.copies.iter().enumerate() {
            let refs = copy_references(i, c);
            let access = match check_refs(client, &ns, &refs)
                .await
                .map_err(err("a copy's references"))?
            {
                Some(blocked) => Err(blocked),
                None => encryption_kmip(client, &ns, &c.encryption, &copy_field(i))
                    .await
                    .map_err(err("a copy's KmipServer"))?,
            };
            w.copy_access.push(access);
        }
        w.copy_pods =
            run_pods::<CopyResult>(client, job, &owned(COPY_JOB_UID_LABEL), "copy").await?;
    }
    if any_retention_pods(&job.spec) {
        w.retention_pods =
            run_pods::<RetentionResult>(client, job, &owned(RETENTION_JOB_UID_LABEL), "retention")
                .await?;
    }
    let Some(v) = job.spec.verification.as_ref() else {
        return Ok(w);
    };
    if v.read_data.is_some() {
        w.verify_pods =
            run_pods::<VerifyResult>(client, job, &owned(VERIFY_JOB_UID_LABEL), "verify").await?;
    }
    if let Some(rt) = &v.restore_test {
        w.restore_tests = Api::<Restore>::namespaced(client.clone(), &ns)
            .list(&owned(RESTORE_TEST_JOB_UID_LABEL))
            .await
            .map_err(err("restore-test Restores"))?
            .items;
        if rt.size.is_none() || rt.storage_class_name.is_none() {
            w.source_claim = source_claim(job, client, &w.snapshots).await?;
        }
    }
    Ok(w)
}

/// The job's run pods `selected` (verify or copy pods), each with its node while it has not
/// ended (None: not bound, or Nodes may not be read).
async fn run_pods<R: serde::de::DeserializeOwned>(
    client: &Client,
    job: &BackupJob,
    selected: &ListParams,
    what: &str,
) -> Result<Vec<(Pod, Option<Node>)>, Error> {
    let ns = job.namespace().unwrap_or_default();
    let err = |what: &str| dereference_error(job, what);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(selected)
        .await
        .map_err(err(&format!("{what} pods")))?
        .items;
    let mut out = Vec::new();
    for pod in pods {
        let node = match run_step::<R>(&pod, what) {
            RunStep::Pending { .. } | RunStep::Running { .. } => node_of(client, &pod)
                .await
                .map_err(err(&format!("the {what} pod's Node")))?,
            _ => None,
        };
        out.push((pod, node));
    }
    Ok(out)
}

/// Whether a Snapshot has succeeded.
pub fn succeeded(s: &Snapshot) -> bool {
    s.status
        .as_ref()
        .is_some_and(|st| st.phase == RunPhase::Succeeded)
}

/// The newest successful Snapshot of `snapshots`: what a restore test restores.
pub fn newest_successful(snapshots: &[Snapshot]) -> Option<&Snapshot> {
    snapshots
        .iter()
        .filter(|s| succeeded(s))
        .max_by_key(|s| (scheduled_time(s), s.name_any()))
}

/// The data claim of the member pod the newest successful Snapshot copied, if it still exists.
async fn source_claim(
    job: &BackupJob,
    client: &Client,
    snapshots: &[Snapshot],
) -> Result<Option<PersistentVolumeClaim>, Error> {
    let ns = job.namespace().unwrap_or_default();
    let err = |what: &str| dereference_error(job, what);
    let Some(member) = newest_successful(snapshots)
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.member.as_ref())
    else {
        return Ok(None);
    };
    let Some(pod) = Api::<Pod>::namespaced(client.clone(), &ns)
        .get_opt(&member.pod)
        .await
        .map_err(err("the member pod"))?
    else {
        return Ok(None);
    };
    let volume = &job.spec.source.data_volume_name;
    let claim = pod
        .spec
        .and_then(|s| s.volumes)
        .unwrap_or_default()
        .into_iter()
        .find(|v| &v.name == volume)
        .and_then(|v| v.persistent_volume_claim)
        .map(|c| c.claim_name);
    let Some(claim) = claim else { return Ok(None) };
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get_opt(&claim)
        .await
        .map_err(err("the member's data claim"))
}
