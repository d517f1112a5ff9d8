//! KmipServer reconciler: connect with the referenced TLS Secret, ensure the master key
//! (an existing id, or found or created by name), poll its state, rotate it on the policy's
//! period (never revoking the old key), and report server identity, keys, dependants and
//! rewrap progress in status.
//!
//! dereference (Secret, BackupJobs, Snapshots) -> observe (the KMIP server: the only place that
//! talks to it) -> build status (pure, `build.rs`) -> apply status -> events.

pub mod build;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use zeroize::Zeroizing;

use self::build::{Connection, Observed, build_status, next_rotation};
use super::context::Context;
use super::kube_api::{apply_status, scoped_api};
use super::reason::Reason;
use crate::api::kmip_server::{KmipProtocolVersion, KmipServerIdentity, WrappingMode};
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, KmipServer, Snapshot};
use crate::controller::job_spec::schedule::parse_period;
use crate::kms::kmip::{
    FailureStage, KmipClient, KmipConfig, KmipError, KmipKeyManager, ProtocolVersion, ResultReason,
    TlsMaterial, WrapMode,
};

pub const CONTROLLER: &str = "kmipserver";

#[derive(Debug, thiserror::Error, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Error {
    #[error("reading {what}: {source}")]
    Dereference { what: String, source: kube::Error },
    #[error("writing status: {0}")]
    UpdateStatus(kube::Error),
}

impl Error {
    /// The stage, as a metrics label: the variant's name in snake case.
    pub fn category(&self) -> &'static str {
        self.into()
    }
}

/// The KmipServer controller; BackupJobs that reference a server trigger its reconcile.
pub fn controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    use futures::StreamExt;
    let servers: Api<KmipServer> = scoped_api(&ctx.client, namespace.as_deref());
    let jobs: Api<BackupJob> = scoped_api(&ctx.client, namespace.as_deref());
    let ctl = super::kube_api::lean_controller(servers);
    ctx.metrics.watch_kmip_servers(ctl.store());
    ctl.watches(jobs, watcher::Config::default().any_semantic(), |j| {
        let r = j.spec.encryption.kmip_server_ref.as_ref()?;
        Some(ObjectRef::<KmipServer>::new(&r.name).within(&j.namespace()?))
    })
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .map(super::kube_api::log_stream_error(CONTROLLER))
}

fn error_policy(ks: Arc<KmipServer>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_failure(CONTROLLER, ks.as_ref(), err.category(), err)
}

/// The client TLS material from the Secret (`tls.crt`, `tls.key`, `ca.crt`).
fn tls_from_secret(secret: Option<Secret>, name: &str) -> Result<TlsMaterial, String> {
    let secret =
        secret.ok_or_else(|| format!("spec.tls.secretName: Secret {name} does not exist"))?;
    let data = secret.data.unwrap_or_default();
    let get = |k: &str| {
        data.get(k).map(|b| b.0.clone()).ok_or_else(|| {
            format!(
                "spec.tls.secretName: Secret {name} has no key {k} (needs tls.crt, tls.key, ca.crt)"
            )
        })
    };
    Ok(TlsMaterial {
        ca_pem: get("ca.crt")?,
        client_cert_pem: Some(get("tls.crt")?),
        client_key_pem: Some(Zeroizing::new(get("tls.key")?)),
    })
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

/// What the BackupJobs and Snapshots that use this server say.
struct Users {
    jobs: Vec<BackupJob>,
    snapshots: Vec<Snapshot>,
}

/// Dependants of each master key: the succeeded Snapshots that name it. Pure.
fn dependents(users: &Users) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for s in &users.snapshots {
        if let Some(k) = s
            .status
            .as_ref()
            .filter(|st| st.phase == RunPhase::Succeeded)
            .and_then(|st| st.key_id.clone())
        {
            *out.entry(k).or_default() += 1;
        }
    }
    out
}

