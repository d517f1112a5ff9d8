//! A BackupJob's restore tests (spec.verification.restoreTest) as Restores, and what they and
//! the data reads mean for the job's status. Pure.

use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::common::LocalRef;
use crate::api::copy::CopySpec;
use crate::api::restore::{RestoreSource, RestoreTarget, ScratchClaim};
use crate::api::snapshot::RunPhase;
use crate::api::verification::{CheckResult, RestoreTestRun, VerificationRun};
use crate::api::{BackupJob, Restore, RestoreSpec};
use crate::controller::conditions::Cond;
use crate::controller::conditions::CondType;
use crate::controller::names::{
    RESTORE_TEST_JOB_UID_LABEL, RESTORE_TEST_LABEL, SCHEDULED_TIME, job_labels, label_value,
    restore_test_name,
};
use crate::controller::reason::Reason;

/// Annotation of a restore test: the Snapshot it restores (also when read from a copy, which
/// names the snapshot by its repository id).
pub const TESTED_SNAPSHOT: &str = "snapcrypt.dev/tested-snapshot";

/// The directory of the scratch claim a restore test restores into (the check container
/// finds it in `$SNAPCRYPT_RESTORED_PATH`, `/restored/db`).
pub const RESTORE_TEST_DIR: &str = "db";

/// The Restore of the restore test scheduled at `scheduled`: Snapshot `snapshot` into a
/// scratch claim of the same name, read back, then the job's check container. With `copy`
/// (spec.verification.copy: the copy and the snapshot's repository id), the snapshot is read
/// from that copy, through spec.source, not from the job's repository. Owned by the job.
/// `None` if the job has no uid or no restoreTest.
pub fn restore_test(
    job: &BackupJob,
    scheduled: jiff::Timestamp,
    snapshot: &str,
    copy: Option<(&CopySpec, &str)>,
    scratch: ScratchClaim,
) -> Option<Restore> {
    let test = job.spec.verification.as_ref()?.restore_test.as_ref()?;
    let owner = job.controller_owner_ref(&())?;
    let uid = job.uid()?;
    let name = restore_test_name(&job.name_any(), scheduled);
    let mut labels = job_labels(&job.name_any());
    labels.insert(RESTORE_TEST_JOB_UID_LABEL.into(), uid);
    if let Some(v) = label_value(&job.name_any()) {
        labels.insert(RESTORE_TEST_LABEL.into(), v.into());
    }
    Some(Restore {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: Some(
                [
                    (SCHEDULED_TIME.to_string(), scheduled.to_string()),
                    (TESTED_SNAPSHOT.to_string(), snapshot.to_string()),
                ]
                .into(),
            ),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: RestoreSpec {
            snapshot_ref: copy.is_none().then(|| LocalRef {
                name: snapshot.into(),
            }),
            source: copy.map(|(c, id)| RestoreSource {
                backup_job: job.name_any(),
                destination: c.destination.clone(),
                encryption: c.encryption.clone(),
                snapshot: id.to_string(),
                tags: Default::default(),
            }),
            // A directory the restore creates (and so owns): the agent, not root, may set the
            // snapshot's mode and times on it, which it may not on a fresh volume's root.
            target: Some(RestoreTarget {
                claim_name: name,
                path: Some(RESTORE_TEST_DIR.into()),
                force: false,
                delete_extra: false,
                scratch: Some(scratch),
            }),
            targets: None,
            verify_restored: true,
            check: test.check.clone(),
        },
        status: None,
    })
}

/// When a restore test was scheduled for (its annotation), else when it was created.
pub fn test_scheduled_time(r: &Restore) -> Option<jiff::Timestamp> {
    r.annotations()
        .get(SCHEDULED_TIME)
        .and_then(|t| t.parse().ok())
        .or_else(|| r.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Whether a Restore has ended (Succeeded or Failed).
pub fn is_finished(r: &Restore) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, RunPhase::Succeeded | RunPhase::Failed))
}

