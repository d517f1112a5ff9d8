//! A retention policy (the job's spec.retention, or a copy's) as agent arguments; the job's
//! retention credentials (least privilege) checked and referenced; the Snapshots a retention
//! pass forgot. Pure.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::validate::{Problem, Reference, repository_references};
use crate::api::agent::RetentionResult;
use crate::api::backup_job::{BackupJobSpec, Encryption, Retention};
use crate::api::copy::CopySpec;
use crate::api::destination::Destination;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, Snapshot};
use crate::controller::names::MADE_BY_JOB_UID;
use crate::controller::reason::Reason;

/// The rules of `r` as `--keep-*` and `--max-age` flags (none for an empty policy).
pub fn retention_flags(r: &Retention) -> Vec<String> {
    let rules = [
        ("--keep-last", r.keep_last.map(|n| n.to_string())),
        ("--keep-daily", r.keep_daily.map(|n| n.to_string())),
        ("--keep-weekly", r.keep_weekly.map(|n| n.to_string())),
        ("--keep-monthly", r.keep_monthly.map(|n| n.to_string())),
        ("--max-age", r.max_age.clone()),
    ];
    rules
        .into_iter()
        .filter_map(|(flag, value)| Some([flag.to_string(), value?]))
        .flatten()
        .collect()
}

/// The field of the job's retention credentials.
pub const CREDENTIALS_FIELD: &str = "spec.retention.credentialsSecret";

/// The job's retention credentials Secret (spec.retention.credentialsSecret), when its
/// retention runs in a retention pod of its own.
pub fn retention_secret(spec: &BackupJobSpec) -> Option<&str> {
    spec.retention.as_ref()?.credentials_secret.as_deref()
}

/// A copy's own retention credentials (spec.copies[].retention.credentialsSecret: a job's
/// retention Secret is for its own destination, never lent to a copy).
pub fn copy_retention_secret(c: &CopySpec) -> Option<&str> {
    c.retention.as_ref()?.credentials_secret.as_deref()
}

/// Whether any repository of the job (its own, a copy's) prunes in retention pods.
pub fn any_retention_pods(spec: &BackupJobSpec) -> bool {
    retention_secret(spec).is_some()
        || spec
            .copies
            .iter()
            .any(|c| copy_retention_secret(c).is_some())
}

/// `d` reached with Secret `secret` instead of its own credentials (a retention pod's view of
/// the destination); None for a destination without store credentials (a claim).
pub fn with_credentials(d: &Destination, secret: &str) -> Option<Destination> {
    let mut d = d.clone();
    if let Some(s3) = d.s3.as_mut() {
        s3.credentials_secret = secret.to_string();
    } else if let Some(g) = d.gcs.as_mut() {
        g.credentials_secret = Some(secret.to_string());
        g.workload_identity = None;
    } else if let Some(a) = d.azure.as_mut() {
        a.credentials_secret = Some(secret.to_string());
        a.workload_identity = None;
    } else {
        return None;
    }
    Some(d)
}

/// Retention Secret `secret` of destination `d` as a reference at `field`, with the keys the
/// destination's own Secret needs.
pub fn retention_reference(d: &Destination, secret: Option<&str>, field: &str) -> Vec<Reference> {
    let Some(d) = secret.and_then(|s| with_credentials(d, s)) else {
        return Vec::new();
    };
    repository_references(&d, &Encryption::default(), "spec")
        .into_iter()
        .filter(|r| r.field.ends_with(".credentialsSecret"))
        .map(|r| Reference {
            field: field.to_string(),
            ..r
        })
        .collect()
}

/// The job's retention Secret as a reference (a copy's is among the copy's references).
pub fn retention_references(spec: &BackupJobSpec) -> Vec<Reference> {
    retention_reference(&spec.destination, retention_secret(spec), CREDENTIALS_FIELD)
}

/// What is wrong with retention credentials `r` of destination `d` (at `field`, the
/// retention's), each naming its field.
fn check_one(d: &Destination, r: &Retention, field: &str, problems: &mut Vec<Problem>) {
    let Some(secret) = &r.credentials_secret else {
        return;
    };
    let invalid = |m: String| Problem::new(Reason::InvalidSpec, m);
    if d.pvc.is_some() {
        problems.push(invalid(format!(
            "{field}.credentialsSecret {secret:?}: a pvc destination has no store credentials to keep apart (any pod that mounts the claim may delete): remove it, or use an s3, gcs or azure destination"
        )));
    }
    if retention_flags(r).is_empty() {
        problems.push(invalid(format!(
            "{field}.credentialsSecret {secret:?}: {field} has no rule (keepLast, keepDaily, keepWeekly, keepMonthly or maxAge), so nothing would ever be deleted with it: add a rule, or remove it"
        )));
    }
}

/// What is wrong with the job's and its copies' retention credentials, each naming its field.
pub fn check_retention(spec: &BackupJobSpec, problems: &mut Vec<Problem>) {
    if let Some(r) = &spec.retention {
        check_one(&spec.destination, r, "spec.retention", problems);
    }
    for (i, c) in spec.copies.iter().enumerate() {
        if let Some(r) = &c.retention {
            check_one(
                &c.destination,
                r,
                &format!("spec.copies[{i}].retention"),
                problems,
            );
        }
    }
}

/// Whether `snap` was made by `job` (its annotation, or its owner, names the job's uid):
/// only those are the retention's to delete.
pub fn made_by_job(snap: &Snapshot, job: &BackupJob) -> bool {
    let Some(uid) = job.uid() else {
        return false;
    };
    snap.annotations().get(MADE_BY_JOB_UID) == Some(&uid)
        || snap.owner_references().iter().any(|o| o.uid == uid)
}

/// The finished Snapshots `job` made whose repository snapshot a retention pass forgot.
/// Snapshots a user created are never deleted (the pass does not forget them either). Pure.
pub fn forgotten_snapshots<'a>(
    snapshots: &'a [Snapshot],
    job: &BackupJob,
    r: &RetentionResult,
) -> Vec<&'a Snapshot> {
    let gone: BTreeSet<&str> = r.forgotten.iter().map(String::as_str).collect();
    snapshots
        .iter()
        .filter(|s| made_by_job(s, job))
        .filter(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.phase == RunPhase::Succeeded
                    && st
                        .repository_snapshot_id
                        .as_deref()
                        .is_some_and(|id| gone.contains(id))
            })
        })
        .collect()
}
