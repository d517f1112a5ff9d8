//! S3 Object Lock for a repository's immutable objects: each is written once with a
//! retain-until date (COMPLIANCE or GOVERNANCE mode), so until then no credential can delete
//! or overwrite that version, and the retention pass extends it for what kept snapshots still
//! need (docs/REPOSITORY.md, "Object lock").
//!
//! Written by hand on object_store's own signing (`AwsAuthorizer`) and HTTP client: object_store
//! has no call that sends the object-lock headers with a PUT, nor PutObjectRetention, nor a
//! HEAD that returns the retain-until date, and sending them as a client's default headers
//! would leave them unsigned (S3 refuses unsigned `x-amz-*` headers).

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{HttpClient, HttpRequestBody};

use super::BackendError;

/// How locked objects are protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Nobody can shorten the retention or delete a locked version until it ends.
    Compliance,
    /// Principals with s3:BypassGovernanceRetention can; the others cannot.
    Governance,
}

impl LockMode {
    fn as_s3(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

/// A repository's object lock: the mode, and how long each write (and each extension) keeps
/// an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

impl ObjectLock {
    /// `compliance:30d` or `governance:7d` (the CLI's and the agent's form).
    pub fn parse(s: &str) -> Result<ObjectLock, String> {
        let bad = || {
            format!(
                "{s:?}: give MODE:DAYSd, MODE compliance or governance, DAYS 1 to 36500 (for example compliance:30d)"
            )
        };
        let (mode, days) = s.split_once(':').ok_or_else(bad)?;
        let mode = match mode.to_ascii_lowercase().as_str() {
            "compliance" => LockMode::Compliance,
            "governance" => LockMode::Governance,
            _ => return Err(bad()),
        };
        let days: u32 = days
            .strip_suffix('d')
            .and_then(|d| d.parse().ok())
            .filter(|d| (1..=36500).contains(d))
            .ok_or_else(bad)?;
        Ok(ObjectLock { mode, days })
    }

    /// The retain-until date of an object written or extended at `now`, to the second.
    pub fn until(&self, now: jiff::Timestamp) -> jiff::Timestamp {
        let t = now
            .checked_add(jiff::SignedDuration::from_hours(i64::from(self.days) * 24))
            .unwrap_or(jiff::Timestamp::MAX);
        jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
    }

    /// Whether a retention ending at `until` is due for extension at `now`: less than half
    /// of the period is left, so a retention pass at least that often keeps what is needed
    /// locked without a gap.
    pub fn due(&self, until: jiff::Timestamp, now: jiff::Timestamp) -> bool {
        let half = jiff::SignedDuration::from_hours(i64::from(self.days) * 12);
        until.duration_since(now) < half
    }
}

impl std::fmt::Display for ObjectLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            LockMode::Compliance => "compliance",
            LockMode::Governance => "governance",
        };
        write!(f, "{mode}:{}d", self.days)
    }
}

/// Whether `name` is an object written once and never rewritten in place: the config, key
/// records, packs, index objects and snapshots. What is rewritten or deleted as a matter of
/// course (locks, owner records, deletion marks, unfinished records, checkpoints) is never
/// locked.
pub fn is_locked_kind(name: &str) -> bool {
    name == "config"
        || ["data/", "index/", "snapshots/", "keys/"]
            .iter()
            .any(|dir| name.starts_with(dir))
}

/// The S3 requests of object lock, for one bucket and prefix.
pub(super) struct LockClient {
    s3: Arc<AmazonS3>,
    http: HttpClient,
    /// The bucket's URL, without a trailing slash.
    bucket_url: String,
    /// The repository's prefix in the bucket (empty: its root).
    prefix: String,
    region: String,
    /// The repository's object lock (None: the client only asks the bucket about it).
    pub lock: Option<ObjectLock>,
}

impl std::fmt::Debug for LockClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LockClient({}, {:?})", self.bucket_url, self.lock)
    }
}

