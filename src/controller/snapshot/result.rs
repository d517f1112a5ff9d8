//! What the snapshot agent leaves in its termination message: one JSON line on success, the
//! error message on failure. Shared by the agent (writer) and the controller (reader).

use serde::{Deserialize, Serialize};

/// The result line of a successful `snapcrypt agent snapshot`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AgentResult {
    /// The snapshot's id in the repository.
    pub id: String,
    pub files: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    /// The master key the snapshot's data key is wrapped under.
    pub key_id: String,
}

impl AgentResult {
    /// Read a termination message: the last non-empty line must be the JSON result.
    pub fn parse(message: &str) -> Option<Self> {
        let line = message.lines().rev().find(|l| !l.trim().is_empty())?;
        serde_json::from_str(line.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_noise() {
        let r = AgentResult {
            id: "3f2a".into(),
            files: 8,
            logical_bytes: 4_000_000,
            stored_bytes: 1_000_000,
            key_id: "local:ab12".into(),
        };
        let line = serde_json::to_string(&r).expect("json");
        assert_eq!(AgentResult::parse(&format!("{line}\n")), Some(r.clone()));
        assert_eq!(
            AgentResult::parse(&format!("log line\n{line}\n\n")),
            Some(r)
        );
        assert_eq!(
            AgentResult::parse("snapcrypt: error: source /data: no such file"),
            None
        );
        assert_eq!(AgentResult::parse(""), None);
    }
}
