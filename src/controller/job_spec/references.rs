//! Dereference what a BackupJob's spec names: each referenced object absent, or present (with
//! its keys, for Secrets), for [`super::validate::check_references`].

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::{Api, Client};

use super::validate::{Found, RefKind, Reference};
use crate::api::KmipServer;

/// Look up every referenced object: absent, or present (with its keys, for Secrets).
pub async fn find_references(
    client: &Client,
    ns: &str,
    refs: &[Reference],
) -> Result<Found, kube::Error> {
    let mut found = Found::new();
    // A name that cannot be an object's is not looked up (check_references says why).
    for r in refs
        .iter()
        .filter(|r| super::validate::is_object_name(&r.name))
    {
        let present = match r.kind {
            RefKind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await?
                .map(|s| secret_keys(&s)),
            RefKind::PersistentVolumeClaim => {
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
                    .get_metadata_opt(&r.name)
                    .await?
                    .map(|_| BTreeSet::new())
            }
            RefKind::KmipServer => Api::<KmipServer>::namespaced(client.clone(), ns)
                .get_metadata_opt(&r.name)
                .await?
                .map(|_| BTreeSet::new()),
            RefKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_metadata_opt(&r.name)
                .await?
                .map(|_| BTreeSet::new()),
        };
        found.insert((r.kind, r.name.clone()), present);
    }
    Ok(found)
}

fn secret_keys(s: &Secret) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = s
        .data
        .as_ref()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(sd) = &s.string_data {
        keys.extend(sd.keys().cloned());
    }
    keys
}