/// `s` with everything but unreserved characters and `/` percent-encoded (an S3 key in a URL).
fn encode_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Content-MD5 header of `body`: S3 requires it of a locked write and of
/// PutObjectRetention (an integrity check of the request, not a security one).
fn content_md5(body: &[u8]) -> String {
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

/// Why object lock cannot be used on a bucket, and what to do.
const NO_LOCK_CONFIGURATION: &str = "the bucket has no Object Lock configuration: object lock needs a bucket created with Object Lock enabled (which turns versioning on); create one, or remove the object lock option";

/// A failed lock request's error, naming the object and what to do.
fn refused(name: &str, status: u16, body: &str) -> BackendError {
    let code = body
        .split("<Code>")
        .nth(1)
        .and_then(|r| r.split("</Code>").next())
        .unwrap_or("");
    let reason = if body.contains("ObjectLockConfiguration") || code == "InvalidRequest" {
        NO_LOCK_CONFIGURATION.to_string()
    } else if status == 403 {
        format!(
            "access denied ({code}): the credentials may not write or extend object retention (s3:PutObjectRetention), or the object's retention forbids it"
        )
    } else {
        format!("HTTP {status} {code}")
    };
    BackendError::Lock {
        name: name.into(),
        reason,
    }
}

impl LockClient {
    pub(super) fn new(
        s3: Arc<AmazonS3>,
        bucket_url: String,
        prefix: String,
        region: String,
        lock: Option<ObjectLock>,
    ) -> Result<LockClient, BackendError> {
        use object_store::client::HttpConnector;
        let options = object_store::ClientOptions::new().with_allow_http(true);
        let http = object_store::client::ReqwestConnector::default()
            .connect(&options)
            .map_err(|source| BackendError::Store {
                name: bucket_url.clone(),
                source,
            })?;
        Ok(LockClient {
            s3,
            http,
            bucket_url: bucket_url.trim_end_matches('/').to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region,
            lock,
        })
    }

    fn url(&self, name: &str, query: &str) -> String {
        let key = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        };
        format!("{}/{}{query}", self.bucket_url, encode_key(&key))
    }

    /// Send a signed request; the status and body.
    async fn send(
        &self,
        name: &str,
        method: http::Method,
        url: String,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(u16, http::HeaderMap, Bytes), BackendError> {
        let store_error = |source| BackendError::Store {
            name: name.into(),
            source,
        };
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(store_error)?;
        let mut builder = http::Request::builder().method(method).uri(url.as_str());
        for (k, v) in headers {
            builder = builder.header(*k, v.as_str());
        }
        let mut request = builder
            .body(HttpRequestBody::from(body))
            .map_err(|e| refused(name, 0, &e.to_string()))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(store_error)?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| BackendError::Lock {
                name: name.into(),
                reason: format!("the request failed: {e}"),
            })?;
        let (parts, body) = response.into_parts();
        let bytes = body.bytes().await.map_err(|e| BackendError::Lock {
            name: name.into(),
            reason: format!("reading the answer failed: {e}"),
        })?;
        Ok((parts.status.as_u16(), parts.headers, bytes))
    }

    /// Write `name` under `lock`, retained a whole period from now (only if absent with
    /// `create_only`: false when it existed). The body's MD5 goes with it, as S3 requires of
    /// a locked write.
    pub(super) async fn put(
        &self,
        name: &str,
        data: Bytes,
        create_only: bool,
        lock: ObjectLock,
    ) -> Result<bool, BackendError> {
        let until = lock.until(jiff::Timestamp::now());
        let mut headers = vec![
            ("x-amz-object-lock-mode", lock.mode.as_s3().to_string()),
            ("x-amz-object-lock-retain-until-date", until.to_string()),
            ("content-md5", content_md5(&data)),
        ];
        if create_only {
            headers.push(("if-none-match", "*".to_string()));
        }
        let (status, _, body) = self
            .send(name, http::Method::PUT, self.url(name, ""), &headers, data)
            .await?;
        match status {
            200..=299 => Ok(true),
            412 if create_only => Ok(false),
            _ => Err(refused(name, status, &String::from_utf8_lossy(&body))),
        }
    }

    /// The retain-until date of `name`'s current version (None: none, or no such object).
    pub(super) async fn retained_until(
        &self,
        name: &str,
    ) -> Result<Option<jiff::Timestamp>, BackendError> {
        let (status, headers, body) = self
            .send(
                name,
                http::Method::HEAD,
                self.url(name, ""),
                &[],
                Bytes::new(),
            )
            .await?;
        match status {
            200..=299 => Ok(headers
                .get("x-amz-object-lock-retain-until-date")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            404 => Ok(None),
            _ => Err(refused(name, status, &String::from_utf8_lossy(&body))),
        }
    }

    /// Extend `name`'s retention under `lock` to `until` (PutObjectRetention).
    pub(super) async fn extend(
        &self,
        name: &str,
        lock: ObjectLock,
        until: jiff::Timestamp,
    ) -> Result<(), BackendError> {
        let xml = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>",
            lock.mode.as_s3()
        );
        let headers = [
            ("content-type", "application/xml".to_string()),
            ("content-md5", content_md5(xml.as_bytes())),
        ];
        let (status, _, body) = self
            .send(
                name,
                http::Method::PUT,
                self.url(name, "?retention"),
                &headers,
                Bytes::from(xml),
            )
            .await?;
        match status {
            200..=299 => Ok(()),
            _ => Err(refused(name, status, &String::from_utf8_lossy(&body))),
        }
    }

    /// Whether the bucket has Object Lock enabled.
    pub(super) async fn bucket_locked(&self) -> Result<bool, BackendError> {
        let url = format!("{}?object-lock", self.bucket_url);
        let (status, _, body) = self
            .send("(bucket)", http::Method::GET, url, &[], Bytes::new())
            .await?;
        let text = String::from_utf8_lossy(&body);
        match status {
            200..=299 => Ok(text.contains("<ObjectLockEnabled>Enabled</ObjectLockEnabled>")),
            404 => Ok(false),
            _ if text.contains("ObjectLockConfigurationNotFound") => Ok(false),
            _ => Err(refused("(bucket)", status, &text)),
        }
    }
}

