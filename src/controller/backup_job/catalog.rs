//! A BackupJob's catalog, planned purely from the [`World`]: when a job is first seen (or its
//! destination changes), a catalog pod (`snapcrypt agent catalog`) lists the snapshots the
//! repository already holds for it (their backupjob tag) into a ConfigMap the job owns, and
//! says which cluster writes them; the job then creates a Snapshot object for each one this
//! cluster has none of (imported: the Snapshot controller writes its status from the
//! repository's record), deletes the pod and the ConfigMap, and records what it found in
//! status.catalog. Re-applying a job's manifests in a rebuilt cluster so brings its catalog
//! back. A failed read is tried again after [`CATALOG_RETRY`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::build::snapshot::job_snapshot;
use super::dereference::World;
use crate::api::catalog::{
    CATALOG_KEY, CatalogEntry, CatalogResult, CatalogStatus, IMPORTED_ANNOTATION, IMPORTED_LABEL,
};
use crate::api::snapshot::{
    CAPTURE_TAG, CLUSTER_TAG, JOB_TAG, RunPhase, TRIGGER_SCHEDULE, TRIGGER_TAG,
};
use crate::api::{BackupJob, KmipServer, Snapshot};
use crate::controller::agent::identity::{catalog_rbac, identity_changes};
use crate::controller::agent::pod::{AgentRepo, JobAgentPod, PodError, job_agent_pod};
use crate::controller::agent::run::{RunStep, run_step};
use crate::controller::context::OperatorConfig;
use crate::controller::execute::Change;
use crate::controller::names::{
    CATALOG_JOB_UID_LABEL, catalog_name, imported_snapshot_name, job_labels,
};
use crate::controller::reason::Reason;

/// How soon a catalog that waits for the job's KmipServer's key looks again.
const CATALOG_WAIT: Duration = Duration::from_secs(5);

/// How long after a failed read of the catalog it is tried again.
pub const CATALOG_RETRY: Duration = Duration::from_secs(300);

/// The tags the operator writes on every snapshot (not a user's).
const OWN_TAGS: [&str; 6] = [
    JOB_TAG,
    TRIGGER_TAG,
    "snapshot",
    "member",
    CLUSTER_TAG,
    CAPTURE_TAG,
];

/// What the catalog does in this reconcile.
#[derive(Debug, Default)]
pub struct CatalogOutcome {
    pub changes: Vec<Change>,
    /// status.catalog (unchanged: the previous one).
    pub status: Option<CatalogStatus>,
    /// When to look again (a retry).
    pub next: Option<jiff::Timestamp>,
    /// The cluster that writes the job's snapshots, if it is another one and the job does not
    /// take them over: the job only reads.
    pub owned_elsewhere: Option<String>,
}

/// A digest of spec.destination: a new destination is read again.
pub fn destination_digest(job: &BackupJob) -> String {
    let json = serde_json::to_vec(&job.spec.destination).unwrap_or_default();
    blake3::hash(&json).to_hex()[..16].to_string()
}

/// The catalog pod: `snapcrypt agent catalog` with the job's repository and key, writing into
/// the ConfigMap [`catalog_name`].
pub fn catalog_pod(
    job: &BackupJob,
    kmip: Option<(&KmipServer, &str)>,
    config: &OperatorConfig,
) -> Result<Pod, PodError> {
    let owner = job.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = job.uid().ok_or(PodError::NoOwner)?;
    let name = catalog_name(&job.name_any());
    let tag = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    job_agent_pod(JobAgentPod {
        repo: AgentRepo::of_job(job),
        kmip,
        image: &config.agent_image,
        agent_env: &config.agent_env,
        name: name.clone(),
        namespace: job.namespace(),
        owner,
        component: "catalog",
        run_label: (CATALOG_JOB_UID_LABEL, uid),
        annotations: None,
        object_env: ("SNAPCRYPT_CATALOG", &name),
        args: vec![
            "agent".into(),
            "catalog".into(),
            "--job".into(),
            tag,
            "--config-map".into(),
            name.clone(),
        ],
        volumes: Vec::new(),
        mounts: Vec::new(),
        target: None,
    })
}

