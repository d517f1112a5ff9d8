//! Choosing a snapshot: `latest`, an id (or a unique prefix), or `before:<time>` (the newest
//! taken at or before it), among the snapshots carrying every tag asked for. A disaster
//! recovery names a snapshot this way, with no catalog but the repository's own.

use std::collections::BTreeMap;

use super::Repository;
use crate::engine::error::EngineError;
use crate::engine::format::SnapshotManifest;

/// Which snapshot: parsed from `latest`, `before:<RFC 3339 time>`, or an id (prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Which {
    Latest,
    Before(jiff::Timestamp),
    Id(String),
}

impl Which {
    /// Parse what a user wrote; the error says what is allowed.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "latest" {
            return Ok(Which::Latest);
        }
        if let Some(t) = s.strip_prefix("before:") {
            return t.trim().parse::<jiff::Timestamp>().map(Which::Before).map_err(|_| {
                format!(
                    "{s:?}: before: needs an RFC 3339 time with a zone, such as before:2026-12-01T00:00:00Z"
                )
            });
        }
        if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Which::Id(s.to_ascii_lowercase()));
        }
        Err(format!(
            "{s:?} is not a snapshot: give latest, a snapshot id (hex, or a unique prefix of one), or before:TIME (RFC 3339)"
        ))
    }
}

/// A snapshot asked for: which one, among those carrying every one of `tags`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub which: Which,
    pub tags: BTreeMap<String, String>,
}

/// The tags as `k=v, k=v`.
fn tag_list(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Choose among `all` (oldest first, as [`Repository::snapshots`] lists them). Pure.
pub fn choose(all: Vec<SnapshotManifest>, s: &Selector) -> Result<SnapshotManifest, EngineError> {
    let total = all.len();
    let tagged: Vec<SnapshotManifest> = all
        .into_iter()
        .filter(|m| s.tags.iter().all(|(k, v)| m.tags.get(k) == Some(v)))
        .collect();
    if tagged.is_empty() && !s.tags.is_empty() {
        return Err(EngineError::NoSnapshotSelected {
            reason: format!(
                "the repository holds no snapshot tagged {} (it holds {total} snapshot{} in all): check the repository, the job and the tags named",
                tag_list(&s.tags),
                if total == 1 { "" } else { "s" }
            ),
        });
    }
    let tagged_words = if s.tags.is_empty() {
        String::new()
    } else {
        format!(" tagged {}", tag_list(&s.tags))
    };
    match &s.which {
        Which::Latest => {
            tagged
                .into_iter()
                .next_back()
                .ok_or_else(|| EngineError::NoSnapshotSelected {
                    reason: "the repository holds no snapshot".into(),
                })
        }
        Which::Before(t) => {
            let oldest = tagged.first().map(|m| m.time.clone());
            tagged
                .into_iter()
                .rfind(|m| {
                    m.time
                        .parse::<jiff::Timestamp>()
                        .is_ok_and(|taken| taken <= *t)
                })
                .ok_or_else(|| EngineError::NoSnapshotSelected {
                    reason: match oldest {
                        Some(o) => format!(
                            "no snapshot{tagged_words} was taken at or before {t}: the oldest was taken at {o}; give a later time, or latest"
                        ),
                        None => "the repository holds no snapshot".into(),
                    },
                })
        }
        Which::Id(prefix) => {
            let found: Vec<_> = tagged
                .into_iter()
                .filter(|m| m.id.starts_with(prefix.as_str()))
                .collect();
            match found.len() {
                1 => Ok(found.into_iter().next().unwrap_or_else(|| unreachable!())),
                0 if s.tags.is_empty() => Err(EngineError::NoSuchSnapshot {
                    which: prefix.clone(),
                }),
                0 => Err(EngineError::NoSnapshotSelected {
                    reason: format!(
                        "no snapshot{tagged_words} has an id starting with {prefix} (list them with `snapcrypt snapshots`)"
                    ),
                }),
                n => Err(EngineError::AmbiguousSnapshot {
                    which: prefix.clone(),
                    count: n,
                }),
            }
        }
    }
}

impl Repository {
    /// The snapshot `s` names.
    pub async fn select_snapshot(&self, s: &Selector) -> Result<SnapshotManifest, EngineError> {
        choose(self.snapshots().await?, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, time: &str, job: &str) -> SnapshotManifest {
        serde_json::from_value(serde_json::json!({
            "id": id, "time": time, "finished": time, "hostname": "h", "source": "/s",
            "tags": {"backupjob": job}, "files": 1, "dirs": 1, "logical_bytes": 1,
            "stored_bytes": 1, "tree": [], "data_keys": [], "master_key_id": "k"
        }))
        .expect("manifest")
    }

    fn sel(which: &str, job: Option<&str>) -> Selector {
        Selector {
            which: Which::parse(which).expect("which"),
            tags: job
                .map(|j| BTreeMap::from([("backupjob".to_string(), j.to_string())]))
                .unwrap_or_default(),
        }
    }

    fn all() -> Vec<SnapshotManifest> {
        vec![
            m("aa01", "2026-12-01T00:00:00Z", "ns/a"),
            m("bb02", "2026-12-02T00:00:00Z", "ns/b"),
            m("aa03", "2026-12-03T00:00:00Z", "ns/a"),
        ]
    }

    #[test]
    fn latest_before_and_id_among_the_tagged() {
        assert_eq!(
            choose(all(), &sel("latest", Some("ns/a"))).unwrap().id,
            "aa03"
        );
        assert_eq!(choose(all(), &sel("latest", None)).unwrap().id, "aa03");
        let before = sel("before:2026-12-02T12:00:00Z", Some("ns/a"));
        assert_eq!(choose(all(), &before).unwrap().id, "aa01");
        let exact = sel("before:2026-12-03T00:00:00Z", Some("ns/a"));
        assert_eq!(choose(all(), &exact).unwrap().id, "aa03");
        assert_eq!(choose(all(), &sel("bb", None)).unwrap().id, "bb02");
        // An id of another job's snapshot is not this job's.
        assert!(choose(all(), &sel("bb", Some("ns/a"))).is_err());
    }

    #[test]
    fn refusals_say_what_the_repository_holds() {
        let e = choose(all(), &sel("before:2026-11-01T00:00:00Z", Some("ns/a")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no snapshot tagged backupjob=ns/a was taken at or before 2026-11-01T00:00:00Z: the oldest was taken at 2026-12-01T00:00:00Z"),
            "{e}"
        );
        let e = choose(all(), &sel("latest", Some("ns/gone")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds no snapshot tagged backupjob=ns/gone (it holds 3 snapshots in all)"),
            "{e}"
        );
        for bad in ["yesterday", "before:soon", ""] {
            assert!(Which::parse(bad).is_err(), "{bad}");
        }
    }
}
