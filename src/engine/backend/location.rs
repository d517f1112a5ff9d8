//! Where a repository is, parsed from a REPO argument: a directory, or a bucket (container)
//! and key prefix in S3, Google Cloud Storage or Azure Blob Storage.

use std::path::PathBuf;

use super::BackendError;

/// The object stores a repository can live in, each named by its URL scheme (the schemes
/// object_store and the stores' own tools use: `s3://`, `gs://`, `az://`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    S3,
    Gcs,
    Azure,
}

impl StoreKind {
    const ALL: [StoreKind; 3] = [StoreKind::S3, StoreKind::Gcs, StoreKind::Azure];

    pub fn scheme(self) -> &'static str {
        match self {
            StoreKind::S3 => "s3",
            StoreKind::Gcs => "gs",
            StoreKind::Azure => "az",
        }
    }

    /// What the part after the scheme names first.
    fn bucket_word(self) -> &'static str {
        match self {
            StoreKind::Azure => "container",
            _ => "bucket",
        }
    }
}

/// Where to find a repository, parsed from a REPO argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory: a plain path or `file://PATH`.
    Local(PathBuf),
    /// A bucket (an Azure container) and a key prefix: `s3://BUCKET/PREFIX`,
    /// `gs://BUCKET/PREFIX` or `az://CONTAINER/PREFIX`.
    Remote {
        kind: StoreKind,
        bucket: String,
        prefix: String,
    },
}

/// What REPO may be, for messages.
pub const REPO_FORMS: &str =
    "a path, file://PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX";

impl Location {
    /// Parse `PATH`, `file://PATH`, `s3://BUCKET[/PREFIX]`, `gs://BUCKET[/PREFIX]` or
    /// `az://CONTAINER[/PREFIX]`.
    pub fn parse(repo: &str) -> Result<Self, BackendError> {
        let bad = |reason: String| BackendError::BadLocation {
            repo: repo.into(),
            reason,
        };
        for kind in StoreKind::ALL {
            let Some(rest) = repo.strip_prefix(&format!("{}://", kind.scheme())) else {
                continue;
            };
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                let (scheme, word) = (kind.scheme(), kind.bucket_word());
                return Err(bad(format!(
                    "{scheme}:// needs a {word} name: {scheme}://{}/PREFIX",
                    word.to_uppercase()
                )));
            }
            return Ok(Location::Remote {
                kind,
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        if let Some((scheme, _)) = repo.split_once("://")
            && scheme != "file"
        {
            return Err(bad(format!("unknown scheme: use {REPO_FORMS}")));
        }
        let path = repo.strip_prefix("file://").unwrap_or(repo);
        if path.is_empty() {
            return Err(bad("empty path".into()));
        }
        Ok(Location::Local(PathBuf::from(path)))
    }
}

impl Location {
    /// A bucket (an Azure container) and a key prefix in `kind`, as a REPO argument names
    /// them (the prefix without leading or trailing slashes): what the operator builds an
    /// agent's `--repo` from, and [`Location::parse`] reads back.
    pub fn remote(kind: StoreKind, bucket: &str, prefix: Option<&str>) -> Location {
        Location::Remote {
            kind,
            bucket: bucket.to_string(),
            prefix: prefix.unwrap_or_default().trim_matches('/').to_string(),
        }
    }
}

/// The REPO argument: [`Location::parse`] of it gives the same location back.
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Remote {
                kind,
                bucket,
                prefix,
            } if prefix.is_empty() => write!(f, "{}://{bucket}", kind.scheme()),
            Location::Remote {
                kind,
                bucket,
                prefix,
            } => write!(f, "{}://{bucket}/{prefix}", kind.scheme()),
        }
    }
}

/// The prefix of the environment variables a copy's target's store credentials are read from
/// (`SNAPCRYPT_TO_AWS_ACCESS_KEY_ID`, `SNAPCRYPT_TO_GOOGLE_SERVICE_ACCOUNT`,
/// `SNAPCRYPT_TO_AZURE_STORAGE_ACCOUNT_KEY`...): when any is set, the target uses those alone,
/// never the source's; when none is, the usual variables serve both.
pub const TARGET_ENV: &str = "SNAPCRYPT_TO_";

/// How a store is reached beyond its URL: S3 settings, and where its credentials come from.
/// Unset S3 fields fall back to the usual AWS environment variables (AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL).
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Read this store's credentials (of any kind: AWS_*, GOOGLE_*, AZURE_*, and
    /// SNAPCRYPT_AMBIENT_CREDENTIALS) from the environment variables that carry this prefix,
    /// the prefix removed, and from no others: a copy's target (`SNAPCRYPT_TO_`) then never
    /// uses the source's credentials. When no variable carries it, the usual ones are read.
    pub credentials_env: Option<String>,
    /// S3 Object Lock of the repository's write-once objects (S3 only).
    pub object_lock: Option<super::object_lock::ObjectLock>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(kind: StoreKind, bucket: &str, prefix: &str) -> Location {
        Location::Remote {
            kind,
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn parses_locations() {
        assert_eq!(
            Location::parse("/x/y").unwrap(),
            Location::Local("/x/y".into())
        );
        assert_eq!(
            Location::parse("file:///x").unwrap(),
            Location::Local("/x".into())
        );
        assert_eq!(
            Location::parse("s3://b/p/q/").unwrap(),
            remote(StoreKind::S3, "b", "p/q")
        );
        assert_eq!(
            Location::parse("gs://b/p").unwrap(),
            remote(StoreKind::Gcs, "b", "p")
        );
        assert_eq!(
            Location::parse("az://c").unwrap(),
            remote(StoreKind::Azure, "c", "")
        );
        assert_eq!(Location::parse("az://c/p").unwrap().to_string(), "az://c/p");
        assert!(Location::parse("s3://").is_err());
        let e = Location::parse("az:///p").unwrap_err().to_string();
        assert!(
            e.contains("az:// needs a container name: az://CONTAINER/PREFIX"),
            "{e}"
        );
        let e = Location::parse("wasb://c").unwrap_err().to_string();
        assert!(
            e.contains("unknown scheme") && e.contains("gs://BUCKET"),
            "{e}"
        );
    }

    /// #30: what the operator writes (Display of a built location) is what the agent parses.
    #[test]
    fn a_location_round_trips_through_its_repo_argument() {
        let cases = [
            Location::remote(StoreKind::S3, "b", None),
            Location::remote(StoreKind::S3, "b", Some("/clusters/rs0/")),
            Location::remote(StoreKind::Gcs, "b", Some("rs0")),
            Location::remote(StoreKind::Azure, "backups", Some("a/b/c")),
            Location::Local("/repo/clusters/rs0".into()),
        ];
        for loc in cases {
            let arg = loc.to_string();
            assert_eq!(Location::parse(&arg).unwrap(), loc, "{arg}");
        }
        assert_eq!(
            Location::remote(StoreKind::Gcs, "b", Some("")).to_string(),
            "gs://b"
        );
        let e = Location::parse("wasb://c").unwrap_err().to_string();
        assert!(
            e.contains("unknown scheme") && e.contains("gs://BUCKET"),
            "{e}"
        );
    }
}
