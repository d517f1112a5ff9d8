//! Least privilege (spec.retention.credentialsSecret) planned without a cluster: the snapshot
//! pods stop pruning, a retention pod given only the retention Secret applies the policy after
//! each successful Snapshot (never while one runs), and what a finished run writes: the
//! forgotten Snapshots deleted, status.retention, RetentionApplied, the back-off after a
//! failure.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::copies_tests::{
    arg_after, at, done_snapshot, found, planned, summaries, with_status, written,
};
use super::dereference::World;
use crate::api::BackupJob;
use crate::api::retention::RetentionRun;
use crate::api::verification::CheckResult;
use crate::controller::conditions::get;
use crate::controller::fixtures::{job, snapshot, terminated};
use crate::controller::job_spec::validate::check_spec;
use crate::controller::names::{MADE_BY_JOB_UID, RETENTION_RUN, RETENTION_SNAPSHOT};

const S3: &str = "destination: {s3: {bucket: b, region: eu, endpoint: 'http://s3.test:9000', insecure: true, pathStyle: true, credentialsSecret: writer}}";

fn least_privilege() -> String {
    format!("{S3}\nretention: {{keepLast: 1, credentialsSecret: pruner}}")
}

/// Succeeded Snapshot `name` the job made (its uid annotation), completed at `done`.
fn made(name: &str, id: &str, done: &str) -> crate::api::Snapshot {
    let mut s = done_snapshot(name, id, done);
    s.annotations_mut()
        .insert(MADE_BY_JOB_UID.into(), "u1".into());
    s
}

fn world(j: &BackupJob, snaps: Vec<crate::api::Snapshot>, pods: Vec<Pod>) -> World {
    World {
        found: found(j),
        kmip: Some(Ok(None)),
        snapshots: snaps,
        retention_pods: pods.into_iter().map(|p| (p, None)).collect(),
        ..Default::default()
    }
}

/// Retention pod of run `run`, started after Snapshot `after`, ended as given.
fn retention_pod(run: u64, after: &str, ended: Option<(&str, i32, &str)>) -> Pod {
    let status = match ended {
        Some((phase, code, message)) => terminated(phase, code, message).replace(
            "terminated: {",
            "terminated: {finishedAt: \"2026-12-01T03:02:00Z\", ",
        ),
        None => "  phase: Running".to_string(),
    };
    serde_yaml::from_str(&format!(
        "metadata: {{name: rs0-retention-{run}, namespace: db, creationTimestamp: \"2026-12-01T03:01:30Z\", annotations: {{{RETENTION_SNAPSHOT}: {after}, {RETENTION_RUN}: \"{run}\"}}}}\nstatus:\n{status}"
    ))
    .expect("retention pod")
}

fn secrets_of(pod: &Pod) -> Vec<String> {
    let mut out: Vec<String> = pod.spec.as_ref().expect("spec").containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some(e.value_from.as_ref()?.secret_key_ref.as_ref()?.name.clone()))
        .collect();
    out.dedup();
    out
}

#[test]
fn a_successful_snapshot_starts_a_retention_pod_given_only_the_retention_secret() {
    let j = with_status(&least_privilege(), vec![]);
    let w = world(
        &j,
        vec![made("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")],
        vec![],
    );
    let o = planned(&j, &w, "2026-12-01T03:01:10Z");
    let pods: Vec<Pod> = written(&o, "Pod");
    assert_eq!(pods.len(), 1, "{:?}", summaries(&o));
    let pod = &pods[0];
    assert_eq!(pod.name_any(), "rs0-retention-1");
    let args = pod.spec.as_ref().expect("spec").containers[0]
        .args
        .clone()
        .unwrap_or_default();
    assert_eq!(args[..2], ["agent", "prune"]);
    assert_eq!(arg_after(pod, "--keep-last"), Some("1"));
    assert_eq!(arg_after(pod, "--protect"), Some("aaaa1111"));
    assert_eq!(arg_after(pod, "--repo"), Some("s3://b"));
    assert!(args.contains(&"trigger=schedule".to_string()), "{args:?}");
    assert_eq!(secrets_of(pod), ["pruner"]);
    let r = o.status.retention.expect("status.retention");
    assert_eq!(
        (r.runs, r.running_pod.as_deref()),
        (1, Some("rs0-retention-1"))
    );
    // Nothing has ended yet: no RetentionApplied.
    assert!(get(&o.status.conditions, "RetentionApplied").is_none());
}