/// The empty ConfigMap the catalog pod writes into, owned by the job.
pub fn catalog_map(job: &BackupJob) -> Option<ConfigMap> {
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(catalog_name(&job.name_any())),
            namespace: job.namespace(),
            labels: Some(job_labels(&job.name_any())),
            owner_references: Some(vec![job.controller_owner_ref(&())?]),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// The Snapshot object for a repository snapshot of `job` that this cluster has none of:
/// named as it was where it was taken (its snapshot tag) when that name is free here, else
/// `<job>-<id prefix>`; a scheduled one is the job's own (its uid, and its owner reference
/// with snapshotDeletionPolicy Delete), so retention counts it. Pure.
pub fn imported_snapshot(
    job: &BackupJob,
    entry: &CatalogEntry,
    taken: &BTreeSet<String>,
) -> Option<Snapshot> {
    let ns = job.namespace().unwrap_or_default();
    let name = entry
        .tags
        .get("snapshot")
        .and_then(|t| t.strip_prefix(&format!("{ns}/")))
        .filter(|n| !taken.contains(*n))
        .map(str::to_string)
        .unwrap_or_else(|| imported_snapshot_name(&job.name_any(), &entry.id));
    let scheduled = entry.tags.get(TRIGGER_TAG).map(String::as_str) == Some(TRIGGER_SCHEDULE);
    let annotations = BTreeMap::from([(
        IMPORTED_ANNOTATION.to_string(),
        serde_json::to_string(entry).ok()?,
    )]);
    let tags = entry
        .tags
        .iter()
        .filter(|(k, _)| !OWN_TAGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut snap = job_snapshot(job, name, annotations, scheduled, tags)?;
    snap.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(IMPORTED_LABEL.into(), "true".into());
    Some(snap)
}

/// The repository snapshot ids this cluster's Snapshots of the job stand for.
fn known_ids(snapshots: &[Snapshot]) -> BTreeSet<String> {
    snapshots
        .iter()
        .filter_map(|s| {
            let recorded = s
                .status
                .as_ref()
                .and_then(|st| st.repository_snapshot_id.clone());
            let imported = s
                .annotations()
                .get(IMPORTED_ANNOTATION)
                .and_then(|a| serde_json::from_str::<CatalogEntry>(a).ok())
                .map(|e| e.id);
            recorded.or(imported)
        })
        .collect()
}

/// Read, import, tidy. `healthy`: the job's references are all there (a pod may start). Pure.
pub fn plan_catalog(
    job: &BackupJob,
    world: &World,
    config: &OperatorConfig,
    healthy: bool,
    now: jiff::Timestamp,
) -> CatalogOutcome {
    let prev = job.status.as_ref().and_then(|s| s.catalog.clone());
    let digest = destination_digest(job);
    let mut out = CatalogOutcome {
        status: prev.clone(),
        ..Default::default()
    };
    let this = config.cluster_id.clone();
    let base = CatalogStatus {
        destination: digest.clone(),
        this_cluster: (!this.is_empty()).then(|| this.clone()),
        ..Default::default()
    };
    match &world.catalog_pod {
        None => {
            let settled = prev.as_ref().is_some_and(|c| c.destination == digest);
            if let Some(c) = prev.as_ref().filter(|_| settled) {
                out.owned_elsewhere = owned_elsewhere(job, c, &this);
                if c.phase == RunPhase::Failed {
                    let retry = c
                        .completion_time
                        .as_ref()
                        .map(|t| t.0 + CATALOG_RETRY)
                        .unwrap_or(now);
                    if retry > now {
                        out.next = Some(retry);
                        return out;
                    }
                } else {
                    return out;
                }
            }
            // A claim not bound yet holds no repository: the first backup binds it (on the
            // member's node, for a node-local volume), and the catalog is read after.
            if !healthy || job.uid().is_none() || world.destination_unbound {
                return out;
            }
            // A KmipServer without its key yet (the job's own condition says so): the job is
            // not woken when the key comes, so it looks again soon.
            let kmip = match &world.kmip {
                Some(Ok(k)) => k.as_ref().map(|(ks, key)| (ks, key.as_str())),
                Some(Err(_)) => {
                    out.next = Some(now + CATALOG_WAIT);
                    return out;
                }
                None => None,
            };
            let (Ok(pod), Some(map)) = (catalog_pod(job, kmip, config), catalog_map(job)) else {
                return out;
            };
            out.changes.push(Change::create("apply_catalog", &map));
            out.changes
                .extend(identity_changes("apply_catalog", job, None));
            let (role, binding) = catalog_rbac(job);
            out.changes.push(Change::apply("apply_catalog", &role));
            out.changes.push(Change::apply("apply_catalog", &binding));
            out.changes.push(Change::apply("apply_catalog", &pod));
            out.status = Some(CatalogStatus {
                phase: RunPhase::Pending,
                pod: Some(pod.name_any()),
                owner: prev.and_then(|p| p.owner),
                ..base
            });
        }
        Some(pod) => judge(job, world, pod, base, now, &mut out),
    }
    out
}

/// What the catalog pod's state means: still reading, imported, or failed.
fn judge(
    job: &BackupJob,
    world: &World,
    pod: &Pod,
    base: CatalogStatus,
    now: jiff::Timestamp,
    out: &mut CatalogOutcome,
) {
    let pending = CatalogStatus {
        phase: RunPhase::Pending,
        pod: Some(pod.name_any()),
        ..base.clone()
    };
    match run_step::<CatalogResult>(pod, "catalog") {
        RunStep::Pending { .. } | RunStep::Running { .. } => out.status = Some(pending),
        RunStep::Succeeded { result, .. } => {
            // The ConfigMap is read once the pod has written it.
            let Some(map) = &world.catalog_map else {
                out.status = Some(pending);
                return;
            };
            let entries: Vec<CatalogEntry> = map
                .data
                .as_ref()
                .and_then(|d| d.get(CATALOG_KEY))
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default();
            let known = known_ids(&world.snapshots);
            let mut taken: BTreeSet<String> =
                world.snapshots.iter().map(ResourceExt::name_any).collect();
            let mut imported = 0u64;
            let this = base.this_cluster.clone().unwrap_or_default();
            let new = |e: &&CatalogEntry| {
                !known.contains(&e.id) && !still_recording(e, &world.snapshots, &this)
            };
            for e in entries.iter().filter(new) {
                if let Some(s) = imported_snapshot(job, e, &taken) {
                    taken.insert(s.name_any());
                    out.changes.push(Change::create("create_imported", &s));
                    imported += 1;
                }
            }
            out.changes.push(Change::delete("delete_catalog", pod));
            out.changes.push(Change::delete("delete_catalog", map));
            let message = format!(
                "the repository holds {} snapshot(s) of this job; {imported} imported as Snapshot objects",
                entries.len()
            );
            out.changes
                .push(Change::event(Reason::CatalogImported, message));
            let status = CatalogStatus {
                phase: RunPhase::Succeeded,
                completion_time: Some(Time(now)),
                found: Some(entries.len() as u64),
                imported: Some(imported),
                owner: result.owner,
                ..base
            };
            out.owned_elsewhere = owned_elsewhere(job, &status, base_cluster(&status));
            out.status = Some(status);
        }
        RunStep::ResultUnreadable { message, .. } | RunStep::Failed { message, .. } => {
            out.changes.push(Change::delete("delete_catalog", pod));
            if let Some(map) = &world.catalog_map {
                out.changes.push(Change::delete("delete_catalog", map));
            }
            let message = format!(
                "reading this job's snapshots in the repository failed: {message}; tried again in {} min",
                CATALOG_RETRY.as_secs() / 60
            );
            out.changes
                .push(Change::event(Reason::CatalogFailed, message.clone()));
            out.next = Some(now + CATALOG_RETRY);
            out.status = Some(CatalogStatus {
                phase: RunPhase::Failed,
                completion_time: Some(Time(now)),
                message: Some(message),
                ..base
            });
        }
    }
}

/// Whether `entry` is the run of one of this cluster's Snapshots whose status does not say so
/// yet (a backup that finished while the catalog was read): that Snapshot is its object, so it
/// is not imported again. Pure.
fn still_recording(entry: &CatalogEntry, snapshots: &[Snapshot], this: &str) -> bool {
    let ns_name = entry.tags.get("snapshot");
    let ours = !this.is_empty() && entry.tags.get(CLUSTER_TAG).map(String::as_str) == Some(this);
    ours && snapshots.iter().any(|s| {
        let named = Some(&format!(
            "{}/{}",
            s.namespace().unwrap_or_default(),
            s.name_any()
        )) == ns_name;
        let recorded = s
            .status
            .as_ref()
            .and_then(|st| st.repository_snapshot_id.as_ref())
            .is_some();
        named && !recorded
    })
}

fn base_cluster(c: &CatalogStatus) -> &str {
    c.this_cluster.as_deref().unwrap_or_default()
}

/// The cluster that writes the job's snapshots when it is not this one (`this`) and the job
/// does not take them over from it. Pure.
pub fn owned_elsewhere(job: &BackupJob, c: &CatalogStatus, this: &str) -> Option<String> {
    let owner = c.owner.as_deref()?;
    (!this.is_empty() && owner != this && job.spec.take_over_from.as_deref() != Some(owner))
        .then(|| owner.to_string())
}
