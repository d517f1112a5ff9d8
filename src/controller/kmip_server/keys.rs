//! The KMIP side of a KmipServer's reconcile, the only code that talks to the KMIP server:
//! connect, ensure the master key (find or create it by name), rotate it when due (decided
//! pure), replace a key the server no longer holds Active, then read every known key's state.
//! What was done and seen is an [`Observed`], for the plan.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use super::build::{Connection, Observed, next_rotation};
use super::dereference::{Users, dependents};
use crate::api::KmipServer;
use crate::api::kmip_server::{
    KmipProtocolVersion, KmipServerIdentity, MasterKeyState, WrappingMode,
};
use crate::controller::job_spec::schedule::parse_period;
use crate::kms::kmip::{
    FailureStage, KeyState, KmipClient, KmipConfig, KmipError, KmipKeyManager, ProtocolVersion,
    ResultReason, TlsMaterial, WrapMode,
};

/// A key's KMIP state as status names it.
fn state_of(s: KeyState) -> MasterKeyState {
    match s {
        KeyState::PreActive => MasterKeyState::PreActive,
        KeyState::Active => MasterKeyState::Active,
        KeyState::Deactivated => MasterKeyState::Deactivated,
        KeyState::Compromised => MasterKeyState::Compromised,
        KeyState::Destroyed => MasterKeyState::Destroyed,
        KeyState::DestroyedCompromised => MasterKeyState::DestroyedCompromised,
        KeyState::Other(_) => MasterKeyState::Unknown,
    }
}

fn version(v: KmipProtocolVersion) -> ProtocolVersion {
    // Every spec version is one the client knows; 1.4 (the default) only if that ever changes.
    v.as_str().parse().unwrap_or(ProtocolVersion::V1_4)
}

fn classify(e: &KmipError) -> Connection {
    match e {
        KmipError::Unreachable { attempts }
            if attempts.iter().any(|a| a.stage == FailureStage::Tls) =>
        {
            Connection::NotAuthenticated(e.to_string())
        }
        KmipError::Operation(_)
            if e.result_reason() == Some(ResultReason::AuthenticationNotSuccessful) =>
        {
            Connection::NotAuthenticated(e.to_string())
        }
        KmipError::Config(m) => Connection::NoCredentials(m.clone()),
        _ => Connection::Unreachable(e.to_string()),
    }
}

/// Reconcile the master key with the KMIP server: connect, ensure the key exists (find or
/// create it by name), rotate it when due, then read every known key's state. What was done
/// and seen, for status.
pub async fn reconcile_keys(
    ks: &KmipServer,
    tls: Result<TlsMaterial, String>,
    users: &Users,
    now: Timestamp,
) -> Observed {
    let prev = ks.status.clone().unwrap_or_default();
    let mut obs = Observed {
        connection: Connection::Unreachable(String::new()),
        active_key: None,
        key_states: BTreeMap::new(),
        dependents: dependents(users),
        jobs_total: users.jobs.len() as u32,
        jobs_on_active_key: 0,
        rotated: None,
        replaced: None,
        key_error: None,
    };
    // Connect.
    let client = match connect(ks, tls).await {
        Ok((client, identity)) => {
            obs.connection = Connection::Ok(identity);
            client
        }
        Err(c) => {
            obs.connection = c;
            return obs;
        }
    };
    // Ensure: the one in use, else the configured id, else found or created by name.
    let active = match ensure_master_key(ks, &prev, &client).await {
        Ok(Some(a)) => a,
        Ok(None) => return obs,
        Err(e) => {
            obs.key_error = Some(e);
            return obs;
        }
    };
    let (mut active, mut state) = match client.key_state(&active).await {
        Ok(s) => (active, state_of(s)),
        Err(e) => {
            obs.key_error = Some(format!("master key {active}: {e}"));
            return obs;
        }
    };
    // A master key revoked, deactivated or destroyed on the server (by a security team, say)
    // protects nothing new: it is replaced (see `replacement`), and stays listed.
    if !state.usable() {
        match replacement(ks, &client, &active, state).await {
            Some(Ok((id, new_state))) => {
                obs.rotated = Some((active.clone(), id.clone()));
                obs.replaced = Some(state);
                active = id;
                state = new_state;
            }
            Some(Err(e)) => obs.key_error = Some(e),
            None => {}
        }
    }
    // Rotate when due (decided pure, done here), the old key left alone.
    else if state == MasterKeyState::Active && rotation_due(ks, &prev, &active, now) {
        match rotate(ks, &client, &active).await {
            Ok(id) => {
                obs.rotated = Some((active.clone(), id.clone()));
                active = id;
                state = MasterKeyState::Active;
            }
            Err(e) => obs.key_error = Some(format!("rotating master key {active}: {e}")),
        }
    }
    // Read every known key's state.
    for k in prev
        .keys
        .iter()
        .map(|k| k.id.clone())
        .chain(std::iter::once(active.clone()))
    {
        if let Ok(s) = client.key_state(&k).await {
            obs.key_states.insert(k, state_of(s));
        }
    }
    obs.jobs_on_active_key = users
        .jobs
        .iter()
        .filter(|j| j.status.as_ref().and_then(|s| s.key_id.as_deref()) == Some(active.as_str()))
        .count() as u32;
    obs.active_key = Some((active, state));
    obs
}

