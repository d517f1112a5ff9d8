//! What any agent run that reads or writes a BackupJob's repository needs from the API: the
//! job's spec and references checked, and its KmipServer with an active master key.

use kube::{Api, Client, ResourceExt};

use crate::api::backup_job::Encryption;
use crate::api::restore::RestoreSource;
use crate::api::{BackupJob, KmipServer};
use crate::controller::job_spec::references::find_references;
use crate::controller::job_spec::validate::{
    Problem, check_references, check_spec, references, repository_references,
};
use crate::controller::reason::Reason;

/// Why a pod cannot start yet: a condition reason and a message naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub reason: Reason,
    pub message: String,
}

/// What of a job a pod needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// A snapshot pod: the whole spec, and everything it references.
    Everything,
    /// A restore pod: only the repository and the key (the replica set may be long gone).
    RepositoryAndKey,
}

/// Check the job's spec (pure) and that what it references exists and fits.
pub async fn check_job(
    client: &Client,
    ns: &str,
    job: &BackupJob,
    needs: Needs,
) -> kube::Result<Option<Blocked>> {
    let (mut problems, refs) = match needs {
        Needs::Everything => (check_spec(&job.spec).1, references(&job.spec)),
        Needs::RepositoryAndKey => (
            Vec::new(),
            repository_references(&job.spec.destination, &job.spec.encryption, "spec"),
        ),
    };
    let found = find_references(client, ns, &refs).await?;
    problems.extend(check_references(&refs, &found, ns));
    Ok(blocked(
        &format!("BackupJob {}: ", job.name_any()),
        &problems,
    ))
}

/// Check that a Restore's spec.source (a repository and its key, no BackupJob) references
/// what exists and fits.
pub async fn check_source(
    client: &Client,
    ns: &str,
    source: &RestoreSource,
) -> kube::Result<Option<Blocked>> {
    let refs = repository_references(&source.destination, &source.encryption, "spec.source");
    let found = find_references(client, ns, &refs).await?;
    Ok(blocked("", &check_references(&refs, &found, ns)))
}

/// Check that what `refs` names (a copy's repository and key) exists and fits.
pub async fn check_refs(
    client: &Client,
    ns: &str,
    refs: &[crate::controller::job_spec::validate::Reference],
) -> kube::Result<Option<Blocked>> {
    let found = find_references(client, ns, refs).await?;
    Ok(blocked("", &check_references(refs, &found, ns)))
}

/// The first problem's reason, and every problem said after `prefix`.
fn blocked(prefix: &str, problems: &[Problem]) -> Option<Blocked> {
    problems.first().map(|first| Blocked {
        reason: first.reason,
        message: format!(
            "{prefix}{}",
            problems
                .iter()
                .map(|p: &Problem| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

/// A KMIP job's KmipServer and its active master key id; None for a local-key job.
pub async fn job_kmip(
    client: &Client,
    ns: &str,
    job: &BackupJob,
) -> kube::Result<Result<Option<(KmipServer, String)>, Blocked>> {
    encryption_kmip(client, ns, &job.spec.encryption, "spec.encryption").await
}

/// The KmipServer `enc` names (at `field`) and its active master key id; None for a local key.
pub async fn encryption_kmip(
    client: &Client,
    ns: &str,
    enc: &Encryption,
    field: &str,
) -> kube::Result<Result<Option<(KmipServer, String)>, Blocked>> {
    let Some(r) = &enc.kmip_server_ref else {
        return Ok(Ok(None));
    };
    let Some(ks) = Api::<KmipServer>::namespaced(client.clone(), ns)
        .get_opt(&r.name)
        .await?
    else {
        return Ok(Err(Blocked {
            reason: Reason::KmipServerNotFound,
            message: format!(
                "{field}.kmipServerRef.name: KmipServer {} does not exist",
                r.name
            ),
        }));
    };
    match ks.status.as_ref().and_then(|s| s.active_key_id.clone()) {
        Some(key) => Ok(Ok(Some((ks, key)))),
        None => Ok(Err(Blocked {
            reason: Reason::KmipServerNotReady,
            message: format!(
                "KmipServer {} has no active master key yet (see its status conditions)",
                ks.name_any()
            ),
        })),
    }
}
