//! Where a repository's objects live: a local directory (what a PVC is) or a bucket in S3,
//! Google Cloud Storage or Azure Blob Storage, all through `object_store`. Packs are staged in
//! a local file while they are written; committing one renames it into place (local) or
//! streams it up as a multipart upload (object stores).

mod cloud;
mod durable;
mod local;
mod location;
mod object_lock;
#[cfg(test)]
pub mod paused;
mod words;

pub use self::location::{Location, REPO_FORMS, StoreKind, StoreOptions, TARGET_ENV};
pub use self::object_lock::{LockMode, ObjectLock};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};
use tokio::io::AsyncReadExt;

/// Size of each part of a multipart pack upload.
const PART_SIZE: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("repository {repo}: {reason}")]
    BadLocation { repo: String, reason: String },
    #[error("object {name} does not exist")]
    NotFound { name: String },
    #[error("object {name}: {}", words::store_words(source))]
    Store {
        name: String,
        source: object_store::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "object {name} is {size} bytes, more than the {limit} such an object ever holds: not read (a damaged or planted object; remove it)"
    )]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("object {name}: object lock: {reason}")]
    Lock { name: String, reason: String },
}

/// The most a small object (a lock, the config, a data key record) is read whole: what the
/// store says it holds is checked first, so a planted object of gigabytes is never loaded.
pub const SMALL_OBJECT_MAX: u64 = 1024 * 1024;

/// A local repository's refusal (a link, a path that is not plain) or I/O error.
fn local_error(e: crate::engine::beneath::BeneathError) -> BackendError {
    match e {
        crate::engine::beneath::BeneathError::Io { path, source } => {
            BackendError::Io { path, source }
        }
        other => BackendError::Io {
            path: other.path().to_string(),
            source: std::io::Error::other(other.reason()),
        },
    }
}

/// One listed object: its name, size and the store's time of its last write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    /// Milliseconds since the epoch, by the store's clock.
    pub modified_ms: i64,
}

impl BackendError {
    /// The store refused a write because it is read-only to us (a read-only mount, no
    /// permission): what a reader may carry on without a lock.
    pub fn is_read_only(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            BackendError::Io { source, .. } => matches!(
                source.kind(),
                ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied
            ),
            BackendError::Store { source, .. } => {
                matches!(source, object_store::Error::PermissionDenied { .. })
            }
            _ => false,
        }
    }
}

/// Retries of a store request that failed in a way worth retrying (a 5xx answer, a connection
/// reset or timeout): up to `SNAPCRYPT_STORE_RETRIES` (default 10) with exponential backoff from
/// 100 ms to 15 s, within 5 minutes, then the request's error.
pub(super) fn retry_config() -> RetryConfig {
    let max_retries = std::env::var("SNAPCRYPT_STORE_RETRIES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(10);
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries,
        retry_timeout: Duration::from_secs(300),
    }
}

