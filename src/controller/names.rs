//! Names, labels and annotations of the objects the operator creates. Pure.

use std::collections::BTreeMap;

/// Label on everything the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "snapcrypt-operator");
/// Label naming the BackupJob a Snapshot or pod belongs to (when the name fits a label value).
pub const JOB_LABEL: &str = "snapcrypt.dev/backup-job";
/// Label carrying the uid of the Snapshot a pod runs (uids always fit a label value).
pub const SNAPSHOT_UID_LABEL: &str = "snapcrypt.dev/snapshot-uid";
/// Label carrying the uid of the Restore a pod runs.
pub const RESTORE_UID_LABEL: &str = "snapcrypt.dev/restore-uid";
/// Label with the attempt number of a snapshot pod.
pub const ATTEMPT_LABEL: &str = "snapcrypt.dev/attempt";
/// Annotations on a snapshot pod recording the member it copies, so status can be rebuilt from
/// the pod if the status write that followed its creation was lost.
pub const MEMBER_ANNOTATION: &str = "snapcrypt.dev/member";
pub const MEMBER_ROLE_ANNOTATION: &str = "snapcrypt.dev/member-role";
pub const MEMBER_REASON_ANNOTATION: &str = "snapcrypt.dev/member-reason";
/// Annotation on a snapshot pod with its attempt's capture (JSON of the status's `capture`,
/// its lock left out), for the same reason: a status read from a cache that has not yet seen
/// the write after the pod's creation must not lose the VolumeSnapshot, its restored claim and
/// the cut's instant (seen in CI as a Succeeded Snapshot without them).
pub const CAPTURE_ANNOTATION: &str = "snapcrypt.dev/capture";
/// Annotation on a Snapshot a BackupJob's schedule made: the uid of the job that made it (or
/// adopted it). With snapshotDeletionPolicy Retain a Snapshot has no owner reference to the
/// job, so this is what says it is the job's.
pub const MADE_BY_JOB_UID: &str = "snapcrypt.dev/backup-job-uid";
/// Label on a Snapshot whose BackupJob no longer exists (snapshotDeletionPolicy Retain).
pub const ORPHANED_LABEL: &str = "snapcrypt.dev/orphaned";
/// Annotation with the scheduled time (RFC 3339) a Snapshot was created for.
pub const SCHEDULED_TIME: &str = "snapcrypt.dev/scheduled-time";

/// Label carrying the uid of the BackupJob a verify pod reads the repository of.
pub const VERIFY_JOB_UID_LABEL: &str = "snapcrypt.dev/verify-job-uid";
/// Label carrying the uid of the BackupJob a restore-test Restore was created by.
pub const RESTORE_TEST_JOB_UID_LABEL: &str = "snapcrypt.dev/restore-test-job-uid";
/// Label naming the BackupJob of a restore-test Restore (when the name fits a label value).
pub const RESTORE_TEST_LABEL: &str = "snapcrypt.dev/restore-test";
/// Label carrying the uid of the Restore a check pod judges.
pub const CHECK_RESTORE_UID_LABEL: &str = "snapcrypt.dev/check-restore-uid";

/// Label carrying the uid of the BackupJob a catalog pod reads the repository for.
pub const CATALOG_JOB_UID_LABEL: &str = "snapcrypt.dev/catalog-job-uid";

/// Label carrying the uid of the Restore (with spec.targets) a Restore of one claim belongs to.
pub const PARENT_RESTORE_UID_LABEL: &str = "snapcrypt.dev/parent-restore-uid";

/// Label carrying the uid of the BackupJob a copy pod copies the snapshots of.
pub const COPY_JOB_UID_LABEL: &str = "snapcrypt.dev/copy-job-uid";
/// Label carrying the name of the copy (spec.copies[].name) a copy pod writes.
pub const COPY_LABEL: &str = "snapcrypt.dev/copy";
/// Annotation of a copy pod: its run's number among the copy's runs.
pub const COPY_RUN: &str = "snapcrypt.dev/copy-run";
/// Annotation of a copy pod: the Snapshot it was started for (the job's newest successful one).
pub const COPY_SNAPSHOT: &str = "snapcrypt.dev/copy-snapshot";

/// Label carrying the uid of the BackupJob a retention pod prunes the repository of.
pub const RETENTION_JOB_UID_LABEL: &str = "snapcrypt.dev/retention-job-uid";
/// Label carrying the copy (spec.copies[].name) whose repository a retention pod prunes;
/// absent on the retention pods of the job's own repository.
pub const RETENTION_COPY_LABEL: &str = "snapcrypt.dev/retention-copy";
/// Annotation of a retention pod: its run's number among the job's retention runs.
pub const RETENTION_RUN: &str = "snapcrypt.dev/retention-run";
/// Annotation of a retention pod: the Snapshot it was started after (the job's newest
/// successful one).
pub const RETENTION_SNAPSHOT: &str = "snapcrypt.dev/retention-snapshot";

/// Longest Kubernetes object name (DNS subdomain).
const MAX_NAME: usize = 253;
/// Longest label value.
const MAX_LABEL: usize = 63;

/// `<job>-<yyyymmddhhmm>` (the scheduled time in UTC), the name of a scheduled Snapshot.
pub fn scheduled_snapshot_name(job: &str, scheduled: jiff::Timestamp) -> String {
    let stamp = scheduled
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y%m%d%H%M")
        .to_string();
    format!("{}-{stamp}", fit(job, MAX_NAME - stamp.len() - 1))
}

