//! The BackupJob controller's decisions without a cluster: plan tests on [`World`] fixtures,
//! and whole reconciles against the in-memory API (`controller::memory_api`), the unit-level
//! twins of what tests/operator_e2e.rs, status_e2e.rs and verification_e2e.rs do on a real one.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;

use super::catalog::destination_digest;
use super::dereference::World;
use super::plan::{Outcome, plan};
use super::*;
use crate::api::catalog::CatalogStatus;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, BackupJobStatus};
use crate::controller::context::OperatorConfig;
use crate::controller::fixtures::{claim, job, secret, stateful_set, succeeded_snapshot};
use crate::controller::job_spec::validate::{Found, references};
use crate::controller::memory_api::MemoryApi;

fn at(t: &str) -> jiff::Timestamp {
    t.parse().expect("time")
}

/// Every object `job` names, found, with every key it needs.
fn all_found(job: &BackupJob) -> Found {
    references(&job.spec)
        .into_iter()
        .map(|r| {
            let keys = r
                .keys
                .iter()
                .filter_map(|any| any.first().cloned())
                .collect();
            ((r.kind, r.name), Some(keys))
        })
        .collect()
}

/// `job` with its catalog read (its repository's snapshots imported): the plan tests of
/// other parts start there.
fn cataloged(mut job: BackupJob) -> BackupJob {
    let mut st = job.status.take().unwrap_or_default();
    st.catalog.get_or_insert(CatalogStatus {
        phase: RunPhase::Succeeded,
        destination: destination_digest(&job),
        ..Default::default()
    });
    job.status = Some(st);
    job
}

fn planned(job: &BackupJob, w: &World, now: &str) -> Outcome {
    plan(
        &cataloged(job.clone()),
        w,
        &OperatorConfig::default(),
        at(now),
    )
    .expect("plan")
}

fn summaries(o: &Outcome) -> Vec<String> {
    o.changes.iter().map(Change::summary).collect()
}

/// A job that has run before: its one-off run is not due again.
fn has_run(mut j: BackupJob) -> BackupJob {
    j.status = Some(BackupJobStatus {
        last_snapshot: Some("rs0-202611270930".into()),
        last_successful_snapshot: Some("rs0-202611270930".into()),
        ..Default::default()
    });
    j
}

/// A job without a schedule whose references are all there creates its one Snapshot, with
/// an Event; one whose Secret is missing creates nothing and looks again within seconds.
#[test]
fn a_due_run_creates_its_snapshot_and_a_missing_secret_waits() {
    let j = job("");
    let ready = World {
        found: all_found(&j),
        ..Default::default()
    };
    let o = planned(&j, &ready, "2026-11-27T09:30:05Z");
    assert_eq!(
        summaries(&o),
        ["apply Snapshot/rs0-202611270930", "event SnapshotCreated"]
    );
    assert_eq!(o.status.last_snapshot.as_deref(), Some("rs0-202611270930"));
    let missing = planned(&j, &World::default(), "2026-11-27T09:30:05Z");
    assert!(missing.changes.is_empty(), "{:?}", summaries(&missing));
    assert_eq!(missing.requeue, Action::requeue(Duration::from_secs(5)));
}

/// A due data read starts its verify pod after the agent's identity, with an Event, and
/// counts the run; none starts before the job has a repository.
#[test]
fn a_due_data_read_starts_its_verify_pod_once_there_is_a_repository() {
    let reads = "verification: {readData: {schedule: {cron: \"0 * * * *\"}, percent: 10}}";
    let j = has_run(job(reads));
    let w = World {
        found: all_found(&j),
        kmip: Some(Ok(None)),
        ..Default::default()
    };
    let o = planned(&j, &w, "2026-11-27T10:00:30Z");
    let s = summaries(&o);
    assert_eq!(
        s,
        [
            "apply ServiceAccount/snapcrypt-agent-rs0",
            "apply Role/snapcrypt-agent-rs0",
            "apply RoleBinding/snapcrypt-agent-rs0",
            "apply Pod/rs0-verify-202611271000",
            "event VerificationStarted"
        ]
    );
    assert_eq!(o.status.verification_runs, 1);
    let fresh = job(reads);
    let mut fresh_status = has_run(fresh.clone()).status.expect("status");
    fresh_status.last_successful_snapshot = None;
    let no_repo = BackupJob {
        status: Some(fresh_status),
        ..fresh
    };
    let o = planned(&no_repo, &w, "2026-11-27T10:00:30Z");
    assert!(o.changes.is_empty(), "{:?}", summaries(&o));
}