/// A repository's object store.
#[derive(Clone)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    /// The repository directory, for local repositories (packs are renamed into it).
    local_root: Option<PathBuf>,
    /// The same directory opened once: listing and deletion go beneath it, never through a
    /// link (`local.rs`).
    local_dir: Option<Arc<crate::engine::beneath::Root>>,
    /// Where pack files are staged while written.
    staging: PathBuf,
    display: String,
    /// S3 Object Lock of the repository's write-once objects (`object_lock.rs`).
    lock: Option<Arc<object_lock::LockClient>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Backend {
    /// Open the store at `location`. A local directory is created if `create` is set.
    pub fn open(
        location: &Location,
        s3: &StoreOptions,
        create: bool,
    ) -> Result<Self, BackendError> {
        match location {
            Location::Local(root) => {
                let io = |source| BackendError::Io {
                    path: root.display().to_string(),
                    source,
                };
                if create {
                    std::fs::create_dir_all(root).map_err(io)?;
                } else if !root.is_dir() {
                    return Err(BackendError::BadLocation {
                        repo: root.display().to_string(),
                        reason: "no such directory".into(),
                    });
                }
                let root = root.canonicalize().map_err(io)?;
                let staging = root.join("tmp");
                let store =
                    LocalFileSystem::new_with_prefix(&root).map_err(|e| BackendError::Store {
                        name: root.display().to_string(),
                        source: e,
                    })?;
                let dir =
                    crate::engine::beneath::Root::open(&root).map_err(|e| BackendError::Io {
                        path: e.path().to_string(),
                        source: std::io::Error::other(e.reason()),
                    })?;
                if s3.object_lock.is_some() {
                    return Err(BackendError::BadLocation {
                        repo: root.display().to_string(),
                        reason: "object lock is a setting of an S3 repository, not of a directory: remove it, or use s3://".into(),
                    });
                }
                Ok(Backend {
                    store: Arc::new(store),
                    display: root.display().to_string(),
                    local_root: Some(root),
                    local_dir: Some(Arc::new(dir)),
                    staging,
                    lock: None,
                })
            }
            Location::Remote { .. } => {
                let (store, lock) = cloud::open_remote(location, s3)?;
                let staging = std::env::var_os("SNAPCRYPT_TMPDIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir)
                    .join("snapcrypt-staging");
                Ok(Backend {
                    store,
                    local_root: None,
                    local_dir: None,
                    staging,
                    display: location.to_string(),
                    lock: lock.map(Arc::new),
                })
            }
        }
    }

    /// The directory packs are staged in (created on demand).
    pub fn staging_dir(&self) -> Result<&Path, BackendError> {
        std::fs::create_dir_all(&self.staging).map_err(|source| BackendError::Io {
            path: self.staging.display().to_string(),
            source,
        })?;
        Ok(&self.staging)
    }

    fn err(name: &str) -> impl Fn(object_store::Error) -> BackendError + '_ {
        move |e| match e {
            object_store::Error::NotFound { .. } => BackendError::NotFound { name: name.into() },
            source => {
                // The words go into messages; the library's own text into the log.
                tracing::debug!(object = name, error = %source, "object store error");
                BackendError::Store {
                    name: name.into(),
                    source,
                }
            }
        }
    }

    /// Write (or replace) a small object. In a local repository the object is written to a
    /// staging file, synced, renamed into place and its directory synced: once this returns it
    /// survives a crash of the node.
    pub async fn put(&self, name: &str, data: Vec<u8>) -> Result<(), BackendError> {
        if self.local_root.is_some() {
            return self.local_put(name, data, false).await.map(|_| ());
        }
        if let Some((client, lock)) = self.locking(name) {
            return client.put(name, data.into(), false, lock).await.map(|_| ());
        }
        self.store
            .put(&ObjPath::from(name), PutPayload::from(data))
            .await
            .map_err(Self::err(name))?;
        Ok(())
    }

    /// Read a small object whole (at most `limit` bytes) with the version the store gives it
    /// (an ETag, a generation), for [`Self::replace_if_unchanged`].
    pub async fn get_versioned(
        &self,
        name: &str,
        limit: u64,
    ) -> Result<(Bytes, Option<UpdateVersion>), BackendError> {
        let r = self
            .store
            .get(&ObjPath::from(name))
            .await
            .map_err(Self::err(name))?;
        if r.meta.size > limit {
            return Err(BackendError::TooLarge {
                name: name.into(),
                size: r.meta.size,
                limit,
            });
        }
        let version = (r.meta.e_tag.is_some() || r.meta.version.is_some()).then(|| UpdateVersion {
            e_tag: r.meta.e_tag.clone(),
            version: r.meta.version.clone(),
        });
        let bytes = r.bytes().await.map_err(Self::err(name))?;
        Ok((bytes, version))
    }

    /// Replace `name` only if it is still at `version`: a conditional write where the store
    /// has one; false when it changed (or went) since. A local repository, a store without
    /// conditional writes, or no version: a plain write (the caller compared the content just
    /// before; docs/REPOSITORY.md, "Locks and deletion", says what that leaves).
    pub async fn replace_if_unchanged(
        &self,
        name: &str,
        data: Vec<u8>,
        version: Option<UpdateVersion>,
    ) -> Result<bool, BackendError> {
        let Some(version) = version.filter(|_| self.local_root.is_none()) else {
            self.put(name, data).await?;
            return Ok(true);
        };
        let opts = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        match self
            .store
            .put_opts(&ObjPath::from(name), PutPayload::from(data.clone()), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                self.put(name, data).await?;
                Ok(true)
            }
            Err(e) => Err(Self::err(name)(e)),
        }
    }

    /// Write an object only if none exists under that name; returns false if one existed.
    pub async fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, BackendError> {
        if self.local_root.is_some() {
            return self.local_put(name, data, true).await;
        }
        if let Some((client, lock)) = self.locking(name) {
            return client.put(name, data.into(), true, lock).await;
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&ObjPath::from(name), PutPayload::from(data.clone()), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                // Stores without conditional writes: check, then write (a narrow race remains).
                if self.exists(name).await? {
                    return Ok(false);
                }
                self.put(name, data).await.map(|_| true)
            }
            Err(e) => Err(Self::err(name)(e)),
        }
    }

    /// Read a whole object.
    pub async fn get(&self, name: &str) -> Result<Bytes, BackendError> {
        let r = self
            .store
            .get(&ObjPath::from(name))
            .await
            .map_err(Self::err(name))?;
        r.bytes().await.map_err(Self::err(name))
    }

    /// Read a whole object of at most `limit` bytes (its size, as the store reports it, is
    /// checked before anything is read into memory).
    pub async fn get_limited(&self, name: &str, limit: u64) -> Result<Bytes, BackendError> {
        Ok(self.get_versioned(name, limit).await?.0)
    }

    /// Read `len` bytes at `offset` of an object.
    pub async fn get_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, BackendError> {
        self.store
            .get_range(&ObjPath::from(name), offset..offset + len)
            .await
            .map_err(Self::err(name))
    }

    /// Read `len` bytes of object `name` from `offset` into `buf`, reusing its allocation
    /// (restore's reads, one buffer per thread; a buffer only grows, so it is zeroed once).
    /// A local repository is read with `pread` on the calling thread: through the async
    /// client every read was a new buffer allocated on a blocking-pool thread and freed on
    /// the reader's, which left the allocator's per-thread arenas holding a copy each. Other
    /// stores are read through the client on `handle`. Call from a thread that may block.
    pub fn read_range_into<'b>(
        &self,
        handle: &tokio::runtime::Handle,
        name: &str,
        offset: u64,
        len: u64,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b mut [u8], BackendError> {
        let len = usize::try_from(len).map_err(|_| BackendError::BadLocation {
            repo: self.display.clone(),
            reason: format!("{name}: a read of {len} bytes"),
        })?;
        if buf.len() < len {
            // Exactly: the usual doubling would leave readers with twice the longest span.
            buf.reserve_exact(len - buf.len());
            buf.resize(len, 0);
        }
        let out = &mut buf[..len];
        match &self.local_root {
            Some(root) => {
                use std::os::unix::fs::{FileExt, OpenOptionsExt};
                let path = root.join(name);
                let io = |source| BackendError::Io {
                    path: path.display().to_string(),
                    source,
                };
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .and_then(|f| f.read_exact_at(out, offset))
                    .map_err(io)?;
            }
            None => {
                let bytes = handle.block_on(self.get_range(name, offset, len as u64))?;
                if bytes.len() != len {
                    return Err(BackendError::Io {
                        path: name.into(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("{} bytes returned for a read of {len}", bytes.len()),
                        ),
                    });
                }
                out.copy_from_slice(&bytes);
            }
        }
        Ok(out)
    }

    /// Does the object exist?
    pub async fn exists(&self, name: &str) -> Result<bool, BackendError> {
        match self.store.head(&ObjPath::from(name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Self::err(name)(e)),
        }
    }

    /// The objects under `dir` with the store's time of their last write, sorted by name.
    pub async fn list_meta(&self, dir: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        if let Some(root) = &self.local_dir {
            let (root, d) = (root.clone(), dir.to_string());
            return tokio::task::spawn_blocking(move || local::list(&root, &d))
                .await
                .map_err(|e| BackendError::Io {
                    path: dir.into(),
                    source: std::io::Error::other(e.to_string()),
                })?
                .map_err(local_error);
        }
        let prefix = ObjPath::from(dir);
        let mut out: Vec<ObjectInfo> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| ObjectInfo {
                name: m.location.to_string(),
                size: m.size,
                modified_ms: m.last_modified.timestamp_millis(),
            })
            .try_collect()
            .await
            .map_err(Self::err(dir))?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The size of object `name`, as the store reports it.
    pub async fn object_size(&self, name: &str) -> Result<u64, BackendError> {
        let meta = self
            .store
            .head(&ObjPath::from(name))
            .await
            .map_err(Self::err(name))?;
        Ok(meta.size)
    }

    /// The store's time of the last write of `name` (milliseconds since the epoch).
    pub async fn modified_ms(&self, name: &str) -> Result<i64, BackendError> {
        let meta = self
            .store
            .head(&ObjPath::from(name))
            .await
            .map_err(Self::err(name))?;
        Ok(meta.last_modified.timestamp_millis())
    }

    /// Names (relative to the repository) and sizes of the objects under `dir`, sorted.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, BackendError> {
        if self.local_dir.is_some() {
            let listed = self.list_meta(dir).await?;
            return Ok(listed.into_iter().map(|o| (o.name, o.size)).collect());
        }
        let prefix = ObjPath::from(dir);
        let mut out: Vec<(String, u64)> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .map_err(Self::err(dir))?;
        out.sort();
        Ok(out)
    }

    /// Delete an object; deleting a missing object is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), BackendError> {
        if let Some(root) = &self.local_dir {
            return local::delete(root, name).map_err(local_error);
        }
        match self.store.delete(&ObjPath::from(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::err(name)(e)),
        }
    }

    /// Move a staged pack file into the repository as `name`: a rename for a local
    /// repository, a multipart upload (then removal of the staged file) for S3.
    pub async fn commit_staged(&self, staged: &Path, name: &str) -> Result<(), BackendError> {
        let io = |source| BackendError::Io {
            path: staged.display().to_string(),
            source,
        };
        if let Some(root) = &self.local_root {
            let (root, staged, name) = (root.clone(), staged.to_path_buf(), name.to_string());
            return tokio::task::spawn_blocking(move || durable::commit(&root, &staged, &name))
                .await
                .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        }
        if let Some((client, lock)) = self.locking(name) {
            // One locked PUT of the whole pack (a pack is at most the repository's pack size):
            // S3 takes the lock headers and the checksum with the object.
            let data = tokio::fs::read(staged).await.map_err(io)?;
            client.put(name, data.into(), false, lock).await?;
            return tokio::fs::remove_file(staged).await.map_err(io);
        }
        let upload = self
            .store
            .put_multipart(&ObjPath::from(name))
            .await
            .map_err(Self::err(name))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut file = tokio::fs::File::open(staged).await.map_err(io)?;
        let mut buf = vec![0u8; PART_SIZE];
        loop {
            let n = file.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(2).await.map_err(Self::err(name))?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(Self::err(name))?;
        tokio::fs::remove_file(staged).await.map_err(io)
    }

    /// Ask the system to start reading `len` bytes of object `name` from `offset`, so the
    /// reads that follow find them in the page cache instead of each waiting for the disk
    /// (local repositories: `posix_fadvise(WILLNEED)`, which returns at once; object stores
    /// have nothing like it). A hint: a failure is ignored, the reads report their own.
    pub fn prefetch(&self, name: &str, offset: u64, len: u64) {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(root) = &self.local_root else {
            return;
        };
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(root.join(name))
        {
            let _ = rustix::fs::fadvise(
                &f,
                offset,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::WillNeed,
            );
        }
    }

    /// Is this a local (directory or PVC) repository?
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// A local repository's directory (as opened, links resolved).
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// Human-readable location.
    pub fn display(&self) -> &str {
        &self.display
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::paused::NoConditionalPut;

    /// Item 5 of the data-safety issue: on a store without conditional puts, `put_new` wrote
    /// an empty object (a new repository's config was 0 bytes forever).
    #[tokio::test]
    async fn item05_put_new_without_conditional_puts_writes_the_object() {
        let backend = Backend {
            store: Arc::new(NoConditionalPut::default()),
            local_root: None,
            local_dir: None,
            staging: std::env::temp_dir(),
            display: "memory".into(),
            lock: None,
        };
        assert!(
            backend
                .put_new("config", b"{\"x\":1}".to_vec())
                .await
                .unwrap()
        );
        assert_eq!(&backend.get("config").await.unwrap()[..], b"{\"x\":1}");
        assert!(!backend.put_new("config", b"other".to_vec()).await.unwrap());
        assert_eq!(&backend.get("config").await.unwrap()[..], b"{\"x\":1}");
    }

    /// A local repository's create-only put is atomic and never replaces.
    #[tokio::test]
    async fn local_put_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(
            &Location::Local(dir.path().join("repo")),
            &StoreOptions::default(),
            true,
        )
        .unwrap();
        assert!(backend.put_new("keys/a", b"one".to_vec()).await.unwrap());
        assert!(!backend.put_new("keys/a", b"two".to_vec()).await.unwrap());
        assert_eq!(&backend.get("keys/a").await.unwrap()[..], b"one");
        // Nothing is left in the staging directory.
        assert_eq!(
            std::fs::read_dir(dir.path().join("repo/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    /// Without any credential source, a repository in an object store says what to set (not
    /// a metadata service's error).
    #[test]
    fn object_stores_without_credentials_say_what_to_set() {
        let any = |prefix: &str| {
            std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with(prefix))
                || std::env::var_os("SNAPCRYPT_AMBIENT_CREDENTIALS").is_some()
                || std::env::var_os("SNAPCRYPT_S3_INSTANCE_CREDENTIALS").is_some()
        };
        for (repo, env_prefix, says) in [
            (
                "s3://b/p",
                "AWS_",
                "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the job's credentialsSecret",
            ),
            (
                "gs://b/p",
                "GOOGLE_",
                "no GCS credentials: set GOOGLE_APPLICATION_CREDENTIALS",
            ),
            (
                "az://c/p",
                "AZURE_",
                "no Azure credentials: set AZURE_STORAGE_ACCOUNT_NAME with",
            ),
        ] {
            if any(env_prefix) {
                continue; // the environment provides credentials: covered by tests/
            }
            let e = Backend::open(
                &Location::parse(repo).unwrap(),
                &StoreOptions::default(),
                false,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(says), "{repo}: {e}");
            assert!(e.starts_with(&format!("repository {repo}: ")), "{e}");
        }
    }
}