#[test]
fn no_retention_pod_while_a_snapshot_runs_nor_without_the_secret() {
    let j = with_status(&least_privilege(), vec![]);
    let mut running = snapshot("rs0-2", "2026-12-01T03:02:00Z");
    running.status = Some(crate::api::SnapshotStatus {
        phase: crate::api::snapshot::RunPhase::Running,
        ..Default::default()
    });
    let w = world(
        &j,
        vec![made("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z"), running],
        vec![],
    );
    let o = planned(&j, &w, "2026-12-01T03:02:10Z");
    assert!(written::<Pod>(&o, "Pod").is_empty(), "{:?}", summaries(&o));
    let plain = with_status(&format!("{S3}\nretention: {{keepLast: 1}}"), vec![]);
    let w = world(
        &plain,
        vec![made("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")],
        vec![],
    );
    let o = planned(&plain, &w, "2026-12-01T03:01:10Z");
    assert!(written::<Pod>(&o, "Pod").is_empty(), "{:?}", summaries(&o));
    assert_eq!(o.status.retention, None);
}

#[test]
fn a_finished_run_deletes_the_forgotten_snapshots_once_and_reports_them() {
    let mut j = with_status(&least_privilege(), vec![]);
    if let Some(st) = j.status.as_mut() {
        st.retention = Some(RetentionRun {
            runs: 1,
            running_pod: Some("rs0-retention-1".into()),
            ..Default::default()
        });
    }
    let result = r#"{"kept":1,"forgotten":["aaaa1111"],"forgotten_total":1,"bytes_freed":2048}"#;
    let pod = retention_pod(1, "rs0-2", Some(("Succeeded", 0, result)));
    let mut by_user = done_snapshot("mine", "aaaa1111", "2026-12-01T02:00:00Z");
    by_user.metadata.annotations = None;
    let w = world(
        &j,
        vec![
            made("rs0-1", "aaaa1111", "2026-12-01T03:00:00Z"),
            made("rs0-2", "bbbb2222", "2026-12-01T03:01:00Z"),
            by_user,
        ],
        vec![pod],
    );
    let o = planned(&j, &w, "2026-12-01T03:02:10Z");
    let s = summaries(&o);
    assert!(
        s.iter()
            .any(|c| c.contains("delete") && c.contains("rs0-1")),
        "{s:?}"
    );
    assert!(!s.iter().any(|c| c.contains("mine")), "{s:?}");
    // The run after rs0-2 succeeded: none is due.
    assert!(written::<Pod>(&o, "Pod").is_empty(), "{s:?}");
    let r = o.status.retention.clone().expect("retention");
    assert_eq!(
        (r.result, r.kept, r.forgotten, r.bytes_freed),
        (CheckResult::Succeeded, 1, 1, 2048)
    );
    assert_eq!(r.last_run_snapshot.as_deref(), Some("rs0-2"));
    let c = get(&o.status.conditions, "RetentionApplied").expect("condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Pruned"));
    // The next reconcile reads that status: nothing is deleted twice.
    let mut again = j.clone();
    if let Some(st) = again.status.as_mut() {
        st.retention = Some(r);
    }
    let o = planned(&again, &w, "2026-12-01T03:02:20Z");
    assert!(
        !summaries(&o).iter().any(|c| c.contains("rs0-1")),
        "{:?}",
        summaries(&o)
    );
}

#[test]
fn a_failed_run_is_a_false_condition_and_is_retried_after_a_back_off() {
    let j = with_status(&least_privilege(), vec![]);
    let pod = retention_pod(
        1,
        "rs0-1",
        Some(("Failed", 1, "the store refused access (AccessDenied)")),
    );
    let w = world(
        &j,
        vec![made("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")],
        vec![pod],
    );
    let o = planned(&j, &w, "2026-12-01T03:02:10Z");
    assert!(written::<Pod>(&o, "Pod").is_empty(), "{:?}", summaries(&o));
    let c = get(&o.status.conditions, "RetentionApplied").expect("condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "PruneFailed")
    );
    assert!(c.message.contains("AccessDenied"), "{}", c.message);
    // A minute after the failure the run is retried, as run 2.
    let mut later = j.clone();
    if let Some(st) = later.status.as_mut() {
        st.retention = o.status.retention.clone();
    }
    let o = planned(&later, &w, "2026-12-01T03:03:01Z");
    let pods: Vec<Pod> = written(&o, "Pod");
    assert_eq!(
        pods.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["rs0-retention-2"]
    );
    let _ = at("2026-12-01T03:03:01Z");
}

