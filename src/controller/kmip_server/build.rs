//! Pure parts of the KmipServer reconciler: when the master key is due for rotation, and the
//! status from what was observed. Table-tested without a server.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::kmip_server::{
    KmipServerIdentity, KmipServerSpec, KmipServerStatus, MasterKeyState, MasterKeyStatus,
    RewrapProgress,
};
use crate::controller::conditions::CondType;
use crate::controller::conditions::{Cond, merge};
use crate::controller::job_spec::schedule::parse_period;
use crate::controller::reason::Reason;

/// When the active key is next due for rotation: `period` after the last rotation, or after
/// the key came into use. None without a period.
pub fn next_rotation(
    period: Option<SignedDuration>,
    last: Option<Timestamp>,
    in_use_since: Timestamp,
) -> Option<Timestamp> {
    let p = period?;
    last.unwrap_or(in_use_since).checked_add(p).ok()
}

/// How reaching the server went.
#[derive(Clone, Debug, PartialEq)]
pub enum Connection {
    /// Connected and authenticated; the server's identity.
    Ok(KmipServerIdentity),
    /// No endpoint could be reached (TCP).
    Unreachable(String),
    /// Reached, but TLS or the server refused our identity.
    NotAuthenticated(String),
    /// The TLS Secret is missing or incomplete.
    NoCredentials(String),
}

