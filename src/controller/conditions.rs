//! Status conditions: setting one keeps its lastTransitionTime unless its status changes, and
//! comparing two lists gives the transitions to announce as Events. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::reason::{Reason, Severity};
use crate::api::common::condition_status::{FALSE, TRUE, UNKNOWN};

/// The type of a condition, as every kind's status names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
pub enum CondType {
    /// Every kind: can it do its work now.
    Ready,
    /// BackupJob: something needs a person.
    Degraded,
    /// BackupJob, Snapshot, Restore: work under way.
    Progressing,
    /// BackupJob: spec.suspend.
    Suspended,
    /// Snapshot, Restore: ended without success.
    Failed,
    /// Snapshot: copied at one instant (a VolumeSnapshot's cut or under a lock).
    Consistent,
    /// Snapshot: its BackupJob is gone.
    Orphaned,
    /// BackupJob: the last data read.
    DataVerified,
    /// BackupJob: the last restore test.
    RestoreTested,
    /// BackupJob: every copy (spec.copies) works: holds the newest snapshot, or catches up.
    CopiesHealthy,
    /// BackupJob: the last retention pass.
    RetentionApplied,
    /// KmipServer: an endpoint answered.
    Reachable,
    /// KmipServer: mutual TLS accepted.
    Authenticated,
    /// KmipServer: the master key is Active.
    KeyActive,
    /// KmipServer: a rotation's rewrap under way.
    Rotating,
}

impl CondType {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One condition as a reconciler decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: CondType,
    pub status: bool,
    /// False: the status is Unknown (not yet known: `status` is ignored).
    pub known: bool,
    pub reason: Reason,
    pub message: String,
}

impl Cond {
    pub fn new(type_: CondType, status: bool, reason: Reason, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status,
            known: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition whose status is not known yet (Unknown).
    pub fn unknown(type_: CondType, reason: Reason, message: impl Into<String>) -> Self {
        Cond {
            known: false,
            ..Cond::new(type_, false, reason, message)
        }
    }
}

/// The new condition list: `wanted` in order, each keeping the previous lastTransitionTime
/// when its status did not change.
pub fn merge(
    previous: &[Condition],
    wanted: &[Cond],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = match (w.known, w.status) {
                (false, _) => UNKNOWN,
                (true, true) => TRUE,
                (true, false) => FALSE,
            };
            let since = previous
                .iter()
                .find(|p| p.type_ == w.type_.as_str() && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            // An empty message is serialized as null, which the API server rejects.
            let message = if w.message.is_empty() {
                w.reason.to_string()
            } else {
                super::text::truncate(&w.message, 32 * 1024)
            };
            Condition {
                type_: w.type_.as_str().into(),
                status: status.into(),
                reason: w.reason.to_string(),
                message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Ready, Progressing and Failed of a run (a Snapshot or a Restore) that has finished: Ready
/// with `reason` and `message` when it succeeded, Failed with them when it did not.
pub fn finished(succeeded: bool, reason: Reason, message: &str) -> Vec<Cond> {
    if succeeded {
        vec![
            Cond::new(CondType::Ready, true, reason, message),
            Cond::new(CondType::Progressing, false, Reason::Finished, ""),
            Cond::new(CondType::Failed, false, Reason::NotFailed, ""),
        ]
    } else {
        vec![
            Cond::new(CondType::Ready, false, reason, message),
            Cond::new(CondType::Progressing, false, Reason::Finished, ""),
            Cond::new(CondType::Failed, true, reason, message),
        ]
    }
}

/// Ready, Progressing and Failed of a run (a Snapshot or a Restore) that waits before it can
/// start: Ready and Progressing False with `reason`.
pub fn waiting(reason: Reason, message: &str) -> Vec<Cond> {
    vec![
        Cond::new(CondType::Ready, false, reason, message),
        Cond::new(CondType::Progressing, false, reason, message),
        Cond::new(CondType::Failed, false, Reason::NotFailed, ""),
    ]
}

/// Ready, Progressing and Failed of a run under way: not Ready yet (`ready`), Progressing
/// (`progressing`).
pub fn under_way(ready: Reason, progressing: Reason, message: &str) -> Vec<Cond> {
    vec![
        Cond::new(CondType::Ready, false, ready, message),
        Cond::new(CondType::Progressing, true, progressing, message),
        Cond::new(CondType::Failed, false, Reason::NotFailed, ""),
    ]
}

/// Conditions whose status or reason differ between `old` and `new` (new ones included).
pub fn transitions<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter()
        .filter(|n| {
            !old.iter()
                .any(|o| o.type_ == n.type_ && o.status == n.status && o.reason == n.reason)
        })
        .collect()
}

/// Find a condition by type.
pub fn get<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// The Events a status change deserves, for every controller: one per reason that newly
/// appears on a condition (status or reason changed), unless the reason is quiet; the first
/// condition's message with it. Reasons this operator does not write (an older version's) are
/// not announced.
pub fn announcements<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<(Reason, &'a str)> {
    let mut out: Vec<(Reason, &str)> = Vec::new();
    for c in transitions(old, new) {
        let Some(reason) = Reason::parse(&c.reason) else {
            continue;
        };
        if reason.severity() != Severity::Quiet && !out.iter().any(|(r, _)| *r == reason) {
            out.push((reason, c.message.as_str()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().expect("time"))
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge(
            &[],
            &[Cond::new(
                CondType::Ready,
                false,
                Reason::SnapshotPending,
                "waiting",
            )],
            Some(1),
            &t("2026-01-01T00:00:00Z"),
        );
        let same = merge(
            &first,
            &[Cond::new(
                CondType::Ready,
                false,
                Reason::WaitingForOtherSnapshot,
                "still",
            )],
            Some(2),
            &t("2026-01-01T00:01:00Z"),
        );
        assert_eq!(same[0].last_transition_time, t("2026-01-01T00:00:00Z"));
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &[Cond::new(CondType::Ready, true, Reason::Succeeded, "done")],
            Some(2),
            &t("2026-01-01T00:02:00Z"),
        );
        assert_eq!(flipped[0].last_transition_time, t("2026-01-01T00:02:00Z"));
        assert_eq!(flipped[0].status, "True");
        // Reason changes are transitions too (they get an Event), message changes are not.
        assert_eq!(transitions(&first, &same).len(), 1);
        assert_eq!(transitions(&same, &same).len(), 0);
        assert_eq!(transitions(&same, &flipped)[0].reason, "Succeeded");
        let blank = merge(
            &[],
            &[Cond::new(CondType::Degraded, false, Reason::AsExpected, "")],
            None,
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(blank[0].message, "AsExpected");
    }

    fn condition(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} {reason}"),
            observed_generation: None,
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn one_event_per_new_reason_and_none_for_quiet_or_foreign_ones() {
        let old = vec![condition("Ready", "False", "Starting")];
        let new = vec![
            condition("Ready", "False", "NoSyncSource"),
            condition("Progressing", "False", "NoSyncSource"),
            condition("Failed", "False", "NotFailed"),
            condition("Other", "True", "SomethingOld"),
        ];
        let a = announcements(&old, &new);
        assert_eq!(a, vec![(Reason::NoSyncSource, "Ready NoSyncSource")]);
        assert_eq!(a[0].0.severity(), Severity::Warning);
        // Nothing changed: nothing to say.
        assert!(announcements(&new, &new).is_empty());
    }
}
