//! Dereference: everything a Snapshot's reconcile reads from the API.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Secret};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};

use super::Error;
use super::build::volume;
use crate::api::backup_job::{AuthMechanism, MongoSource};
use crate::api::{BackupJob, Snapshot};
use crate::controller::agent::node::{has_ended, node_of};
use crate::controller::context::Context;
use crate::controller::job_spec::consistency::{Capture, capture};
use crate::controller::names::SNAPSHOT_UID_LABEL;
use crate::mongo::ConnectionSettings;

/// The Snapshot's surroundings, as read from the API.
pub(super) struct World {
    pub job: Option<BackupJob>,
    /// Other Snapshots of the same job.
    pub siblings: Vec<Snapshot>,
    /// This Snapshot's pods.
    pub pods: Vec<Pod>,
    /// This Snapshot's VolumeSnapshots (mode volumeSnapshot; none where the cluster has no
    /// VolumeSnapshot API) and the claims restored from them.
    pub volumes: Vec<DynamicObject>,
    pub clones: Vec<PersistentVolumeClaim>,
    /// The node of the current attempt's pod while it has not finished (None: no such pod, or
    /// the operator may not read Nodes).
    pub node: Option<Node>,
}

pub(super) async fn dereference(snap: &Snapshot, client: &Client) -> Result<World, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let name = snap.name_any();
    let err = |what: &'static str| Error::dereference(&name, what);
    let job_name = &snap.spec.backup_job_ref.name;
    let job = Api::<BackupJob>::namespaced(client.clone(), &ns)
        .get_opt(job_name)
        .await
        .map_err(err("BackupJob"))?;
    let siblings = Api::<Snapshot>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(err("Snapshots"))?
        .items
        .into_iter()
        .filter(|s| &s.spec.backup_job_ref.name == job_name && s.name_any() != name)
        .collect();
    let Some(uid) = snap.uid() else {
        return Ok(World {
            job,
            siblings,
            pods: Vec::new(),
            volumes: Vec::new(),
            clones: Vec::new(),
            node: None,
        });
    };
    let mine = ListParams::default().labels(&format!("{SNAPSHOT_UID_LABEL}={uid}"));
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&mine)
        .await
        .map_err(err("snapshot pods"))?
        .items;
    // Only a volumeSnapshot job (or one that was, when this Snapshot started) has captures.
    let captures = job
        .as_ref()
        .is_some_and(|j| matches!(capture(&j.spec.source), Capture::VolumeSnapshot { .. }))
        || snap
            .status
            .as_ref()
            .and_then(|s| s.capture.as_ref())
            .is_some_and(|c| c.volume_snapshot.is_some());
    let (volumes, clones) = if captures {
        let vs: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &volume::api_resource());
        let volumes = match vs.list(&mine).await {
            Ok(l) => l.items,
            Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
            Err(e) => return Err(err("VolumeSnapshots")(e)),
        };
        let clones = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .list(&mine)
            .await
            .map_err(err("restored claims"))?
            .items;
        (volumes, clones)
    } else {
        (Vec::new(), Vec::new())
    };
    let node = match super::plan::current_pod(&pods).filter(|p| !has_ended(p)) {
        Some(pod) => node_of(client, pod)
            .await
            .map_err(err("the snapshot pod's Node"))?,
        None => None,
    };
    Ok(World {
        job,
        siblings,
        pods,
        volumes,
        clones,
        node,
    })
}

/// The pods of the replica set: the StatefulSet's (by its selector), or the source selector's.
/// None if the StatefulSet does not exist.
pub(super) async fn list_member_pods(
    client: &Client,
    ns: &str,
    source: &MongoSource,
) -> Result<Option<Vec<Pod>>, kube::Error> {
    let selector = match (&source.stateful_set_name, &source.selector) {
        (Some(sts), _) => {
            let Some(sts) = Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(sts)
                .await?
            else {
                return Ok(None);
            };
            sts.spec.map(|s| s.selector).unwrap_or_default()
        }
        (None, Some(sel)) => sel.clone(),
        (None, None) => return Ok(Some(Vec::new())),
    };
    let Ok(selector) = kube::core::Selector::try_from(selector) else {
        return Ok(Some(Vec::new()));
    };
    if selector.selects_all() {
        // An empty selector would take every pod in the namespace for a member.
        return Ok(Some(Vec::new()));
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels_from(&selector))
        .await?;
    Ok(Some(pods.items))
}

/// The connection settings with the credentials and CA read from their Secrets.
pub(super) async fn connection_settings(
    client: &Client,
    ns: &str,
    source: &MongoSource,
    ctx: &Context,
) -> Result<ConnectionSettings, kube::Error> {
    let Some(c) = &source.connection else {
        return Ok(ConnectionSettings::default());
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let get = |s: &Option<Secret>, k: &str| -> Option<Vec<u8>> {
        s.as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
    };
    let creds = match &c.credentials_secret {
        Some(n) => secrets.get_opt(n).await?,
        None => None,
    };
    let ca = match c.tls.as_ref().and_then(|t| t.ca_secret.as_ref()) {
        Some(n) => secrets.get_opt(n).await?,
        None => None,
    };
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let cert_key = match c.auth_mechanism {
        AuthMechanism::X509 => match (get(&creds, "tls.crt"), get(&creds, "tls.key")) {
            (Some(mut crt), Some(key)) => {
                crt.push(b'\n');
                crt.extend(key);
                Some(crt)
            }
            _ => None,
        },
        _ => None,
    };
    Ok(ConnectionSettings {
        port: c.port,
        mechanism: crate::controller::job_spec::member::auth_mechanism(c.auth_mechanism),
        auth_source: c.auth_source.clone(),
        username: text(get(&creds, "username")),
        password: text(get(&creds, "password")),
        tls: c.tls.as_ref().is_some_and(|t| t.enabled),
        ca_pem: get(&ca, "ca.crt"),
        client_cert_key_pem: cert_key,
        timeout: ctx.config.mongo_timeout,
    })
}