/// A due restore test creates (never patches) a Restore of the newest successful Snapshot,
/// with an Event; without a successful Snapshot it waits for one.
#[test]
fn a_due_restore_test_creates_a_restore_of_the_newest_success() {
    let tests = "verification: {restoreTest: {schedule: {cron: \"0 * * * *\"}, size: 1Gi, storageClassName: fast}}";
    let j = has_run(job(tests));
    let w = World {
        found: all_found(&j),
        snapshots: vec![succeeded_snapshot("rs0-202611270930", "3f2a")],
        ..Default::default()
    };
    let o = planned(&j, &w, "2026-11-27T10:00:30Z");
    assert_eq!(
        summaries(&o),
        [
            "create Restore/rs0-rt-202611271000",
            "event RestoreTestCreated"
        ]
    );
    assert_eq!(
        o.status.running_restore_test.as_deref(),
        Some("rs0-rt-202611271000")
    );
    let none = World {
        snapshots: Vec::new(),
        ..w
    };
    assert!(
        planned(&j, &none, "2026-11-27T10:00:30Z")
            .changes
            .is_empty()
    );
}

async fn reconcile_once(mem: &MemoryApi, ctx: &Arc<Context>) -> Action {
    let j: BackupJob = mem.get("db", "rs0").expect("the BackupJob");
    reconcile(Arc::new(j), ctx.clone())
        .await
        .expect("reconcile")
}

/// A one-off job through the real reconcile, against the in-memory API: it waits while its
/// key Secret is missing, creates its Snapshot once it exists, and never creates a second.
#[tokio::test]
async fn a_job_waits_for_its_secret_then_creates_its_one_snapshot() {
    let mem = MemoryApi::new();
    mem.put(&job(""));
    mem.put(&claim("backups"));
    mem.put(&stateful_set("rs0"));
    let ctx = mem.context();
    let action = reconcile_once(&mem, &ctx).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert_eq!(mem.take_writes(), ["status backupjobs/rs0"]);
    let j: BackupJob = mem.get("db", "rs0").expect("job");
    assert_eq!(
        j.status.unwrap_or_default().phase,
        crate::api::backup_job::BackupJobPhase::Waiting
    );

    mem.put(&secret("k", "key"));
    reconcile_once(&mem, &ctx).await;
    let writes = mem.take_writes();
    // The repository's claim is not bound yet: it holds no repository, so no catalog pod
    // (which would bind a node-local volume wherever it landed); the run is created.
    assert_eq!(writes[0], "apply snapshots/rs0-202611270930", "{writes:?}");
    assert!(!writes.iter().any(|w| w.contains("catalog")), "{writes:?}");
    assert_eq!(
        writes.last().map(String::as_str),
        Some("status backupjobs/rs0")
    );
    assert!(mem.event_reasons().contains(&"SnapshotCreated".to_string()));
    let snaps: Vec<crate::api::Snapshot> = mem.list("db");
    assert_eq!(snaps.len(), 1);

    // The Snapshot succeeds (its pod bound the claim): status mirrors it, no new run is
    // created, and the catalog pod reads the repository (its ConfigMap first).
    let mut s = snaps[0].clone();
    s.status = succeeded_snapshot("rs0-202611270930", "3f2a").status;
    mem.put(&s);
    let mut bound = claim("backups");
    bound.status = Some(serde_yaml::from_str("{phase: Bound}").expect("status"));
    mem.put(&bound);
    reconcile_once(&mem, &ctx).await;
    let writes = mem.take_writes();
    assert_eq!(writes[0], "create configmaps/rs0-catalog", "{writes:?}");
    assert!(
        writes.contains(&"apply pods/rs0-catalog".to_string()),
        "{writes:?}"
    );
    assert_eq!(
        writes.last().map(String::as_str),
        Some("status backupjobs/rs0")
    );
    let j: BackupJob = mem.get("db", "rs0").expect("job");
    let st = j.status.unwrap_or_default();
    assert_eq!(
        st.last_successful_snapshot.as_deref(),
        Some("rs0-202611270930")
    );
    assert_eq!(mem.list::<crate::api::Snapshot>("db").len(), 1);
}

