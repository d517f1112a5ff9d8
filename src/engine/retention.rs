//! Retention rules: which snapshots a policy keeps (GFS: the newest N, the newest of each of
//! the last N days, weeks and months, and a maximum age), within a scope of tags. Pure. Below
//! prune (which forgets what they do not keep) and copy (which does not copy what the
//! target's rules would forget).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::format::SnapshotManifest;

/// Which snapshots to keep; a snapshot kept by any rule is kept. All None keeps everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    /// Forget snapshots older than this many seconds, whatever the other rules say.
    pub max_age_secs: Option<u64>,
}

impl RetentionPolicy {
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.max_age_secs.is_none()
    }
}

/// The ids of the snapshots the policy keeps, from `snaps` (any order) at time `now`.
/// Pure: unit-tested with tables.
pub fn keep(
    snaps: &[SnapshotManifest],
    policy: &RetentionPolicy,
    now: jiff::Timestamp,
) -> BTreeSet<String> {
    let mut sorted: Vec<(&SnapshotManifest, jiff::Timestamp)> = snaps
        .iter()
        .map(|s| {
            (
                s,
                s.time
                    .parse::<jiff::Timestamp>()
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            )
        })
        .collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.id.cmp(&a.0.id))); // newest first
    if policy.is_empty() {
        return sorted.iter().map(|(s, _)| s.id.clone()).collect();
    }
    let mut kept = BTreeSet::new();
    if let Some(n) = policy.keep_last {
        kept.extend(sorted.iter().take(n as usize).map(|(s, _)| s.id.clone()));
    }
    let bucketed = |n: Option<u32>,
                    bucket: &dyn Fn(jiff::Timestamp) -> String,
                    kept: &mut BTreeSet<String>| {
        let Some(n) = n else { return };
        let mut seen = HashSet::new();
        for (s, t) in &sorted {
            if seen.len() >= n as usize {
                break;
            }
            if seen.insert(bucket(*t)) {
                kept.insert(s.id.clone());
            }
        }
    };
    let utc = |t: jiff::Timestamp| t.to_zoned(jiff::tz::TimeZone::UTC);
    bucketed(
        policy.keep_daily,
        &|t| utc(t).strftime("%Y-%m-%d").to_string(),
        &mut kept,
    );
    bucketed(
        policy.keep_weekly,
        &|t| utc(t).strftime("%G-W%V").to_string(),
        &mut kept,
    );
    bucketed(
        policy.keep_monthly,
        &|t| utc(t).strftime("%Y-%m").to_string(),
        &mut kept,
    );
    if let Some(max) = policy.max_age_secs {
        let all_rules_empty = RetentionPolicy {
            max_age_secs: None,
            ..policy.clone()
        }
        .is_empty();
        if all_rules_empty {
            kept.extend(sorted.iter().map(|(s, _)| s.id.clone()));
        }
        for (s, t) in &sorted {
            if now.duration_since(*t).as_secs() > max as i64 {
                kept.remove(&s.id);
            }
        }
    }
    kept
}

/// Which snapshots a policy may forget. Snapshots outside the scope are always kept, so one
/// BackupJob's retention never touches another's snapshots in a shared repository.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneScope {
    /// Only snapshots carrying all these tags are subject to the policy (empty: all are).
    pub tags: BTreeMap<String, String>,
    /// Snapshots kept whatever the policy says (the one a snapshot pod has just taken).
    pub protect: BTreeSet<String>,
}

impl PruneScope {
    pub(crate) fn covers(&self, s: &SnapshotManifest) -> bool {
        self.tags.iter().all(|(k, v)| s.tags.get(k) == Some(v))
    }
}

