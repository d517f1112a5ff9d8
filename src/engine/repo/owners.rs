//! Which cluster writes a job's snapshots: `owners/<hash of the job's tag>`, plain JSON like
//! the other bookkeeping records. Two clusters may hold a BackupJob of the same namespace and
//! name over one repository (a cluster rebuilt from Git while the old one still runs, a
//! staging copy): only the owner backs up and applies retention, so two retention passes
//! never forget each other's snapshots; the other cluster only reads (imported Snapshots,
//! restores) until it is told to take over from the named owner.

use serde::{Deserialize, Serialize};

use crate::engine::backend::{Backend, BackendError};
use crate::engine::error::EngineError;

/// The records' directory.
pub const OWNERS_DIR: &str = "owners";

/// One job's writer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The job's tag value, NAMESPACE/NAME.
    pub job: String,
    /// The cluster that writes its snapshots.
    pub cluster: String,
    /// Since when (RFC 3339).
    pub since: String,
}

fn record_name(job: &str) -> String {
    let hash = blake3::hash(job.as_bytes()).to_hex();
    format!("{OWNERS_DIR}/{}", &hash[..32])
}

/// The cluster that writes `job`'s snapshots, if one has claimed them. A record that cannot be
/// read is damage, said as such.
pub async fn owner(backend: &Backend, job: &str) -> Result<Option<Owner>, EngineError> {
    let name = record_name(job);
    match backend.get(&name).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EngineError::Corrupt {
                object: name,
                reason: e.to_string(),
            }),
        Err(BackendError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Make sure `cluster` may write `job`'s snapshots: claim them if nobody has, or if the owner
/// is `take_over_from`; refuse, naming the owner, if another cluster holds them.
pub async fn claim(
    backend: &Backend,
    job: &str,
    cluster: &str,
    take_over_from: Option<&str>,
) -> Result<Owner, EngineError> {
    match owner(backend, job).await? {
        Some(o) if o.cluster == cluster => Ok(o),
        Some(o) if take_over_from != Some(o.cluster.as_str()) => Err(EngineError::OwnedElsewhere {
            job: job.into(),
            owner: o.cluster,
            since: o.since,
            this: cluster.into(),
        }),
        _ => {
            let mine = Owner {
                job: job.into(),
                cluster: cluster.into(),
                since: jiff::Timestamp::now().to_string(),
            };
            backend
                .put(&record_name(job), serde_json::to_vec(&mine)?)
                .await?;
            // Read back: of two clusters claiming at once, the one whose record stayed wins,
            // and the other refuses here rather than after it has written.
            match owner(backend, job).await? {
                Some(o) if o.cluster == cluster => Ok(o),
                Some(o) => Err(EngineError::OwnedElsewhere {
                    job: job.into(),
                    owner: o.cluster,
                    since: o.since,
                    this: cluster.into(),
                }),
                None => Ok(mine),
            }
        }
    }
}