/// Everything the reconciler learned this time.
#[derive(Clone, Debug)]
pub struct Observed {
    pub connection: Connection,
    /// The active master key and its KMIP state.
    pub active_key: Option<(String, MasterKeyState)>,
    /// KMIP states of every key listed in status.
    pub key_states: BTreeMap<String, MasterKeyState>,
    /// Succeeded Snapshots per master key id (their status.keyId), over the BackupJobs that
    /// reference this server.
    pub dependents: BTreeMap<String, u64>,
    /// BackupJobs referencing this server, and how many already use the active key.
    pub jobs_total: u32,
    pub jobs_on_active_key: u32,
    /// A rotation done this reconcile: (old key, new key).
    pub rotated: Option<(String, String)>,
    /// When that rotation replaced a key the server no longer holds Active: its state.
    pub replaced: Option<MasterKeyState>,
    /// Why the key could not be ensured, if it could not.
    pub key_error: Option<String>,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

/// Every master key status knows, with its KMIP state, name and dependants; a rotation's new
/// key added and its old one superseded.
fn key_statuses(
    prev: &KmipServerStatus,
    spec: &KmipServerSpec,
    obs: &Observed,
    now: Timestamp,
) -> Vec<MasterKeyStatus> {
    let mut keys: Vec<MasterKeyStatus> = prev.keys.clone();
    if let Some((old, new)) = &obs.rotated {
        for k in keys.iter_mut().filter(|k| &k.id == old) {
            k.superseded_at = Some(time(now));
        }
        if !keys.iter().any(|k| &k.id == new) {
            keys.push(MasterKeyStatus {
                id: new.clone(),
                created_at: Some(time(now)),
                ..Default::default()
            });
        }
    }
    if let Some((id, _)) = &obs.active_key
        && !keys.iter().any(|k| &k.id == id)
    {
        keys.push(MasterKeyStatus {
            id: id.clone(),
            created_at: Some(time(now)),
            ..Default::default()
        });
    }
    let name = spec.master_key.create.as_ref().map(|c| c.name.clone());
    for k in keys.iter_mut() {
        if let Some(s) = obs.key_states.get(&k.id) {
            k.state = if k.superseded_at.is_some() && *s == MasterKeyState::Active {
                MasterKeyState::Superseded
            } else {
                *s
            };
        }
        if k.name.is_none() {
            k.name = name.clone();
        }
        k.dependent_snapshots = obs.dependents.get(&k.id).copied().unwrap_or(0);
    }

    keys
}

/// Ready, Reachable, Authenticated, KeyActive and Rotating, from what was observed.
fn conditions(obs: &Observed, active_id: &str) -> [Cond; 5] {
    let (reachable, authenticated) = match &obs.connection {
        Connection::Ok(_) => (
            Cond::new(
                CondType::Reachable,
                true,
                Reason::Connected,
                "a KMIP endpoint answered",
            ),
            Cond::new(
                CondType::Authenticated,
                true,
                Reason::Authenticated,
                "mutual TLS accepted",
            ),
        ),
        Connection::Unreachable(m) => (
            Cond::new(CondType::Reachable, false, Reason::Unreachable, m.clone()),
            Cond::new(
                CondType::Authenticated,
                false,
                Reason::Unreachable,
                "no endpoint reached",
            ),
        ),
        Connection::NotAuthenticated(m) => (
            Cond::new(
                CondType::Reachable,
                true,
                Reason::Connected,
                "a KMIP endpoint answered",
            ),
            Cond::new(
                CondType::Authenticated,
                false,
                Reason::AuthenticationFailed,
                m.clone(),
            ),
        ),
        Connection::NoCredentials(m) => (
            Cond::new(CondType::Reachable, false, Reason::NoCredentials, m.clone()),
            Cond::new(
                CondType::Authenticated,
                false,
                Reason::NoCredentials,
                m.clone(),
            ),
        ),
    };
    let key_active = match (&obs.active_key, &obs.key_error) {
        (_, Some(e)) => Cond::new(
            CondType::KeyActive,
            false,
            Reason::KeyUnavailable,
            e.clone(),
        ),
        (Some((id, s)), None) if *s == MasterKeyState::Active => Cond::new(
            CondType::KeyActive,
            true,
            Reason::Active,
            format!("master key {id} is Active"),
        ),
        (Some((id, s)), None) => Cond::new(
            CondType::KeyActive,
            false,
            Reason::NotActive,
            format!("master key {id} is {s}, not Active: backups are refused"),
        ),
        (None, None) => Cond::new(
            CondType::KeyActive,
            false,
            Reason::Unknown,
            "the master key could not be checked",
        ),
    };
    let rewrap_pending = obs.jobs_on_active_key < obs.jobs_total;
    let rotating = if obs.rotated.is_some() || rewrap_pending {
        Cond::new(
            CondType::Rotating,
            true,
            Reason::Rewrapping,
            format!(
                "{} of {} BackupJob repositories rewrapped under key {}; each is rewrapped by its next snapshot",
                obs.jobs_on_active_key, obs.jobs_total, active_id
            ),
        )
    } else {
        Cond::new(
            CondType::Rotating,
            false,
            Reason::Idle,
            "no rotation in progress",
        )
    };
    let ready_ok = reachable.status && authenticated.status && key_active.status;
    let ready = if ready_ok {
        Cond::new(
            CondType::Ready,
            true,
            Reason::Ready,
            "the master key is reachable and Active",
        )
    } else {
        let why = [&reachable, &authenticated, &key_active]
            .into_iter()
            .find(|c| !c.status)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        Cond::new(CondType::Ready, false, Reason::NotReady, why)
    };
    [ready, reachable, authenticated, key_active, rotating]
}

/// The new status.
pub fn build_status(
    prev: &KmipServerStatus,
    spec: &KmipServerSpec,
    obs: &Observed,
    generation: Option<i64>,
    now: Timestamp,
) -> KmipServerStatus {
    let keys = key_statuses(prev, spec, obs, now);
    let active_id = obs
        .active_key
        .as_ref()
        .map(|(id, _)| id.clone())
        .or_else(|| prev.active_key_id.clone());
    let last_rotation = match &obs.rotated {
        Some(_) => Some(time(now)),
        None => prev.last_rotation_time.clone(),
    };
    let in_use_since = keys
        .iter()
        .find(|k| Some(&k.id) == active_id.as_ref())
        .and_then(|k| k.created_at.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let period = spec
        .rotation
        .as_ref()
        .and_then(|r| parse_period(&r.period).ok());
    let next = next_rotation(period, last_rotation.as_ref().map(|t| t.0), in_use_since).map(time);

    let conditions = conditions(obs, active_id.as_deref().unwrap_or_default());
    let rewrap_pending = obs.jobs_on_active_key < obs.jobs_total;
    let rewrap = active_id
        .as_ref()
        .filter(|_| obs.jobs_total > 0)
        .map(|id| RewrapProgress {
            target_key_id: id.clone(),
            repositories_done: obs.jobs_on_active_key,
            repositories_total: obs.jobs_total,
            data_keys_done: u64::from(obs.jobs_on_active_key),
            started_at: last_rotation.clone(),
            completed_at: if rewrap_pending {
                None
            } else {
                last_rotation.clone().map(|_| time(now))
            },
        });
    KmipServerStatus {
        observed_generation: generation,
        conditions: merge(&prev.conditions, &conditions, generation, &time(now)),
        server: match &obs.connection {
            Connection::Ok(id) => Some(id.clone()),
            _ => prev.server.clone(),
        },
        active_key_id: active_id,
        keys,
        last_rotation_time: last_rotation,
        next_rotation_time: next,
        rewrap: rewrap.or_else(|| prev.rewrap.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kmip_server::{CreateKey, MasterKeySource, RotationPolicy};

    fn spec(period: Option<&str>) -> KmipServerSpec {
        serde_json::from_value(serde_json::json!({
            "endpoints": ["k:5696"], "tls": {"secretName": "s"},
            "masterKey": {"create": {"name": "mk"}},
        }))
        .map(|mut s: KmipServerSpec| {
            s.rotation = period.map(|p| RotationPolicy {
                period: p.into(),
                rewrap_existing: true,
            });
            s.master_key = MasterKeySource {
                key_id: None,
                create: Some(CreateKey { name: "mk".into() }),
            };
            s
        })
        .unwrap()
    }

    fn observed(conn: Connection) -> Observed {
        Observed {
            connection: conn,
            active_key: Some(("1".into(), MasterKeyState::Active)),
            key_states: [("1".to_string(), MasterKeyState::Active)].into(),
            dependents: [("1".to_string(), 3)].into(),
            jobs_total: 1,
            jobs_on_active_key: 1,
            rotated: None,
            replaced: None,
            key_error: None,
        }
    }

    fn cond<'a>(
        s: &'a KmipServerStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn periods_parse_and_next_rotation_follows() {
        assert_eq!(
            parse_period("90d").unwrap(),
            SignedDuration::from_hours(90 * 24)
        );
        assert_eq!(parse_period("30m").unwrap(), SignedDuration::from_mins(30));
        assert!(parse_period("soon").is_err());
        assert!(parse_period("0h").is_err());
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-10T00:00:00Z".parse().unwrap();
        assert_eq!(
            next_rotation(Some(SignedDuration::from_hours(24)), None, t0)
                .unwrap()
                .to_string(),
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(
            next_rotation(Some(SignedDuration::from_hours(24)), Some(t1), t0)
                .unwrap()
                .to_string(),
            "2026-01-11T00:00:00Z"
        );
        assert_eq!(next_rotation(None, Some(t1), t0), None);
    }

    #[test]
    fn ready_when_reachable_authenticated_and_active() {
        let id = KmipServerIdentity {
            endpoint: "k:5696".into(),
            vendor: Some("PyKMIP".into()),
            ..Default::default()
        };
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = build_status(
            &Default::default(),
            &spec(Some("1d")),
            &observed(Connection::Ok(id)),
            Some(1),
            now,
        );
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(s.active_key_id.as_deref(), Some("1"));
        assert_eq!(s.keys[0].dependent_snapshots, 3);
        assert_eq!(s.keys[0].name.as_deref(), Some("mk"));
        assert_eq!(
            s.next_rotation_time.as_ref().unwrap().0.to_string(),
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(s.server.as_ref().unwrap().vendor.as_deref(), Some("PyKMIP"));
    }

    #[test]
    fn each_failure_names_its_condition() {
        let now = Timestamp::now();
        let s = build_status(
            &Default::default(),
            &spec(None),
            &observed(Connection::Unreachable("all 2 endpoints refused".into())),
            None,
            now,
        );
        assert_eq!(cond(&s, "Reachable").status, "False");
        assert!(cond(&s, "Ready").message.contains("refused"));
        let s = build_status(
            &Default::default(),
            &spec(None),
            &observed(Connection::NotAuthenticated("unknown CA".into())),
            None,
            now,
        );
        assert_eq!(cond(&s, "Reachable").status, "True");
        assert_eq!(cond(&s, "Authenticated").status, "False");
        let mut o = observed(Connection::Ok(Default::default()));
        o.active_key = Some(("1".into(), MasterKeyState::Deactivated));
        let s = build_status(&Default::default(), &spec(None), &o, None, now);
        assert_eq!(cond(&s, "KeyActive").reason, "NotActive");
        assert_eq!(cond(&s, "Ready").status, "False");
    }

    #[test]
    fn rotation_supersedes_the_old_key_and_starts_rewrap() {
        let now: Timestamp = "2026-02-01T00:00:00Z".parse().unwrap();
        let first = build_status(
            &Default::default(),
            &spec(Some("1d")),
            &observed(Connection::Ok(Default::default())),
            None,
            now,
        );
        let mut o = observed(Connection::Ok(Default::default()));
        o.rotated = Some(("1".into(), "2".into()));
        o.active_key = Some(("2".into(), MasterKeyState::Active));
        o.key_states.insert("2".into(), MasterKeyState::Active);
        o.jobs_on_active_key = 0;
        let s = build_status(&first, &spec(Some("1d")), &o, None, now);
        assert_eq!(s.active_key_id.as_deref(), Some("2"));
        assert_eq!(s.keys.len(), 2);
        assert_eq!(s.keys[0].state, MasterKeyState::Superseded);
        assert!(s.keys[0].superseded_at.is_some());
        assert_eq!(s.last_rotation_time.as_ref().unwrap().0, now);
        assert_eq!(cond(&s, "Rotating").status, "True");
        assert_eq!(s.rewrap.as_ref().unwrap().repositories_done, 0);
    }

    /// #29: a rotation that failed (the new key could not be made) reports none: the active
    /// key, the last rotation's time and the keys stay, Rotating is False.
    #[test]
    fn a_failed_rotation_reports_no_rotation() {
        let prev = KmipServerStatus {
            active_key_id: Some("k1".into()),
            last_rotation_time: Some(Time("2026-11-01T00:00:00Z".parse().expect("t"))),
            ..Default::default()
        };
        let mut obs = observed(Connection::Ok(KmipServerIdentity::default()));
        obs.active_key = Some(("k1".into(), MasterKeyState::Active));
        obs.key_error = Some("Create refused by the server: permission denied".into());
        let st = build_status(
            &prev,
            &spec(Some("30d")),
            &obs,
            Some(1),
            "2026-12-07T00:00:00Z".parse().expect("t"),
        );
        assert_eq!(st.active_key_id.as_deref(), Some("k1"));
        assert_eq!(st.last_rotation_time, prev.last_rotation_time);
        assert_eq!(
            st.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            ["k1"]
        );
        let rotating = st.conditions.iter().find(|c| c.type_ == "Rotating");
        assert!(
            rotating.is_some_and(|c| c.status == "False"),
            "{rotating:?}"
        );
    }
}
