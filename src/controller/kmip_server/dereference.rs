//! Dereference: everything a KmipServer's reconcile reads from the API (its TLS Secret, the
//! BackupJobs that use it and their Snapshots), into one [`World`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use zeroize::Zeroizing;

use super::Error;
use crate::api::snapshot::RunPhase;
use crate::api::{BackupJob, KmipServer, Snapshot};
use crate::kms::kmip::TlsMaterial;

/// A KmipServer's surroundings, as read from the API.
pub struct World {
    /// The client TLS material, or why the Secret does not give it.
    pub tls: Result<TlsMaterial, String>,
    pub users: Users,
}

pub async fn dereference(ks: &KmipServer, client: &Client) -> Result<World, Error> {
    let ns = ks.namespace().unwrap_or_default();
    let name = ks.name_any();
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(&ks.spec.tls.secret_name)
        .await
        .map_err(|source| Error::Dereference {
            what: format!("Secret {}", ks.spec.tls.secret_name),
            source,
        })?;
    let tls = tls_from_secret(secret, &ks.spec.tls.secret_name);
    let jobs: Vec<BackupJob> = Api::<BackupJob>::namespaced(client.clone(), &ns)
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
    let snapshots = Api::<Snapshot>::namespaced(client.clone(), &ns)
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
    Ok(World {
        tls,
        users: Users { jobs, snapshots },
    })
}

/// The client TLS material from the Secret (`tls.crt`, `tls.key`, `ca.crt`).
pub fn tls_from_secret(secret: Option<Secret>, name: &str) -> Result<TlsMaterial, String> {
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

/// What the BackupJobs and Snapshots that use this server say.
pub struct Users {
    pub jobs: Vec<BackupJob>,
    pub snapshots: Vec<Snapshot>,
}

/// Dependants of each master key: the succeeded Snapshots that name it. Pure.
pub fn dependents(users: &Users) -> BTreeMap<String, u64> {
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