/// The key that replaces `active`, which the server holds in `state` (not Active): with
/// spec.masterKey.create a new key under that name; a key of the user's (keyId) only once
/// spec.masterKey.keyId names another. Ok((its id, its state)); None: nothing to replace it
/// with yet (KeyActive=False says so).
async fn replacement(
    ks: &KmipServer,
    client: &KmipClient,
    active: &str,
    state: MasterKeyState,
) -> Option<Result<(String, MasterKeyState), String>> {
    if let Some(create) = &ks.spec.master_key.create {
        return Some(
            client
                .create_master_key(&create.name)
                .await
                .map(|id| (id, MasterKeyState::Active))
                .map_err(|e| {
                    format!(
                        "master key {active} is {state}; creating its replacement {}: {e}",
                        create.name
                    )
                }),
        );
    }
    let id = ks
        .spec
        .master_key
        .key_id
        .clone()
        .filter(|id| id != active)?;
    Some(match client.key_state(&id).await {
        Ok(s) => Ok((id, state_of(s))),
        Err(e) => Err(format!("spec.masterKey.keyId {id}: {e}")),
    })
}

/// A client of the KmipServer's endpoints and who answered, or why none could be reached.
async fn connect(
    ks: &KmipServer,
    tls: Result<TlsMaterial, String>,
) -> Result<(Arc<KmipClient>, KmipServerIdentity), Connection> {
    let tls = tls.map_err(Connection::NoCredentials)?;
    let config = KmipConfig {
        endpoints: ks.spec.endpoints.clone(),
        server_name: ks.spec.tls.server_name.clone(),
        tls,
        version: version(ks.spec.protocol_version),
        timeout: Duration::from_secs(u64::from(ks.spec.connect_timeout_seconds)),
    };
    let client =
        Arc::new(KmipClient::new(config).map_err(|e| Connection::NoCredentials(e.to_string()))?);
    let info = client.server_info().await.map_err(|e| classify(&e))?;
    let identity = KmipServerIdentity {
        endpoint: info.endpoint,
        vendor: info.vendor,
        protocol_versions: info
            .versions
            .iter()
            .map(|v| format!("{}.{}", v.major, v.minor))
            .collect(),
        negotiated_version: Some(format!(
            "{}.{}",
            client.version().major,
            client.version().minor
        )),
    };
    Ok((client, identity))
}

/// The master key in use: from status, else `spec.masterKey.keyId`, else found or created
/// under `spec.masterKey.create.name`. None when the spec names none.
async fn ensure_master_key(
    ks: &KmipServer,
    prev: &crate::api::KmipServerStatus,
    client: &Arc<KmipClient>,
) -> Result<Option<String>, String> {
    if let Some(id) = prev
        .active_key_id
        .clone()
        .or_else(|| ks.spec.master_key.key_id.clone())
    {
        return Ok(Some(id));
    }
    let Some(create) = &ks.spec.master_key.create else {
        return Ok(None);
    };
    let mode = match ks.spec.wrapping {
        WrappingMode::ServerEncrypt => WrapMode::ServerSide,
        WrappingMode::LocalKeyWrap => WrapMode::LocalKeyWrap,
    };
    KmipKeyManager::find_or_create(client.clone(), &create.name, mode)
        .await
        .map(|(km, _)| Some(km.key_id().to_string()))
        .map_err(|e| format!("spec.masterKey.create {}: {e}", create.name))
}

/// Whether the active key is due for rotation by `spec.rotation.period`, counted from the last
/// rotation or from when the key came into use. Pure.
fn rotation_due(
    ks: &KmipServer,
    prev: &crate::api::KmipServerStatus,
    active: &str,
    now: Timestamp,
) -> bool {
    let period = ks
        .spec
        .rotation
        .as_ref()
        .and_then(|r| parse_period(&r.period).ok());
    let in_use_since = prev
        .keys
        .iter()
        .find(|k| k.id == active)
        .and_then(|k| k.created_at.as_ref().map(|t| t.0))
        .unwrap_or(now);
    next_rotation(
        period,
        prev.last_rotation_time.as_ref().map(|t| t.0),
        in_use_since,
    )
    .is_some_and(|t| t <= now)
}

/// A new master key replacing `active` (ReKey where the server has it, else a new key under
/// the configured name), active; `active` itself is never revoked.
async fn rotate(ks: &KmipServer, client: &KmipClient, active: &str) -> Result<String, KmipError> {
    let name = ks
        .spec
        .master_key
        .create
        .as_ref()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| format!("snapcrypt-{}", ks.name_any()));
    match client.rekey(active).await {
        Ok(id) => client.activate(&id).await.map(|_| id),
        Err(e) if e.is_not_supported() => client.create_master_key(&name).await,
        Err(e) => Err(e),
    }
}
