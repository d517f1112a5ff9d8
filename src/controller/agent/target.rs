//! A second repository in one pod (a copy's target beside the job's repository): its access
//! moved out of the first's way. Its volumes and mounts get their own names and paths, its
//! flags their `--to` forms (`snapcrypt copy`'s), and its store credentials environment
//! variables under [`TARGET_ENV`], which the agent reads for the target alone: the two
//! repositories' credentials never mix, even when both are S3 with different keys. Pure.

use super::pod::RepoAccess;
pub use crate::engine::backend::TARGET_ENV;

/// Where a mount of the target goes: `/repo` -> `/to-repo`, `/etc/snapcrypt/X` ->
/// `/etc/snapcrypt/to-X`.
fn moved(path: &str) -> String {
    match path.strip_prefix("/etc/snapcrypt/") {
        Some(rest) => format!("/etc/snapcrypt/to-{rest}"),
        None => format!("/to-{}", path.trim_start_matches('/')),
    }
}

/// `value` with a leading mount path of `mounts` (old, new) replaced.
fn remapped(value: &str, mounts: &[(String, String)]) -> String {
    for (old, new) in mounts {
        if let Some(rest) = value.strip_prefix(old.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("{new}{rest}");
        }
    }
    value.to_string()
}

/// The flag `snapcrypt copy` takes for the target: `--repo` -> `--to`, `--X` -> `--to-X`.
fn target_flag(flag: &str) -> String {
    match flag {
        "--repo" => "--to".into(),
        f => format!("--to-{}", f.trim_start_matches("--")),
    }
}

/// `access` (built by [`super::pod::repository_access`]) as the target of a copy.
pub fn as_copy_target(access: RepoAccess) -> RepoAccess {
    let mounts: Vec<(String, String)> = access
        .mounts
        .iter()
        .map(|m| (m.mount_path.clone(), moved(&m.mount_path)))
        .collect();
    RepoAccess {
        volumes: access
            .volumes
            .into_iter()
            .map(|mut v| {
                v.name = format!("to-{}", v.name);
                v
            })
            .collect(),
        mounts: access
            .mounts
            .into_iter()
            .map(|mut m| {
                m.name = format!("to-{}", m.name);
                m.mount_path = moved(&m.mount_path);
                m
            })
            .collect(),
        args: access
            .args
            .into_iter()
            .map(|a| {
                if a.starts_with("--") {
                    target_flag(&a)
                } else {
                    remapped(&a, &mounts)
                }
            })
            .collect(),
        envs: access
            .envs
            .into_iter()
            .map(|mut e| {
                e.name = format!("{TARGET_ENV}{}", e.name);
                e.value = e.value.map(|v| remapped(&v, &mounts));
                e
            })
            .collect(),
        labels: access.labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup_job::Encryption;
    use crate::api::common::SecretKeyRef;
    use crate::api::destination::{Destination, GcsDestination, PvcDestination, S3Destination};
    use crate::controller::agent::pod::{Access, repository_access, secret_of};

    const RW: Access = Access {
        repo_read_only: false,
        rewrap: false,
    };

    fn local_key(name: &str) -> Encryption {
        Encryption {
            local_key_secret: Some(SecretKeyRef {
                name: name.into(),
                key: "key.json".into(),
            }),
            kmip_server_ref: None,
        }
    }

    #[test]
    fn a_pvc_target_moves_beside_the_repository_and_its_key() {
        let d = Destination {
            pvc: Some(PvcDestination {
                claim_name: "offsite".into(),
                path: "repo".into(),
            }),
            ..Default::default()
        };
        let t = as_copy_target(repository_access(&d, &local_key("k2"), None, RW).unwrap());
        assert_eq!(
            t.args,
            [
                "--to",
                "/to-repo/repo",
                "--to-key-file",
                "/etc/snapcrypt/to-key/key.json"
            ]
        );
        let paths: Vec<(&str, &str)> = t
            .mounts
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(
            paths,
            [("to-repo", "/to-repo"), ("to-key", "/etc/snapcrypt/to-key")]
        );
        let names: Vec<&str> = t.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["to-repo", "to-key"]);
    }

    #[test]
    fn object_store_credentials_go_under_the_target_prefix() {
        let s3 = Destination {
            s3: Some(S3Destination {
                bucket: "b".into(),
                region: "eu".into(),
                endpoint: Some("http://s3:9000".into()),
                credentials_secret: "offsite-creds".into(),
                path_style: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = as_copy_target(repository_access(&s3, &local_key("k2"), None, RW).unwrap());
        assert_eq!(
            &t.args[..7],
            [
                "--to",
                "s3://b",
                "--to-s3-endpoint",
                "http://s3:9000",
                "--to-s3-region",
                "eu",
                "--to-s3-path-style"
            ]
        );
        let env: Vec<(&str, &str)> = t
            .envs
            .iter()
            .map(|e| (e.name.as_str(), secret_of(e).expect("from the Secret").1))
            .collect();
        assert_eq!(
            env,
            [
                ("SNAPCRYPT_TO_AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
                (
                    "SNAPCRYPT_TO_AWS_SECRET_ACCESS_KEY",
                    "AWS_SECRET_ACCESS_KEY"
                ),
                ("SNAPCRYPT_TO_AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN"),
            ]
        );
        let gcs = Destination {
            gcs: Some(GcsDestination {
                bucket: "g".into(),
                credentials_secret: Some("gcs".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = as_copy_target(repository_access(&gcs, &local_key("k2"), None, RW).unwrap());
        let sa = t
            .envs
            .iter()
            .find(|e| e.name == "SNAPCRYPT_TO_GOOGLE_SERVICE_ACCOUNT")
            .and_then(|e| e.value.clone());
        assert_eq!(
            sa.as_deref(),
            Some("/etc/snapcrypt/to-gcs/service-account.json")
        );
    }
}
