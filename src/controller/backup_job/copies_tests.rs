//! The copies (spec.copies[]) planned without a cluster: when a copy pod starts and what it is
//! given, what a finished run writes into status.copies and the CopiesHealthy condition, the
//! back-off after a failure, a copy that cannot start, and spec.verification.copy.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::catalog::destination_digest;
use super::dereference::World;
use super::plan::{Outcome, plan};
use crate::api::BackupJob;
use crate::api::catalog::CatalogStatus;
use crate::api::copy::CopyStatus;
use crate::api::snapshot::RunPhase;
use crate::api::verification::CheckResult;
use crate::controller::agent::job::Blocked;
use crate::controller::conditions::get;
use crate::controller::context::OperatorConfig;
use crate::controller::execute::Change;
use crate::controller::fixtures::{job, succeeded_snapshot, terminated};
use crate::controller::job_spec::validate::{Found, references};
use crate::controller::names::{COPY_LABEL, COPY_RUN, COPY_SNAPSHOT};
use crate::controller::reason::Reason;

const COPY: &str = "copies: [{name: offsite, destination: {s3: {bucket: off, region: eu, endpoint: 'http://s3.test:9000', insecure: true, pathStyle: true, credentialsSecret: off-creds}}, encryption: {localKeySecret: {name: off-key, key: key.json}}, retention: {keepLast: 5}}]";

pub(super) fn at(t: &str) -> jiff::Timestamp {
    t.parse().expect("time")
}

/// The job, its catalog read, with `copies` as status.copies.
pub(super) fn with_status(yaml: &str, copies: Vec<CopyStatus>) -> BackupJob {
    let mut j = job(yaml);
    j.status = Some(crate::api::BackupJobStatus {
        last_snapshot: Some("rs0-1".into()),
        last_successful_snapshot: Some("rs0-1".into()),
        catalog: Some(CatalogStatus {
            phase: RunPhase::Succeeded,
            destination: destination_digest(&j),
            ..Default::default()
        }),
        copies,
        ..Default::default()
    });
    j
}

pub(super) fn found(j: &BackupJob) -> Found {
    references(&j.spec)
        .into_iter()
        .map(|r| {
            let keys = r.keys.iter().filter_map(|a| a.first().cloned()).collect();
            ((r.kind, r.name), Some(keys))
        })
        .collect()
}

/// Succeeded Snapshot `name` (repository id `id`), completed at `done`.
pub(super) fn done_snapshot(name: &str, id: &str, done: &str) -> crate::api::Snapshot {
    let mut s = succeeded_snapshot(name, id);
    if let Some(st) = s.status.as_mut() {
        st.completion_time = Some(Time(at(done)));
    }
    s
}

fn world(j: &BackupJob, snaps: Vec<crate::api::Snapshot>, pods: Vec<Pod>) -> World {
    World {
        found: found(j),
        kmip: Some(Ok(None)),
        snapshots: snaps,
        copy_access: vec![Ok(None)],
        copy_pods: pods.into_iter().map(|p| (p, None)).collect(),
        ..Default::default()
    }
}

pub(super) fn planned(j: &BackupJob, w: &World, now: &str) -> Outcome {
    plan(j, w, &OperatorConfig::default(), at(now)).expect("plan")
}

pub(super) fn summaries(o: &Outcome) -> Vec<String> {
    o.changes.iter().map(Change::summary).collect()
}

/// The objects of `kind` that `o` applies or creates.
pub(super) fn written<K: serde::de::DeserializeOwned>(o: &Outcome, kind: &str) -> Vec<K> {
    o.changes
        .iter()
        .filter_map(|c| match c {
            Change::Apply { body, .. } | Change::Create { body, .. } if body["kind"] == kind => {
                serde_json::from_value(body.clone()).ok()
            }
            _ => None,
        })
        .collect()
}

/// The copy pod `o` applies.
fn applied_pod(o: &Outcome) -> Pod {
    written::<Pod>(o, "Pod").pop().expect("a pod applied")
}

/// Copy pod `name` of copy offsite for Snapshot `snapshot`, created at `created`, ended with
/// `phase`, exit code and message.
fn copy_pod(name: &str, snapshot: &str, created: &str, ended: Option<(&str, i32, &str)>) -> Pod {
    // Ended when it was created: the kubelet's finishedAt, which the run's end time is.
    let status = match ended {
        Some((phase, code, message)) => terminated(phase, code, message).replace(
            "terminated: {",
            &format!("terminated: {{finishedAt: \"{created}\", "),
        ),
        None => "  phase: Running".to_string(),
    };
    let run = name.rsplit('-').next().expect("run number");
    serde_yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: db, creationTimestamp: \"{created}\", labels: {{{COPY_LABEL}: offsite}}, annotations: {{{COPY_SNAPSHOT}: {snapshot}, {COPY_RUN}: \"{run}\"}}}}\nstatus:\n{status}"
    ))
    .expect("copy pod")
}