/// The ids kept when `policy` applies to the snapshots in `scope` only. Pure.
pub fn keep_in_scope(
    snaps: &[SnapshotManifest],
    policy: &RetentionPolicy,
    scope: &PruneScope,
    now: jiff::Timestamp,
) -> BTreeSet<String> {
    let (inside, outside): (Vec<SnapshotManifest>, Vec<SnapshotManifest>) =
        snaps.iter().cloned().partition(|s| scope.covers(s));
    let mut kept = keep(&inside, policy, now);
    kept.extend(outside.into_iter().map(|s| s.id));
    kept.extend(
        snaps
            .iter()
            .filter(|s| scope.protect.contains(&s.id))
            .map(|s| s.id.clone()),
    );
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, time: &str) -> SnapshotManifest {
        SnapshotManifest {
            id: id.into(),
            time: time.into(),
            finished: time.into(),
            hostname: "h".into(),
            source: "/s".into(),
            tags: Default::default(),
            parent: None,
            files: 0,
            dirs: 0,
            logical_bytes: 0,
            stored_bytes: 0,
            tree: vec![],
            data_keys: vec![],
            master_key_id: "k".into(),
        }
    }

    #[test]
    fn retention_rules() {
        let snaps = vec![
            snap("a", "2026-11-01T01:00:00Z"),
            snap("b", "2026-11-01T02:00:00Z"),
            snap("c", "2026-11-02T01:00:00Z"),
            snap("d", "2026-11-20T01:00:00Z"),
            snap("e", "2026-10-15T01:00:00Z"),
        ];
        let now: jiff::Timestamp = "2026-11-21T00:00:00Z".parse().unwrap();
        let ids = |p: RetentionPolicy| {
            keep(&snaps, &p, now)
                .into_iter()
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(ids(RetentionPolicy::default()), "a,b,c,d,e");
        assert_eq!(
            ids(RetentionPolicy {
                keep_last: Some(2),
                ..Default::default()
            }),
            "c,d"
        );
        assert_eq!(
            ids(RetentionPolicy {
                keep_daily: Some(3),
                ..Default::default()
            }),
            "b,c,d"
        );
        assert_eq!(
            ids(RetentionPolicy {
                keep_monthly: Some(2),
                ..Default::default()
            }),
            "d,e"
        );
        assert_eq!(
            ids(RetentionPolicy {
                keep_last: Some(1),
                keep_monthly: Some(2),
                ..Default::default()
            }),
            "d,e"
        );
        assert_eq!(
            ids(RetentionPolicy {
                max_age_secs: Some(30 * 86400),
                ..Default::default()
            }),
            "a,b,c,d"
        );
        assert_eq!(
            ids(RetentionPolicy {
                keep_last: Some(0),
                ..Default::default()
            }),
            ""
        );
    }

    #[test]
    fn scope_limits_what_a_policy_forgets() {
        let tagged = |id: &str, t: &str, job: &str| {
            let mut s = snap(id, t);
            s.tags.insert("backupjob".into(), job.into());
            s
        };
        let snaps = vec![
            tagged("a", "2026-11-01T01:00:00Z", "ns/one"),
            tagged("b", "2026-11-02T01:00:00Z", "ns/two"),
            tagged("c", "2026-11-03T01:00:00Z", "ns/one"),
            snap("d", "2026-11-04T01:00:00Z"),
            tagged("e", "2026-11-05T01:00:00Z", "ns/one"),
        ];
        let now: jiff::Timestamp = "2026-11-21T00:00:00Z".parse().unwrap();
        let ids = |policy: RetentionPolicy, scope: PruneScope| {
            keep_in_scope(&snaps, &policy, &scope, now)
                .into_iter()
                .collect::<Vec<_>>()
                .join(",")
        };
        let last1 = RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        };
        let one = PruneScope {
            tags: [("backupjob".to_string(), "ns/one".to_string())].into(),
            protect: BTreeSet::new(),
        };
        // Only ns/one's snapshots are subject: its newest (e) stays, a and c go.
        assert_eq!(ids(last1.clone(), one.clone()), "b,d,e");
        // No scope: the policy applies to all.
        assert_eq!(ids(last1.clone(), PruneScope::default()), "e");
        // A protected snapshot stays even when the policy would forget it.
        let protect_a = PruneScope {
            protect: ["a".to_string()].into(),
            ..one
        };
        assert_eq!(ids(last1, protect_a), "a,b,d,e");
        let none = RetentionPolicy {
            keep_last: Some(0),
            ..Default::default()
        };
        assert_eq!(
            ids(
                none,
                PruneScope {
                    protect: ["e".to_string()].into(),
                    ..Default::default()
                }
            ),
            "e"
        );
    }
}
