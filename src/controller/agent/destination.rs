//! A BackupJob's destination as an agent pod needs it: a PVC mounted at [`REPO_MOUNT`], or an
//! object store's URL with its credentials (environment from a Secret, a key file mounted from
//! one, or the pod's own workload identity). Pure.

use k8s_openapi::api::core::v1::{
    KeyToPath, PersistentVolumeClaimVolumeSource, SecretVolumeSource, Volume,
};

use super::pod::{Access, PodError, REPO_MOUNT, RepoAccess, env, mount, secret_env};
use crate::api::destination::{AzureDestination, Destination, GcsDestination, S3Destination};
use crate::engine::backend::{Location, StoreKind};

/// Where a GCS service-account key file is mounted, and its name (the Secret's key too).
pub const GCS_CREDENTIALS_MOUNT: &str = "/etc/snapcrypt/gcs";
pub use crate::controller::names::GCS_CREDENTIALS_FILE;
/// The keys of an Azure credentials Secret the agent reads, each optional: an account key, a
/// SAS token, or a service principal.
pub const AZURE_SECRET_KEYS: [&str; 5] = [
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
];
/// The label AKS Workload Identity's webhook looks for on a pod.
pub const AZURE_WORKLOAD_IDENTITY_LABEL: &str = "azure.workload.identity/use";
/// What the agent reads to use the pod's own identity (no credentials configured).
const AMBIENT: &str = "SNAPCRYPT_AMBIENT_CREDENTIALS";

/// `SCHEME://BUCKET[/PREFIX]`: the engine's own [`Location`], so what the pod is given is
/// what the agent parses (one grammar, round-trip tested in `engine/backend/location.rs`).
fn url(kind: StoreKind, bucket: &str, prefix: Option<&str>) -> String {
    Location::remote(kind, bucket, prefix).to_string()
}

/// The repository directory `path` of the claim mounted at [`REPO_MOUNT`], as `--repo`.
fn local_repo(path: &str) -> String {
    Location::Local(std::path::Path::new(REPO_MOUNT).join(path.trim_start_matches('/'))).to_string()
}

pub fn destination_access(
    d: &Destination,
    how: Access,
    out: &mut RepoAccess,
) -> Result<(), PodError> {
    if let Some(pvc) = &d.pvc {
        out.volumes.push(Volume {
            name: "repo".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: how.repo_read_only.then_some(true),
            }),
            ..Default::default()
        });
        out.mounts
            .push(mount("repo", REPO_MOUNT, how.repo_read_only));
        out.args.extend(["--repo".into(), local_repo(&pvc.path)]);
    } else if let Some(s3) = &d.s3 {
        s3_access(s3, out);
    } else if let Some(gcs) = &d.gcs {
        gcs_access(gcs, out);
    } else if let Some(az) = &d.azure {
        azure_access(az, out);
    } else {
        return Err(PodError::NoDestination);
    }
    Ok(())
}

fn s3_access(s3: &S3Destination, out: &mut RepoAccess) {
    out.args.extend([
        "--repo".into(),
        url(StoreKind::S3, &s3.bucket, s3.prefix.as_deref()),
    ]);
    if let Some(ep) = &s3.endpoint {
        out.args.extend(["--s3-endpoint".into(), ep.clone()]);
    }
    out.args.extend(["--s3-region".into(), s3.region.clone()]);
    if s3.path_style {
        out.args.push("--s3-path-style".into());
    }
    if let Some(lock) = &s3.object_lock {
        out.args.extend(["--s3-object-lock".into(), lock.as_arg()]);
    }
    let secret = &s3.credentials_secret;
    for (key, optional) in [
        ("AWS_ACCESS_KEY_ID", false),
        ("AWS_SECRET_ACCESS_KEY", false),
        ("AWS_SESSION_TOKEN", true),
    ] {
        out.envs.push(secret_env(key, secret, key, optional));
    }
}

/// The key file is mounted (the SDKs' convention: a file, not the environment) and named by
/// GOOGLE_SERVICE_ACCOUNT; without a Secret the agent asks the metadata server (GKE Workload
/// Identity).
fn gcs_access(gcs: &GcsDestination, out: &mut RepoAccess) {
    out.args.extend([
        "--repo".into(),
        url(StoreKind::Gcs, &gcs.bucket, gcs.prefix.as_deref()),
    ]);
    if let Some(ep) = &gcs.endpoint {
        out.envs.push(env("GOOGLE_BASE_URL", ep.clone()));
    }
    match &gcs.credentials_secret {
        Some(secret) => {
            out.volumes.push(Volume {
                name: "gcs-credentials".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    items: Some(vec![KeyToPath {
                        key: GCS_CREDENTIALS_FILE.into(),
                        path: GCS_CREDENTIALS_FILE.into(),
                        mode: None,
                    }]),
                    // Owned by root: readable by the agent's (non-root) user only through the
                    // mode, as the local key file is.
                    default_mode: Some(0o444),
                    optional: None,
                }),
                ..Default::default()
            });
            out.mounts
                .push(mount("gcs-credentials", GCS_CREDENTIALS_MOUNT, true));
            out.envs.push(env(
                "GOOGLE_SERVICE_ACCOUNT",
                format!("{GCS_CREDENTIALS_MOUNT}/{GCS_CREDENTIALS_FILE}"),
            ));
        }
        None => out.envs.push(env(AMBIENT, "1")),
    }
}