/// A restore test as the job's status shows it.
pub fn test_run(r: &Restore) -> RestoreTestRun {
    let st = r.status.clone().unwrap_or_default();
    let result = match st.phase {
        RunPhase::Succeeded => CheckResult::Succeeded,
        RunPhase::Failed => CheckResult::Failed,
        _ => CheckResult::Running,
    };
    // From the Restore's creation: the scratch claim, the restore and the check.
    let began = r
        .metadata
        .creation_timestamp
        .as_ref()
        .or(st.start_time.as_ref());
    let duration_seconds = match (began, &st.completion_time) {
        (Some(s), Some(c)) => Some(c.0.duration_since(s.0).as_secs_f64().max(0.0)),
        _ => None,
    };
    RestoreTestRun {
        time: r.metadata.creation_timestamp.clone(),
        snapshot: r
            .annotations()
            .get(TESTED_SNAPSHOT)
            .cloned()
            .unwrap_or_else(|| r.spec.snapshot_name().to_string()),
        restore: r.name_any(),
        result,
        duration_seconds,
        message: st.message,
    }
}

/// Restore tests newest first (by scheduled time, then name).
pub fn newest_tests(tests: &[Restore]) -> Vec<&Restore> {
    let mut v: Vec<&Restore> = tests.iter().collect();
    v.sort_by_key(|r| std::cmp::Reverse((test_scheduled_time(r), r.name_any())));
    v
}

/// The finished restore tests beyond the newest `keep`: to delete.
pub fn surplus_tests(tests: &[Restore], keep: u32) -> Vec<String> {
    newest_tests(tests)
        .into_iter()
        .skip(keep as usize)
        .filter(|r| is_finished(r) && r.metadata.deletion_timestamp.is_none())
        .map(|r| r.name_any())
        .collect()
}

/// DataVerified and RestoreTested, each once its first run has ended: what the last one found.
pub fn check_conditions(
    verification: Option<&VerificationRun>,
    tested: Option<&RestoreTestRun>,
) -> Vec<Cond> {
    let mut conds = Vec::new();
    if let Some(v) = verification {
        conds.push(match (v.result, v.problem_count) {
            (CheckResult::Failed, 0) => Cond::new(
                CondType::DataVerified,
                false,
                Reason::VerificationFailed,
                format!(
                    "reading pack group {} could not finish: {}",
                    v.subset,
                    v.message.as_deref().unwrap_or("no message")
                ),
            ),
            (CheckResult::Failed, n) => Cond::new(
                CondType::DataVerified,
                false,
                Reason::DataDamaged,
                format!(
                    "reading pack group {} found {n} damaged or missing object(s): {}",
                    v.subset,
                    v.problems.join("; ")
                ),
            ),
            _ => Cond::new(
                CondType::DataVerified,
                true,
                Reason::DataVerified,
                format!(
                    "pack group {}: {} pack(s) read and authenticated, no damage",
                    v.subset, v.packs_read
                ),
            ),
        });
    }
    if let Some(t) = tested {
        let message = t.message.clone().unwrap_or_default();
        conds.push(match t.result {
            CheckResult::Succeeded => Cond::new(
                CondType::RestoreTested,
                true,
                Reason::RestoreTestPassed,
                format!(
                    "Restore {} restored Snapshot {}: {message}",
                    t.restore, t.snapshot
                ),
            ),
            _ => Cond::new(
                CondType::RestoreTested,
                false,
                Reason::RestoreTestFailed,
                format!(
                    "Restore {} of Snapshot {} failed: {message}",
                    t.restore, t.snapshot
                ),
            ),
        });
    }
    conds
}

/// The newest finished restore test, as status shows it.
pub fn last_verdict(tests: &[Restore]) -> Option<RestoreTestRun> {
    newest_tests(tests)
        .into_iter()
        .find(|r| is_finished(r))
        .map(test_run)
}