/// The object lock of a repository's backend.
impl super::Backend {
    /// The lock client and the lock, when `name` is an object the repository's object lock
    /// covers.
    pub(super) fn locking(&self, name: &str) -> Option<(&LockClient, ObjectLock)> {
        let client = self.lock.as_deref()?;
        Some((client, client.lock?)).filter(|_| is_locked_kind(name))
    }

    /// The repository's object lock, if it has one.
    pub fn object_lock(&self) -> Option<ObjectLock> {
        self.lock.as_ref().and_then(|l| l.lock)
    }

    /// When `name`'s retention ends (None: no object lock, no retention, or no such object).
    pub async fn retained_until(
        &self,
        name: &str,
    ) -> Result<Option<jiff::Timestamp>, BackendError> {
        match &self.lock {
            Some(client) if client.lock.is_some() => client.retained_until(name).await,
            _ => Ok(None),
        }
    }

    /// Keep `name` locked: extend its retention to a whole period from `now` when less than
    /// half of one is left (or it has none: written before the lock was set). Whether it did.
    pub async fn keep_locked(
        &self,
        name: &str,
        now: jiff::Timestamp,
    ) -> Result<bool, BackendError> {
        let Some((client, lock)) = self.locking(name) else {
            return Ok(false);
        };
        let until = client.retained_until(name).await?;
        if until.is_some_and(|u| !lock.due(u, now)) {
            return Ok(false);
        }
        client.extend(name, lock, lock.until(now)).await?;
        Ok(true)
    }

    /// Refuse object lock on a bucket that does not have it enabled, before anything is
    /// written.
    pub async fn check_object_lock(&self) -> Result<(), BackendError> {
        let Some(client) = self.lock.as_deref().filter(|c| c.lock.is_some()) else {
            return Ok(());
        };
        if client.bucket_locked().await? {
            return Ok(());
        }
        Err(BackendError::Lock {
            name: self.display.clone(),
            reason: NO_LOCK_CONFIGURATION.into(),
        })
    }
}

impl super::Backend {
    /// Refuse to delete from a bucket with Object Lock when no object lock was given: a
    /// delete there would hide locked objects behind delete markers rather than keep them.
    /// A bucket that does not answer the question (a store without Object Lock) passes.
    pub async fn check_no_unknown_lock(&self) -> Result<(), BackendError> {
        let Some(client) = self.lock.as_deref().filter(|c| c.lock.is_none()) else {
            return Ok(());
        };
        if client.bucket_locked().await.unwrap_or(false) {
            return Err(BackendError::Lock {
                name: self.display.clone(),
                reason: "the bucket has Object Lock enabled, and no object lock was given: give --s3-object-lock MODE:DAYSd (a BackupJob's or copy's s3.objectLock), so that prune keeps what is locked and extends what is needed instead of hiding snapshots behind delete markers".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_settings_parse_and_print() {
        let l = ObjectLock::parse("compliance:30d").unwrap();
        assert_eq!(
            l,
            ObjectLock {
                mode: LockMode::Compliance,
                days: 30
            }
        );
        assert_eq!(l.to_string(), "compliance:30d");
        assert_eq!(
            ObjectLock::parse("Governance:7d").unwrap().mode,
            LockMode::Governance
        );
        for bad in [
            "compliance",
            "legal:3d",
            "compliance:0d",
            "compliance:30",
            "x:y",
        ] {
            let e = ObjectLock::parse(bad).unwrap_err();
            assert!(e.contains("MODE:DAYSd"), "{bad}: {e}");
        }
    }

    #[test]
    fn retention_is_extended_in_its_second_half() {
        let l = ObjectLock::parse("compliance:10d").unwrap();
        let now: jiff::Timestamp = "2026-12-07T10:00:00.5Z".parse().unwrap();
        let until = l.until(now);
        assert_eq!(until.to_string(), "2026-12-17T10:00:00Z");
        assert!(!l.due(until, now));
        let later = now
            .checked_add(jiff::SignedDuration::from_hours(5 * 24 + 1))
            .unwrap();
        assert!(l.due(until, later));
    }

    #[test]
    fn only_objects_written_once_are_locked() {
        for name in [
            "config",
            "keys/k1",
            "data/ab/abcd",
            "index/abcd",
            "snapshots/s1",
        ] {
            assert!(is_locked_kind(name), "{name}");
        }
        for name in [
            "locks/l1",
            "owners/o1",
            "garbage/abcd",
            "unfinished/s1",
            "configx",
        ] {
            assert!(!is_locked_kind(name), "{name}");
        }
        assert_eq!(encode_key("rs 0/data/a+b"), "rs%200/data/a%2Bb");
    }
}