/// The catalog pod of `j`, ended with `result` (its termination message).
fn catalog_pod_done(j: &BackupJob, result: &str) -> k8s_openapi::api::core::v1::Pod {
    let mut pod =
        super::catalog::catalog_pod(j, None, &OperatorConfig::default()).expect("catalog pod");
    pod.metadata.uid = Some("cat-uid".into());
    pod.status = Some(
        serde_yaml::from_str(&crate::controller::fixtures::terminated(
            "Succeeded",
            0,
            result,
        ))
        .expect("status"),
    );
    pod
}

/// The ConfigMap the catalog pod wrote `entries` into.
fn catalog_map_with(
    j: &BackupJob,
    entries: &[serde_json::Value],
) -> k8s_openapi::api::core::v1::ConfigMap {
    let mut map = super::catalog::catalog_map(j).expect("map");
    map.metadata.uid = Some("map-uid".into());
    map.data = Some(
        [(
            crate::api::catalog::CATALOG_KEY.to_string(),
            serde_json::to_string(entries).expect("json"),
        )]
        .into(),
    );
    map
}

fn entry(id: &str, snapshot: &str, cluster: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "time": "2026-12-01T03:00:00Z", "finished": "2026-12-01T03:01:00Z",
        "files": 12, "logicalBytes": 4096, "storedBytes": 1024, "keyId": "kmip-key-7",
        "tags": {"backupjob": "db/rs0", "trigger": "schedule", "snapshot": snapshot,
                 "member": "rs0-1", "cluster": cluster, "capture": "fsyncLock", "reason": "nightly"}
    })
}