const RESULT: &str = r#"{"targetId":"t1","snapshotsCopied":1,"alreadyThere":0,"packsCopied":4,"bytesCopied":4096,"keysWritten":1,"keyId":"local:abc"}"#;

pub(super) fn arg_after<'a>(pod: &'a Pod, flag: &str) -> Option<&'a str> {
    let args = pod.spec.as_ref()?.containers[0].args.as_ref()?;
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// A successful Snapshot the copy lacks starts one copy pod: the job's repository as the
/// source, the copy's as `--to` with its own key and credentials apart, the copy's retention,
/// and the Snapshot it must end holding; status counts the run and the lag.
#[test]
fn a_new_snapshot_starts_a_copy_pod_with_both_repositories_kept_apart() {
    let j = with_status(COPY, vec![]);
    let w = world(
        &j,
        vec![done_snapshot("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")],
        vec![],
    );
    let o = planned(&j, &w, "2026-12-01T03:02:00Z");
    let s = summaries(&o);
    assert!(
        s.contains(&"apply Pod/rs0-copy-offsite-1".to_string()),
        "{s:?}"
    );
    assert!(s.contains(&"event CopyStarted".to_string()), "{s:?}");
    let pod = applied_pod(&o);
    assert_eq!(
        pod.labels().get(COPY_LABEL).map(String::as_str),
        Some("offsite")
    );
    assert_eq!(arg_after(&pod, "copy"), Some("--tag"));
    assert_eq!(arg_after(&pod, "--tag"), Some("backupjob=db/rs0"));
    assert_eq!(arg_after(&pod, "--must-hold"), Some("aaaa1111"));
    assert_eq!(arg_after(&pod, "--keep-last"), Some("5"));
    assert_eq!(arg_after(&pod, "--repo"), Some("/repo/snapcrypt"));
    assert_eq!(
        arg_after(&pod, "--key-file"),
        Some("/etc/snapcrypt/key/key.json")
    );
    assert_eq!(arg_after(&pod, "--to"), Some("s3://off"));
    assert_eq!(
        arg_after(&pod, "--to-key-file"),
        Some("/etc/snapcrypt/to-key/key.json")
    );
    let env = pod.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let key_id = env
        .iter()
        .find(|e| e.name == "SNAPCRYPT_TO_AWS_ACCESS_KEY_ID")
        .expect("the copy's credentials under the target prefix");
    assert_eq!(
        crate::controller::agent::pod::secret_of(key_id),
        Some(("off-creds", "AWS_ACCESS_KEY_ID"))
    );
    assert!(
        env.iter().all(|e| e.name != "AWS_ACCESS_KEY_ID"),
        "the job's repository is a PVC"
    );
    let st = &o.status.copies[0];
    assert_eq!((st.runs, st.lag), (1, 1));
    assert_eq!(st.running_pod.as_deref(), Some("rs0-copy-offsite-1"));
    let c = get(&o.status.conditions, "CopiesHealthy").expect("CopiesHealthy");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "CopyRunning")
    );

    // While it runs, no second run of the copy starts; and a reconcile that reads the job
    // before its last status write still counts the run (the pod says it).
    let running = with_status(COPY, vec![]);
    let w = world(
        &running,
        vec![done_snapshot("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")],
        vec![copy_pod(
            "rs0-copy-offsite-1",
            "rs0-1",
            "2026-12-01T03:02:00Z",
            None,
        )],
    );
    let o = planned(&running, &w, "2026-12-01T03:03:00Z");
    assert!(
        summaries(&o).iter().all(|s| !s.starts_with("apply Pod/")),
        "{:?}",
        summaries(&o)
    );
    assert_eq!(o.status.copies[0].runs, 1);
    assert_eq!(
        o.status.copies[0].running_pod.as_deref(),
        Some("rs0-copy-offsite-1")
    );
}

