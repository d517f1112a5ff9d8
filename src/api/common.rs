//! Types shared by the four kinds: references, progress, conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The API group of every snapcrypt kind.
pub const GROUP: &str = "snapcrypt.dev";
/// The API version of every snapcrypt kind.
pub const VERSION: &str = "v1alpha1";

/// A reference to another object in the same namespace, by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced object, in the same namespace as this one.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to one key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_key() -> String {
    "key".to_string()
}

/// How far a running snapshot or restore has come, as reported by its pod about every 2 s.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Bytes read (backup) or written (restore) so far.
    pub bytes_done: u64,
    /// Bytes to process in all, known once the source has been scanned.
    pub bytes_total: u64,
    /// Files finished so far.
    pub files_done: u64,
    /// Files to process in all.
    pub files_total: u64,
    /// Share of bytes done, 0 to 100.
    pub percent: f64,
    /// Throughput over the run so far, in bytes per second.
    pub bytes_per_second: u64,
    /// Estimated seconds until done at the current rate; absent while unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// When the pod last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// A duration as the specs and the CLI write it (`30s`, `5m`, `36h`, `90d`), in seconds; `units`
/// are the suffixes allowed where it is used.
pub fn parse_duration(s: &str, units: &[char]) -> Result<u64, String> {
    let names: Vec<String> = units.iter().map(char::to_string).collect();
    let listed = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    let bad = || format!("{s:?}: expected a number followed by {listed}, like 90d");
    let unit = s
        .chars()
        .last()
        .filter(|u| units.contains(u))
        .ok_or_else(bad)?;
    let n: u64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(per).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_with_the_allowed_units_only() {
        assert_eq!(parse_duration("90d", &['h', 'd']), Ok(90 * 86400));
        assert_eq!(parse_duration("36h", &['h', 'd']), Ok(36 * 3600));
        assert_eq!(
            parse_duration("5m", &['h', 'd']).unwrap_err(),
            "\"5m\": expected a number followed by h or d, like 90d"
        );
        assert!(parse_duration("30s", &['s', 'm', 'h', 'd']).is_ok());
        assert!(parse_duration("", &['d']).is_err());
        assert!(parse_duration("d", &['d']).is_err());
        assert!(parse_duration("99999999999999999999d", &['d']).is_err());
    }
}

/// Condition list type used by every status, keyed by `type`.
pub type Conditions = Vec<Condition>;

/// Condition status strings, as Kubernetes spells them.
pub mod condition_status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}
