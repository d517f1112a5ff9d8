//! The custom resources of group `snapcrypt.dev`, version `v1alpha1`.

pub mod agent;
pub mod backup_job;
pub mod catalog;
pub mod common;
pub mod copy;
pub mod destination;
pub mod kmip_server;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod verification;

pub use backup_job::{BackupJob, BackupJobSpec, BackupJobStatus};
pub use common::{GROUP, VERSION};
pub use kmip_server::{KmipServer, KmipServerSpec, KmipServerStatus};
pub use restore::{Restore, RestoreSpec, RestoreStatus};
pub use snapshot::{Snapshot, SnapshotSpec, SnapshotStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD snapcrypt defines, in a stable order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        KmipServer::crd(),
        BackupJob::crd(),
        Snapshot::crd(),
        Restore::crd(),
    ]
}

/// Every CRD as multi-document YAML, as `snapcrypt crd` prints it: the files of `crds/`
/// concatenated in order.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    Ok(crd_files()?.into_iter().map(|(_, yaml)| yaml).collect())
}

/// One `(file name, YAML document)` per CRD, as stored in `crds/`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all_crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            Ok((name, format!("---\n{}", serde_yaml::to_string(&crd)?)))
        })
        .collect()
}