/// #31: a job applied where its repository already holds snapshots of it starts a catalog
/// pod; once it has listed them, a Snapshot object is created for each one this cluster has
/// none of (named as it was, imported, the job's own), the pod and its ConfigMap go, and
/// status.catalog says what was found.
#[test]
fn the_catalog_imports_the_snapshots_this_cluster_lacks() {
    let j = has_run(job(""));
    let w = World {
        found: all_found(&j),
        kmip: Some(Ok(None)),
        ..Default::default()
    };
    let o = plan(
        &j,
        &w,
        &OperatorConfig::default(),
        at("2026-12-07T10:00:00Z"),
    )
    .expect("plan");
    assert_eq!(
        summaries(&o)[..2],
        [
            "create ConfigMap/rs0-catalog",
            "apply ServiceAccount/snapcrypt-agent-rs0"
        ]
    );
    assert!(summaries(&o).contains(&"apply Pod/rs0-catalog".to_string()));
    let pending = o.status.catalog.clone().expect("catalog");
    assert_eq!(pending.phase, RunPhase::Pending);

    let j = BackupJob {
        status: Some(o.status),
        ..j
    };
    let w = World {
        catalog_pod: Some(catalog_pod_done(&j, r#"{"found":2,"owner":"old-cluster"}"#)),
        catalog_map: Some(catalog_map_with(
            &j,
            &[
                entry("aaa111", "db/rs0-202612010300", "old-cluster"),
                entry("3f2a", "db/rs0-202611270930", "old-cluster"),
            ],
        )),
        snapshots: vec![succeeded_snapshot("rs0-202611270930", "3f2a")],
        ..w
    };
    let config = OperatorConfig {
        cluster_id: "old-cluster".into(),
        ..Default::default()
    };
    let o = plan(&j, &w, &config, at("2026-12-07T10:01:00Z")).expect("plan");
    assert_eq!(
        summaries(&o),
        [
            "create Snapshot/rs0-202612010300",
            "delete Pod/rs0-catalog",
            "delete ConfigMap/rs0-catalog",
            "event CatalogImported",
        ]
    );
    let Change::Create { body, .. } = &o.changes[0] else {
        panic!("a create");
    };
    let s: crate::api::Snapshot = serde_json::from_value(body.clone()).expect("snapshot");
    assert_eq!(s.labels()[crate::api::catalog::IMPORTED_LABEL], "true");
    assert_eq!(
        s.spec.tags,
        [("reason".to_string(), "nightly".to_string())].into()
    );
    assert!(
        s.annotations()
            .contains_key(crate::controller::names::MADE_BY_JOB_UID)
    );
    let c = o.status.catalog.expect("catalog");
    assert_eq!(
        (c.phase, c.found, c.imported, c.owner.as_deref()),
        (RunPhase::Succeeded, Some(2), Some(1), Some("old-cluster"))
    );
}

/// #31: where another cluster writes the job's snapshots, the job only reads: no run is
/// created, and its condition names the owner and spec.takeOverFrom; naming that cluster in
/// spec.takeOverFrom lets it run.
#[test]
fn a_job_whose_snapshots_another_cluster_writes_only_reads() {
    let settled = |j: BackupJob| {
        let mut j = cataloged(j);
        if let Some(c) = j.status.as_mut().and_then(|s| s.catalog.as_mut()) {
            c.owner = Some("old-cluster".into());
        }
        j
    };
    let j = settled(job(""));
    let w = World {
        found: all_found(&j),
        kmip: Some(Ok(None)),
        ..Default::default()
    };
    let config = OperatorConfig {
        cluster_id: "new-cluster".into(),
        ..Default::default()
    };
    let o = plan(&j, &w, &config, at("2026-11-27T09:30:05Z")).expect("plan");
    assert!(o.changes.is_empty(), "{:?}", summaries(&o));
    let ready = o
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "RepositoryOwnedElsewhere");
    assert!(
        ready
            .message
            .contains("written by cluster old-cluster; this cluster (new-cluster) only reads them")
            && ready.message.contains("set spec.takeOverFrom: old-cluster"),
        "{}",
        ready.message
    );
    let taking = settled(job("takeOverFrom: old-cluster"));
    let o = plan(&taking, &w, &config, at("2026-11-27T09:30:05Z")).expect("plan");
    assert_eq!(
        summaries(&o),
        ["apply Snapshot/rs0-202611270930", "event SnapshotCreated"]
    );
}

/// #31: a job whose KmipServer has no key yet starts no catalog pod, and looks again within
/// seconds (nothing wakes it when the key comes: a restored cluster's catalog waited an hour).
#[test]
fn a_catalog_waiting_for_its_kmip_key_looks_again_soon() {
    let j = has_run(job("encryption: {kmipServerRef: {name: kmip}}"));
    let blocked = crate::controller::agent::job::Blocked {
        reason: crate::controller::reason::Reason::KmipServerNotReady,
        message: "KmipServer kmip has no active master key yet".into(),
    };
    let w = World {
        found: all_found(&j),
        kmip: Some(Err(blocked)),
        ..Default::default()
    };
    let o = plan(
        &j,
        &w,
        &OperatorConfig::default(),
        at("2026-12-07T10:00:00Z"),
    )
    .expect("plan");
    assert!(o.changes.is_empty(), "{:?}", summaries(&o));
    // 5 s, and the second the requeue rounds up.
    assert_eq!(o.requeue, Action::requeue(Duration::from_secs(6)));
}

/// #31: a backup of this cluster that finished while the catalog was read (its Snapshot's
/// status not written yet) is that Snapshot's, not imported again; the same snapshot written
/// by another cluster (a Snapshot of that name kept in Git, applied again) is imported.
#[test]
fn the_catalog_never_imports_a_run_of_this_clusters_own_snapshot_twice() {
    let j = BackupJob {
        status: Some(BackupJobStatus {
            catalog: Some(CatalogStatus {
                phase: RunPhase::Pending,
                destination: destination_digest(&job("")),
                this_cluster: Some("here".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..has_run(job(""))
    };
    let running = crate::controller::fixtures::snapshot("rs0-202612010300", "2026-12-01T03:00:00Z");
    let config = OperatorConfig {
        cluster_id: "here".into(),
        ..Default::default()
    };
    for (cluster, imported) in [("here", 0), ("elsewhere", 1)] {
        let w = World {
            found: all_found(&j),
            kmip: Some(Ok(None)),
            snapshots: vec![running.clone()],
            catalog_pod: Some(catalog_pod_done(&j, r#"{"found":1}"#)),
            catalog_map: Some(catalog_map_with(
                &j,
                &[entry("aaa111", "db/rs0-202612010300", cluster)],
            )),
            ..Default::default()
        };
        let o = plan(&j, &w, &config, at("2026-12-07T10:01:00Z")).expect("plan");
        let c = o.status.catalog.clone().expect("catalog");
        assert_eq!(c.imported, Some(imported), "{cluster}: {:?}", summaries(&o));
    }
}