/// A finished run is recorded once: the Snapshot it held, lag 0, CopiesCurrent; the older
/// finished pod is deleted, the newest kept for its logs; nothing new starts.
#[test]
fn a_successful_run_makes_the_copy_current() {
    let j = with_status(
        COPY,
        vec![CopyStatus {
            name: "offsite".into(),
            runs: 2,
            ..Default::default()
        }],
    );
    let w = world(
        &j,
        vec![done_snapshot("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")],
        vec![
            copy_pod(
                "rs0-copy-offsite-1",
                "rs0-0",
                "2026-11-30T03:02:00Z",
                Some(("Failed", 1, "boom")),
            ),
            copy_pod(
                "rs0-copy-offsite-2",
                "rs0-1",
                "2026-12-01T03:02:00Z",
                Some(("Succeeded", 0, RESULT)),
            ),
        ],
    );
    let o = planned(&j, &w, "2026-12-01T03:05:00Z");
    let s = summaries(&o);
    assert!(
        s.contains(&"delete Pod/rs0-copy-offsite-1".to_string()),
        "{s:?}"
    );
    assert!(s.iter().all(|x| !x.starts_with("apply Pod/")), "{s:?}");
    let st = &o.status.copies[0];
    assert_eq!(st.result, CheckResult::Succeeded);
    assert_eq!(st.last_copied_snapshot.as_deref(), Some("rs0-1"));
    assert_eq!((st.lag, st.bytes_copied, st.packs_copied), (0, 4096, 4));
    assert_eq!(st.key_id.as_deref(), Some("local:abc"));
    assert_eq!(st.last_run_pod.as_deref(), Some("rs0-copy-offsite-2"));
    let c = get(&o.status.conditions, "CopiesHealthy").expect("CopiesHealthy");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "CopiesCurrent")
    );
    assert!(c.message.contains("rs0-1"), "{}", c.message);

    // A newer Snapshot: lag 1, and the next run starts for it.
    let next = with_status(COPY, o.status.copies.clone());
    let w = world(
        &next,
        vec![
            done_snapshot("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z"),
            done_snapshot("rs0-2", "bbbb2222", "2026-12-02T03:01:00Z"),
        ],
        vec![copy_pod(
            "rs0-copy-offsite-2",
            "rs0-1",
            "2026-12-01T03:02:00Z",
            Some(("Succeeded", 0, RESULT)),
        )],
    );
    let o = planned(&next, &w, "2026-12-02T03:02:00Z");
    assert_eq!(arg_after(&applied_pod(&o), "--must-hold"), Some("bbbb2222"));
    assert_eq!(o.status.copies[0].lag, 1);
    assert_eq!(o.status.copies[0].runs, 3);
}

/// A failed run: CopiesHealthy False naming the copy and why; retried after a minute (not
/// before), and a second failure in a row is announced again.
#[test]
fn a_failed_run_is_retried_with_back_off() {
    let j = with_status(
        COPY,
        vec![CopyStatus {
            name: "offsite".into(),
            runs: 1,
            ..Default::default()
        }],
    );
    let snaps = vec![done_snapshot("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")];
    let failed = copy_pod(
        "rs0-copy-offsite-1",
        "rs0-1",
        "2026-12-01T03:02:00Z",
        Some(("Failed", 1, "the target's credentials were refused")),
    );
    let w = world(&j, snaps.clone(), vec![failed.clone()]);
    let o = planned(&j, &w, "2026-12-01T03:02:30Z");
    assert!(
        summaries(&o).iter().all(|s| !s.starts_with("apply Pod/")),
        "{:?}",
        summaries(&o)
    );
    let st = &o.status.copies[0];
    assert_eq!(
        (st.result, st.consecutive_failures, st.lag),
        (CheckResult::Failed, 1, 1)
    );
    let c = get(&o.status.conditions, "CopiesHealthy").expect("CopiesHealthy");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "CopyFailed")
    );
    assert!(
        c.message.contains("copy offsite failed") && c.message.contains("credentials were refused"),
        "{}",
        c.message
    );
    assert_eq!(
        o.requeue,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(31))
    );

    // A minute after the failure, not before, the next run starts.
    let later = with_status(COPY, o.status.copies.clone());
    let w = world(&later, snaps, vec![failed]);
    let early = planned(&later, &w, "2026-12-01T03:02:59Z");
    assert!(
        summaries(&early)
            .iter()
            .all(|s| !s.starts_with("apply Pod/")),
        "{:?}",
        summaries(&early)
    );
    let o = planned(&later, &w, "2026-12-01T03:03:01Z");
    assert!(
        summaries(&o).contains(&"apply Pod/rs0-copy-offsite-2".to_string()),
        "{:?}",
        summaries(&o)
    );
}