#[test]
fn retention_credentials_are_refused_where_they_cannot_keep_anything_apart() {
    let problems = |yaml: &str| -> Vec<String> {
        check_spec(&job(yaml).spec)
            .1
            .into_iter()
            .map(|p| p.message)
            .collect()
    };
    let pvc = problems("retention: {keepLast: 1, credentialsSecret: pruner}");
    assert!(
        pvc.iter().any(
            |m| m.starts_with("spec.retention.credentialsSecret \"pruner\": a pvc destination")
        ),
        "{pvc:?}"
    );
    let no_rule = problems(&format!("{S3}\nretention: {{credentialsSecret: pruner}}"));
    assert!(
        no_rule.iter().any(|m| m.contains("has no rule")),
        "{no_rule:?}"
    );
    let copy = problems(&format!(
        "{S3}\ncopies: [{{name: off, destination: {{pvc: {{claimName: c, path: r}}}}, encryption: {{localKeySecret: {{name: k, key: key.json}}}}, retention: {{keepLast: 1, credentialsSecret: p}}}}]"
    ));
    assert!(
        copy.iter()
            .any(|m| m.starts_with("spec.copies[0].retention.credentialsSecret")),
        "{copy:?}"
    );
    assert!(problems(&least_privilege()).is_empty());
}

const COPY: &str = "copies: [{name: offsite, destination: {s3: {bucket: off, region: eu, endpoint: 'http://s3.test:9000', insecure: true, pathStyle: true, credentialsSecret: off-writer}}, encryption: {localKeySecret: {name: off-key, key: key.json}}, retention: {keepLast: 5, credentialsSecret: off-pruner}}]";

/// A copy with retention credentials: its copy pods copy what its retention keeps and prune
/// nothing; after a run that left it holding a newer Snapshot, a retention pod of the copy
/// (its repository, key and retention Secret, the job's tag as scope) prunes it.
#[test]
fn a_copy_with_retention_credentials_is_pruned_by_its_own_retention_pod() {
    let j = with_status(&format!("{S3}\n{COPY}"), vec![]);
    let mut w = world(
        &j,
        vec![made("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")],
        vec![],
    );
    w.copy_access = vec![Ok(None)];
    let o = planned(&j, &w, "2026-12-01T03:01:10Z");
    let pods: Vec<Pod> = written(&o, "Pod");
    let copy_pod = pods
        .iter()
        .find(|p| p.name_any() == "rs0-copy-offsite-1")
        .expect("copy pod");
    let args = copy_pod.spec.as_ref().expect("spec").containers[0]
        .args
        .clone()
        .unwrap_or_default();
    assert!(args.contains(&"--no-prune".to_string()), "{args:?}");
    assert_eq!(arg_after(copy_pod, "--keep-last"), Some("5"));
    assert!(
        !serde_json::to_string(copy_pod)
            .expect("json")
            .contains("off-pruner")
    );
    // Nothing copied yet: no retention pod for the copy.
    assert!(
        !pods.iter().any(|p| p.name_any().contains("retention")),
        "{:?}",
        summaries(&o)
    );

    // The copy now holds rs0-1 and no copy pod runs: its retention pod starts.
    let held = crate::api::copy::CopyStatus {
        name: "offsite".into(),
        result: CheckResult::Succeeded,
        last_copied_snapshot: Some("rs0-1".into()),
        runs: 1,
        ..Default::default()
    };
    let j = with_status(&format!("{S3}\n{COPY}"), vec![held]);
    let o = planned(&j, &w, "2026-12-01T03:02:10Z");
    let pods: Vec<Pod> = written(&o, "Pod");
    assert_eq!(
        pods.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["rs0-copy-offsite-retention-1"],
        "{:?}",
        summaries(&o)
    );
    let pod = &pods[0];
    assert_eq!(arg_after(pod, "--repo"), Some("s3://off"));
    assert_eq!(arg_after(pod, "--keep-last"), Some("5"));
    assert_eq!(arg_after(pod, "--protect"), Some("aaaa1111"));
    assert_eq!(arg_after(pod, "--prune-tag"), Some("backupjob=db/rs0"));
    assert_eq!(arg_after(pod, "--cluster"), None);
    assert_eq!(secrets_of(pod), ["off-pruner"]);
    assert_eq!(
        pod.labels()
            .get(crate::controller::names::RETENTION_COPY_LABEL)
            .map(String::as_str),
        Some("offsite")
    );
    let copy = &o.status.copies[0];
    assert_eq!(
        copy.retention
            .as_ref()
            .and_then(|r| r.running_pod.as_deref()),
        Some("rs0-copy-offsite-retention-1")
    );
    // The job's own repository has no retention credentials: no status.retention.
    assert_eq!(o.status.retention, None);
}