/// The account by name; credentials from the Secret's keys present, or else the pod's own
/// identity (with `workloadIdentity`, the label that has AKS inject a federated token).
fn azure_access(az: &AzureDestination, out: &mut RepoAccess) {
    out.args.extend([
        "--repo".into(),
        url(StoreKind::Azure, &az.container, az.prefix.as_deref()),
    ]);
    out.envs
        .push(env("AZURE_STORAGE_ACCOUNT_NAME", az.account.clone()));
    if let Some(ep) = &az.endpoint {
        out.envs.push(env("AZURE_STORAGE_ENDPOINT", ep.clone()));
    }
    match &az.credentials_secret {
        Some(secret) => {
            for key in AZURE_SECRET_KEYS {
                out.envs.push(secret_env(key, secret, key, true));
            }
        }
        None => {
            out.envs.push(env(AMBIENT, "1"));
            if az.workload_identity.is_some() {
                out.labels
                    .insert(AZURE_WORKLOAD_IDENTITY_LABEL.into(), "true".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::destination::{AzureWorkloadIdentity, GcsWorkloadIdentity};

    const RW: Access = Access {
        repo_read_only: false,
        rewrap: false,
    };

    fn access(d: Destination) -> RepoAccess {
        let mut out = RepoAccess::default();
        destination_access(&d, RW, &mut out).unwrap();
        out
    }

    fn env_of(a: &RepoAccess, name: &str) -> Option<String> {
        a.envs.iter().find(|e| e.name == name).map(|e| {
            e.value.clone().unwrap_or_else(|| {
                let (secret, key) = super::super::pod::secret_of(e).expect("a value or a Secret");
                format!("secret {secret}/{key}")
            })
        })
    }

    #[test]
    fn an_s3_object_lock_reaches_the_agent_as_its_flag() {
        use crate::api::destination::{ObjectLockMode, ObjectLockSpec};
        let a = access(Destination {
            s3: Some(S3Destination {
                bucket: "vault".into(),
                credentials_secret: "c".into(),
                object_lock: Some(ObjectLockSpec {
                    mode: ObjectLockMode::Governance,
                    days: 30,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let i = a.args.iter().position(|x| x == "--s3-object-lock").unwrap();
        assert_eq!(a.args[i + 1], "governance:30d");
        assert!(crate::engine::backend::ObjectLock::parse(&a.args[i + 1]).is_ok());
        let t = super::super::target::as_copy_target(a);
        assert!(t.args.iter().any(|x| x == "--to-s3-object-lock"));
    }

    #[test]
    fn gcs_mounts_the_key_file_or_uses_the_pods_identity() {
        let a = access(Destination {
            gcs: Some(GcsDestination {
                bucket: "b".into(),
                prefix: Some("/rs0/".into()),
                endpoint: Some("http://fake:4443".into()),
                credentials_secret: Some("gcs".into()),
                workload_identity: None,
                insecure: true,
            }),
            ..Default::default()
        });
        assert_eq!(a.args, ["--repo", "gs://b/rs0"]);
        assert_eq!(
            env_of(&a, "GOOGLE_SERVICE_ACCOUNT").as_deref(),
            Some("/etc/snapcrypt/gcs/service-account.json")
        );
        assert_eq!(
            env_of(&a, "GOOGLE_BASE_URL").as_deref(),
            Some("http://fake:4443")
        );
        assert_eq!(env_of(&a, AMBIENT), None);
        let secret = a.volumes[0].secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("gcs"));
        assert_eq!(a.mounts[0].read_only, Some(true));
        let wi = access(Destination {
            gcs: Some(GcsDestination {
                bucket: "b".into(),
                workload_identity: Some(GcsWorkloadIdentity {
                    service_account: "sa@p.iam.gserviceaccount.com".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(wi.args, ["--repo", "gs://b"]);
        assert_eq!(env_of(&wi, AMBIENT).as_deref(), Some("1"));
        assert!(wi.volumes.is_empty() && wi.labels.is_empty());
    }

    #[test]
    fn azure_takes_credentials_from_the_secret_or_the_workload_identity() {
        let a = access(Destination {
            azure: Some(AzureDestination {
                account: "acct".into(),
                container: "backups".into(),
                prefix: Some("rs0".into()),
                endpoint: Some("https://acct.blob.core.chinacloudapi.cn".into()),
                credentials_secret: Some("az".into()),
                workload_identity: None,
                insecure: false,
            }),
            ..Default::default()
        });
        assert_eq!(a.args, ["--repo", "az://backups/rs0"]);
        assert_eq!(
            env_of(&a, "AZURE_STORAGE_ACCOUNT_NAME").as_deref(),
            Some("acct")
        );
        assert_eq!(
            env_of(&a, "AZURE_STORAGE_ENDPOINT").as_deref(),
            Some("https://acct.blob.core.chinacloudapi.cn")
        );
        for key in AZURE_SECRET_KEYS {
            assert_eq!(env_of(&a, key), Some(format!("secret az/{key}")));
        }
        assert!(a.labels.is_empty());
        let wi = access(Destination {
            azure: Some(AzureDestination {
                account: "acct".into(),
                container: "backups".into(),
                workload_identity: Some(AzureWorkloadIdentity {
                    client_id: "00000000-0000-0000-0000-000000000000".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(env_of(&wi, AMBIENT).as_deref(), Some("1"));
        assert_eq!(
            wi.labels
                .get(AZURE_WORKLOAD_IDENTITY_LABEL)
                .map(String::as_str),
            Some("true")
        );
    }
}
