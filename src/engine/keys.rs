//! Which master keys a repository depends on, and which snapshots need each: what `key status`
//! prints and what KmipServer status counts. Pure, so it is tested without a key server.

use std::collections::BTreeMap;

use serde::Serialize;

use super::format::{KeyRecord, SnapshotManifest};

/// One master key and what depends on it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyUse {
    /// `local` or `kmip`.
    pub kms: String,
    /// The master key's id in its key manager.
    pub master_key_id: String,
    /// Data key records wrapped under it.
    pub data_keys: Vec<String>,
    /// Snapshots that read data encrypted under those data keys: the key must stay while any
    /// of them is kept.
    pub snapshots: Vec<String>,
}

/// Group data key records by master key, with the snapshots that depend on each.
pub fn master_key_uses(records: &[KeyRecord], snapshots: &[SnapshotManifest]) -> Vec<MasterKeyUse> {
    let mut by_master: BTreeMap<(String, String), MasterKeyUse> = BTreeMap::new();
    // Keys used before a rewrap: listed, with nothing depending on them any more.
    for r in records {
        for past in &r.history {
            by_master
                .entry((past.kms.clone(), past.master_key_id.clone()))
                .or_insert_with(|| MasterKeyUse {
                    kms: past.kms.clone(),
                    master_key_id: past.master_key_id.clone(),
                    data_keys: Vec::new(),
                    snapshots: Vec::new(),
                });
        }
    }
    for r in records {
        let entry = by_master
            .entry((r.wrapped.kms.clone(), r.wrapped.master_key_id.clone()))
            .or_insert_with(|| MasterKeyUse {
                kms: r.wrapped.kms.clone(),
                master_key_id: r.wrapped.master_key_id.clone(),
                data_keys: Vec::new(),
                snapshots: Vec::new(),
            });
        entry.data_keys.push(r.data_key_id.clone());
        for s in snapshots {
            if s.data_keys.contains(&r.data_key_id) && !entry.snapshots.contains(&s.id) {
                entry.snapshots.push(s.id.clone());
            }
        }
    }
    by_master.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::WrappedKey;

    fn record(dk: &str, master: &str) -> KeyRecord {
        KeyRecord {
            data_key_id: dk.into(),
            created: String::new(),
            wrapped_at: String::new(),
            wrapped: WrappedKey {
                kms: "kmip".into(),
                master_key_id: master.into(),
                algorithm: "x".into(),
                ciphertext: vec![],
                iv: None,
                tag: None,
            },
            history: vec![],
            previous: None,
        }
    }

    fn snap(id: &str, dks: &[&str]) -> SnapshotManifest {
        let mut s: SnapshotManifest = serde_json::from_value(serde_json::json!({
            "id": id, "time": "", "finished": "", "hostname": "", "source": "", "files": 0, "dirs": 0,
            "logical_bytes": 0, "stored_bytes": 0, "tree": [], "data_keys": [], "master_key_id": ""
        }))
        .unwrap();
        s.data_keys = dks.iter().map(|d| d.to_string()).collect();
        s
    }

    #[test]
    fn groups_by_master_and_counts_dependants() {
        let uses = master_key_uses(
            &[record("d1", "1"), record("d2", "2"), record("d3", "2")],
            &[
                snap("a", &["d1"]),
                snap("b", &["d1", "d2"]),
                snap("c", &["d3"]),
            ],
        );
        assert_eq!(uses.len(), 2);
        assert_eq!(uses[0].master_key_id, "1");
        assert_eq!(uses[0].snapshots, vec!["a", "b"]);
        assert_eq!(uses[1].data_keys, vec!["d2", "d3"]);
        assert_eq!(uses[1].snapshots, vec!["b", "c"]);
    }
}