/// Reconcile the master key with the KMIP server: connect, ensure the key exists (find or
/// create it by name), rotate it when due, then read every known key's state. What was done
/// and seen, for status.
async fn reconcile_keys(
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
        Ok(s) => (active, format!("{s:?}")),
        Err(e) => {
            obs.key_error = Some(format!("master key {active}: {e}"));
            return obs;
        }
    };
    // A master key revoked, deactivated or destroyed on the server (by a security team, say)
    // protects nothing new: it is replaced (see `replacement`), and stays listed.
    if !matches!(state.as_str(), "Active" | "PreActive") {
        match replacement(ks, &client, &active, &state).await {
            Some(Ok((id, new_state))) => {
                obs.rotated = Some((active.clone(), id.clone()));
                obs.replaced = Some(state.clone());
                active = id;
                state = new_state;
            }
            Some(Err(e)) => obs.key_error = Some(e),
            None => {}
        }
    }
    // Rotate when due (decided pure, done here), the old key left alone.
    else if state == "Active" && rotation_due(ks, &prev, &active, now) {
        match rotate(ks, &client, &active).await {
            Ok(id) => {
                obs.rotated = Some((active.clone(), id.clone()));
                active = id;
                state = "Active".into();
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
            obs.key_states.insert(k, format!("{s:?}"));
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
    state: &str,
) -> Option<Result<(String, String), String>> {
    if let Some(create) = &ks.spec.master_key.create {
        return Some(
            client
                .create_master_key(&create.name)
                .await
                .map(|id| (id, "Active".to_string()))
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
        Ok(s) => Ok((id, format!("{s:?}"))),
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

#[tracing::instrument(name = "reconcile", skip_all, fields(
    controller = CONTROLLER,
    namespace = %ks.namespace().unwrap_or_default(),
    name = %ks.name_any(),
))]
async fn reconcile(ks: Arc<KmipServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = ks.namespace().unwrap_or_default();
    let name = ks.name_any();
    let now = Timestamp::now();

    // Dereference: the TLS Secret and the BackupJobs (and their Snapshots) that use this server.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = secrets
        .get_opt(&ks.spec.tls.secret_name)
        .await
        .map_err(|source| Error::Dereference {
            what: format!("Secret {}", ks.spec.tls.secret_name),
            source,
        })?;
    let tls = tls_from_secret(secret, &ks.spec.tls.secret_name);
    let jobs: Api<BackupJob> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Vec<BackupJob> = jobs
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Dereference {
            what: "BackupJobs".into(),
            source,
        })?
        .items
        .into_iter()
        .filter(|j| {
            j.spec
                .encryption
                .kmip_server_ref
                .as_ref()
                .is_some_and(|r| r.name == name)
        })
        .collect();
    let job_names: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
    let snaps: Api<Snapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let snapshots = snaps
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Dereference {
            what: "Snapshots".into(),
            source,
        })?
        .items
        .into_iter()
        .filter(|s| job_names.contains(&s.spec.backup_job_ref.name))
        .collect();

    // Reconcile the master key with the KMIP server (connect, ensure, rotate, read states),
    // then build and apply status.
    let users = Users { jobs, snapshots };
    let obs = reconcile_keys(&ks, tls, &users, now).await;
    let prev = ks.status.clone().unwrap_or_default();
    let status = build_status(&prev, &ks.spec, &obs, ks.metadata.generation, now);
    let api: Api<KmipServer> = Api::namespaced(ctx.client.clone(), &ns);
    apply_status(&api, &name, &status)
        .await
        .map_err(Error::UpdateStatus)?;

    // Events: a rotation, and Ready changing.
    match (&obs.rotated, &obs.replaced) {
        (Some((old, new)), None) => ctx.event(ks.as_ref(), Reason::Rotated, format!("master key rotated from {old} to {new}; {old} is kept (never revoked) for the snapshots that need it")).await,
        (Some((old, new)), Some(state)) => ctx.event(ks.as_ref(), Reason::KeyReplaced, format!("master key {old} is {state} on the KMIP server and protects nothing new: replaced by a new key {new}; {old} stays listed for the snapshots that need it")).await,
        _ => {}
    }
    ctx.announce(ks.as_ref(), &prev.conditions, &status.conditions)
        .await;
    ctx.reconciled(CONTROLLER, ks.as_ref());

    // Come back at the poll interval, or at the next rotation if sooner.
    let poll = parse_period(&ks.spec.poll_interval)
        .map(|d| d.unsigned_abs())
        .unwrap_or(Duration::from_secs(300));
    let until_rotation = status
        .next_rotation_time
        .as_ref()
        .map(|t| {
            let d = t.0.duration_since(now);
            if d.is_negative() {
                Duration::ZERO
            } else {
                d.unsigned_abs()
            }
        })
        .unwrap_or(poll);
    Ok(Action::requeue(
        poll.min(until_rotation).max(Duration::from_secs(1)),
    ))
}
