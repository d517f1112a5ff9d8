//! Releasing volume captures: the VolumeSnapshots, the claims restored from them and the
//! finished pods that read those claims, as [`leftover_captures`](super::plan) names them.
//! Each is deleted by uid (never an object that took the name since), and a missing one is
//! already gone. The Snapshot's owner reference also lets garbage collection take them with it.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::DynamicObject;
use kube::{Api, Resource, ResourceExt};

use super::Error;
use super::build::volume::api_resource;
use super::plan::Leftovers;
use crate::api::Snapshot;
use crate::controller::context::Context;
use crate::controller::kube_api::delete_exactly;

pub(super) async fn release(
    snap: &Snapshot,
    leftovers: Leftovers<'_>,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = snap.namespace().unwrap_or_default();
    let client = &ctx.client;
    // The pods first: a claim stays in use while a pod that mounts it exists.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for p in leftovers.pods {
        delete(snap, &pods, p, "pod").await?;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for c in leftovers.clones {
        delete(snap, &claims, c, "claim").await?;
    }
    let volumes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &api_resource());
    for v in leftovers.volumes {
        delete(snap, &volumes, v, "VolumeSnapshot").await?;
    }
    Ok(())
}

async fn delete<K>(snap: &Snapshot, api: &Api<K>, obj: &K, what: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    delete_exactly(api, obj)
        .await
        .map(|_| ())
        .map_err(|source| Error::CleanUpCapture {
            snapshot: snap.name_any(),
            object: format!("{what} {}", obj.name_any()),
            source,
        })
}
