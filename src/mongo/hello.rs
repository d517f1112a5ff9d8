//! What a replica-set member says about itself: the parts of a `hello` reply (and of
//! `replSetGetConfig`) that choosing a sync source needs. Parsing is pure and tolerant: a field
//! of an unexpected type counts as absent.

use std::collections::BTreeMap;

use mongodb::bson::{Bson, Document};

/// The parts of one member's `hello` reply that matter here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HelloReply {
    /// Replica set name (`setName`); absent on a standalone.
    pub set_name: Option<String>,
    /// The member's own host:port as the replica set config names it (`me`).
    pub me: Option<String>,
    /// `isWritablePrimary` (or the legacy `ismaster`).
    pub primary: bool,
    /// `secondary`: in state SECONDARY.
    pub secondary: bool,
    /// `arbiterOnly`: holds no data.
    pub arbiter: bool,
    /// `hidden`: invisible to clients, usually kept for a special purpose (delayed, analytics).
    pub hidden: bool,
    /// `lastWrite.lastWriteDate`: wall-clock time of the member's newest applied write.
    pub last_write: Option<jiff::Timestamp>,
}

impl HelloReply {
    /// Read a `hello` (or legacy `isMaster`) reply.
    pub fn from_document(doc: &Document) -> Self {
        let flag = |k: &str| matches!(doc.get(k), Some(Bson::Boolean(true)));
        let string = |k: &str| match doc.get(k) {
            Some(Bson::String(s)) => Some(s.clone()),
            _ => None,
        };
        let last_write = match doc.get("lastWrite") {
            Some(Bson::Document(lw)) => match lw.get("lastWriteDate") {
                Some(Bson::DateTime(d)) => {
                    jiff::Timestamp::from_millisecond(d.timestamp_millis()).ok()
                }
                _ => None,
            },
            _ => None,
        };
        HelloReply {
            set_name: string("setName"),
            me: string("me"),
            primary: flag("isWritablePrimary") || flag("ismaster"),
            secondary: flag("secondary"),
            arbiter: flag("arbiterOnly"),
            hidden: flag("hidden"),
            last_write,
        }
    }

    /// The member's role, as MongoDB names replica-set states.
    pub fn role(&self) -> &'static str {
        if self.primary {
            "PRIMARY"
        } else if self.arbiter {
            "ARBITER"
        } else if self.secondary {
            "SECONDARY"
        } else {
            // STARTUP2, RECOVERING, ROLLBACK...: hello does not say which.
            "RECOVERING"
        }
    }
}

/// Per member host (as in `me`), its `secondaryDelaySecs` (or the pre-5.0 `slaveDelay`), from a
/// `replSetGetConfig` reply. Hosts without a delay are listed with 0.
pub fn delays_from_config(reply: &Document) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Ok(config) = reply.get_document("config") else {
        return out;
    };
    let Ok(members) = config.get_array("members") else {
        return out;
    };
    for m in members {
        let Bson::Document(m) = m else { continue };
        let Ok(host) = m.get_str("host") else {
            continue;
        };
        let delay = ["secondaryDelaySecs", "slaveDelay"]
            .iter()
            .find_map(|k| match m.get(*k) {
                Some(Bson::Int32(n)) => Some(i64::from(*n)),
                Some(Bson::Int64(n)) => Some(*n),
                Some(Bson::Double(n)) => Some(*n as i64),
                _ => None,
            })
            .unwrap_or(0);
        out.insert(host.to_string(), delay);
    }
    out
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Recorded replies (tests/fixtures/hello/), as a MongoDB 7.0 replica set sends them.
    use mongodb::bson::Document;

    pub fn doc(name: &str) -> Document {
        let text = match name {
            "primary" => include_str!("../../tests/fixtures/hello/primary.json"),
            "secondary" => include_str!("../../tests/fixtures/hello/secondary.json"),
            "secondary-lagging" => {
                include_str!("../../tests/fixtures/hello/secondary-lagging.json")
            }
            "secondary-hidden" => include_str!("../../tests/fixtures/hello/secondary-hidden.json"),
            "secondary-delayed" => {
                include_str!("../../tests/fixtures/hello/secondary-delayed.json")
            }
            "arbiter" => include_str!("../../tests/fixtures/hello/arbiter.json"),
            "recovering" => include_str!("../../tests/fixtures/hello/recovering.json"),
            "replset-config" => include_str!("../../tests/fixtures/hello/replset-config.json"),
            other => panic!("no fixture {other}"),
        };
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).expect("fixture is JSON");
        Document::try_from(json).expect("fixture is extended JSON")
    }

    pub fn hello(name: &str) -> super::HelloReply {
        super::HelloReply::from_document(&doc(name))
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{doc, hello};
    use super::*;

    #[test]
    fn reads_roles_and_flags_from_recorded_replies() {
        let p = hello("primary");
        assert_eq!(p.role(), "PRIMARY");
        assert_eq!(p.set_name.as_deref(), Some("rs0"));
        assert_eq!(
            p.last_write,
            Some("2026-11-27T08:00:00Z".parse().expect("timestamp"))
        );
        assert_eq!(hello("secondary").role(), "SECONDARY");
        assert!(hello("secondary-hidden").hidden);
        assert_eq!(hello("arbiter").role(), "ARBITER");
        assert_eq!(hello("arbiter").last_write, None);
        assert_eq!(hello("recovering").role(), "RECOVERING");
    }

    #[test]
    fn legacy_ismaster_counts_as_primary() {
        let mut d = Document::new();
        d.insert("ismaster", true);
        assert!(HelloReply::from_document(&d).primary);
    }

    #[test]
    fn delays_come_from_the_replica_set_config() {
        let delays = delays_from_config(&doc("replset-config"));
        assert_eq!(delays["rs0-4.rs0.mongodb.svc.cluster.local:27017"], 3600);
        assert_eq!(delays["rs0-1.rs0.mongodb.svc.cluster.local:27017"], 0);
        assert_eq!(delays.len(), 7);
        assert!(delays_from_config(&Document::new()).is_empty());
    }
}