/// `<job>-verify-<yyyymmddhhmm>`, the name of a scheduled verify pod.
pub fn verify_pod_name(job: &str, scheduled: jiff::Timestamp) -> String {
    scheduled_snapshot_name(&format!("{}-verify", fit(job, MAX_NAME - 20)), scheduled)
}

/// `<job>-rt-<yyyymmddhhmm>`, the name of a scheduled restore test's Restore (and of its
/// scratch claim).
pub fn restore_test_name(job: &str, scheduled: jiff::Timestamp) -> String {
    scheduled_snapshot_name(&format!("{}-rt", fit(job, MAX_NAME - 16)), scheduled)
}

/// `<restore>-check`, the name of a Restore's check pod.
pub fn check_pod_name(restore: &str) -> String {
    let suffix = "-check";
    format!("{}{suffix}", fit(restore, MAX_NAME - suffix.len()))
}

/// A label value for `name`, if it fits one.
pub fn label_value(name: &str) -> Option<&str> {
    (name.len() <= MAX_LABEL).then_some(name)
}

/// `<snapshot>-<attempt>`, the name of a snapshot pod.
pub fn pod_name(snapshot: &str, attempt: u32) -> String {
    let suffix = format!("-{attempt}");
    format!("{}{suffix}", fit(snapshot, MAX_NAME - suffix.len()))
}

/// `<restore>-restore`, the name of a restore pod.
pub fn restore_pod_name(restore: &str) -> String {
    let suffix = "-restore";
    format!("{}{suffix}", fit(restore, MAX_NAME - suffix.len()))
}

/// The ServiceAccount (and Role, RoleBinding) snapshot pods of `job` run as.
pub fn agent_service_account(job: &str) -> String {
    let prefix = "snapcrypt-agent-";
    format!("{prefix}{}", fit(job, MAX_NAME - prefix.len()))
}

/// `<restore>-<claim>`, the Restore of one claim of a Restore with spec.targets; too long a
/// name is cut and ends in a digest of the whole, so two claims never share one.
pub fn member_restore_name(restore: &str, claim: &str) -> String {
    joined(restore, claim)
}

/// `<job>-<id prefix>`, an imported Snapshot whose own name is taken here.
pub fn imported_snapshot_name(job: &str, id: &str) -> String {
    joined(job, &id[..id.len().min(12)])
}

/// `<job>-catalog`, the catalog pod of a BackupJob and the ConfigMap it writes into.
pub fn catalog_name(job: &str) -> String {
    let suffix = "-catalog";
    format!("{}{suffix}", fit(job, MAX_NAME - suffix.len()))
}

/// `<job>-copy-<copy>-<run>`, the copy pod of run number `run` of a job's copy.
pub fn copy_pod_name(job: &str, copy: &str, run: u64) -> String {
    joined(&format!("{job}-copy-{copy}"), &run.to_string())
}

/// `<job>-retention-<run>` (the job's repository), or `<job>-copy-<copy>-retention-<run>` (a
/// copy's): the retention pod of run number `run`.
pub fn retention_pod_name(job: &str, copy: Option<&str>, run: u64) -> String {
    match copy {
        Some(c) => joined(&format!("{job}-copy-{c}-retention"), &run.to_string()),
        None => joined(&format!("{job}-retention"), &run.to_string()),
    }
}

/// `<a>-<b>`, cut to a name's length with a digest of the whole when too long.
fn joined(a: &str, b: &str) -> String {
    let whole = format!("{a}-{b}");
    if whole.len() <= MAX_NAME {
        return whole;
    }
    let digest = blake3::hash(whole.as_bytes()).to_hex();
    format!("{}-{}", fit(&whole, MAX_NAME - 13), &digest[..12])
}

/// The ServiceAccount of the agent of a Restore with spec.source (no BackupJob's to use).
pub fn restore_service_account(restore: &str) -> String {
    let prefix = "snapcrypt-restore-";
    format!("{prefix}{}", fit(restore, MAX_NAME - prefix.len()))
}

/// Labels of objects created for `job`.
pub fn job_labels(job: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]);
    if job.len() <= MAX_LABEL {
        l.insert(JOB_LABEL.into(), job.into());
    }
    l
}

/// Cut a name to `max` characters without leaving a trailing `-` or `.`.
fn fit(name: &str, max: usize) -> &str {
    if name.len() <= max {
        return name;
    }
    name[..max].trim_end_matches(['-', '.'])
}

/// The name of a GCS service-account key file: the credentials Secret's key, and the file the
/// agent reads.
pub const GCS_CREDENTIALS_FILE: &str = "service-account.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_use_utc_minutes() {
        let t: jiff::Timestamp = "2026-11-27T08:05:59Z".parse().expect("time");
        assert_eq!(scheduled_snapshot_name("rs0", t), "rs0-202611270805");
        let long = "a".repeat(300);
        assert_eq!(scheduled_snapshot_name(&long, t).len(), 253);
        assert_eq!(pod_name("rs0-202611270805", 2), "rs0-202611270805-2");
        assert_eq!(pod_name(&"b".repeat(253), 10).len(), 253);
        assert_eq!(agent_service_account("rs0"), "snapcrypt-agent-rs0");
    }

    #[test]
    fn long_job_names_are_not_used_as_label_values() {
        assert_eq!(job_labels("rs0")[JOB_LABEL], "rs0");
        assert!(!job_labels(&"x".repeat(64)).contains_key(JOB_LABEL));
    }
}