/// A copy whose references are missing does not start and says why, and never holds back the
/// job's own backups.
#[test]
fn a_blocked_copy_waits_and_the_job_still_backs_up() {
    let mut j = with_status(
        &format!("schedule: {{cron: \"0 3 * * *\"}}\n{COPY}"),
        vec![],
    );
    j.metadata.creation_timestamp = job("").metadata.creation_timestamp;
    let mut w = world(
        &j,
        vec![done_snapshot("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")],
        vec![],
    );
    w.copy_access = vec![Err(Blocked {
        reason: Reason::SecretNotFound,
        message: "spec.copies[0].destination.s3.credentialsSecret \"off-creds\": Secret not found in namespace db".into(),
    })];
    let o = planned(&j, &w, "2026-12-02T03:00:10Z");
    let s = summaries(&o);
    assert!(
        s.iter().any(|x| x.starts_with("apply Snapshot/")),
        "the job's backup: {s:?}"
    );
    assert!(s.iter().all(|x| !x.starts_with("apply Pod/")), "{s:?}");
    let st = &o.status.copies[0];
    assert!(
        st.blocked
            .as_deref()
            .is_some_and(|b| b.contains("off-creds")),
        "{st:?}"
    );
    let c = get(&o.status.conditions, "CopiesHealthy").expect("CopiesHealthy");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "CopyBlocked")
    );
    let ready = get(&o.status.conditions, "Ready").expect("Ready");
    assert_eq!(ready.status, "True");
}

/// A scheduled copy runs at its time only, for the newest Snapshot.
#[test]
fn a_scheduled_copy_runs_at_its_time() {
    let yaml = "copies: [{name: offsite, destination: {pvc: {claimName: offsite}}, encryption: {localKeySecret: {name: off-key, key: key.json}}, schedule: {cron: \"0 5 * * *\"}}]";
    let last = CopyStatus {
        name: "offsite".into(),
        result: CheckResult::Succeeded,
        last_copied_snapshot: Some("rs0-0".into()),
        last_run_time: Some(Time(at("2026-11-30T05:00:30Z"))),
        runs: 1,
        ..Default::default()
    };
    let j = with_status(yaml, vec![last]);
    let snaps = vec![done_snapshot("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")];
    let w = world(&j, snaps, vec![]);
    let before = planned(&j, &w, "2026-12-01T04:59:00Z");
    assert!(
        summaries(&before)
            .iter()
            .all(|s| !s.starts_with("apply Pod/")),
        "{:?}",
        summaries(&before)
    );
    let c = get(&before.status.conditions, "CopiesHealthy").expect("CopiesHealthy");
    assert_eq!(c.reason, "CopyScheduled");
    let o = planned(&j, &w, "2026-12-01T05:00:10Z");
    let pod = applied_pod(&o);
    assert_eq!(arg_after(&pod, "--to"), Some("/to-repo/snapcrypt"));
    assert!(
        pod.annotations()
            .contains_key(crate::controller::names::SCHEDULED_TIME)
    );
}

/// spec.verification.copy: the data read reads the copy (its repository and key), and the
/// restore test restores the newest Snapshot the copy holds through spec.source.
#[test]
fn verification_can_check_a_copy() {
    let yaml = format!(
        "{COPY}\nverification: {{copy: offsite, readData: {{schedule: {{cron: \"0 * * * *\"}}}}, restoreTest: {{schedule: {{cron: \"30 * * * *\"}}, size: 1Gi, storageClassName: standard}}}}"
    );
    let held = CopyStatus {
        name: "offsite".into(),
        result: CheckResult::Succeeded,
        last_copied_snapshot: Some("rs0-1".into()),
        last_copied_snapshot_time: Some(Time(at("2026-12-01T03:01:00Z"))),
        last_run_pod: Some("rs0-copy-offsite-1".into()),
        runs: 1,
        ..Default::default()
    };
    let j = with_status(&yaml, vec![held]);
    let snaps = vec![done_snapshot("rs0-1", "aaaa1111", "2026-12-01T03:01:00Z")];
    let w = world(
        &j,
        snaps,
        vec![copy_pod(
            "rs0-copy-offsite-1",
            "rs0-1",
            "2026-12-01T03:02:00Z",
            Some(("Succeeded", 0, RESULT)),
        )],
    );
    let o = planned(&j, &w, "2026-12-01T04:00:10Z");
    let verify = written::<Pod>(&o, "Pod")
        .into_iter()
        .find(|p| p.name_any().starts_with("rs0-verify-"))
        .expect("a verify pod");
    assert_eq!(arg_after(&verify, "--repo"), Some("s3://off"));
    assert_eq!(
        arg_after(&verify, "--key-file"),
        Some("/etc/snapcrypt/key/key.json")
    );
    let secret = verify
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|v| v.secret.as_ref()?.secret_name.clone());
    assert_eq!(secret.as_deref(), Some("off-key"));
    let o = planned(&j, &w, "2026-12-01T04:30:10Z");
    let test = written::<crate::api::Restore>(&o, "Restore")
        .pop()
        .expect("a restore test");
    assert!(test.spec.snapshot_ref.is_none());
    let source = test.spec.source.expect("spec.source");
    assert_eq!(source.snapshot, "aaaa1111");
    assert_eq!(
        source.destination.s3.map(|s| s.bucket).as_deref(),
        Some("off")
    );
    assert_eq!(source.backup_job, "rs0");
}
