//! Durable writes into a local repository (what a PVC is): object_store's LocalFileSystem
//! renames without syncing, so after a node crash a snapshot could name packs whose bytes
//! never reached the disk. Every object here is synced, renamed into place, and its directory
//! synced before the write returns.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::BackendError;

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Sync a directory, so a rename or a new entry in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Create the directories of `dest` below `root`, syncing each parent of a new one.
fn make_parents(root: &Path, dest: &Path) -> Result<(), BackendError> {
    let Some(parent) = dest.parent() else {
        return Ok(());
    };
    if parent.is_dir() {
        return Ok(());
    }
    if parent != root {
        make_parents(root, parent)?;
    }
    match std::fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io(parent)(e)),
    }
    if let Some(grand) = parent.parent() {
        sync_dir(grand)?;
    }
    Ok(())
}

/// Write `data` as object `name`; with `create_only`, only if none exists (false if one
/// did), atomically (no replacing rename).
pub fn put(
    root: &Path,
    staging: &Path,
    name: &str,
    data: &[u8],
    create_only: bool,
) -> Result<bool, BackendError> {
    let dest = root.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix("put-")
        .tempfile_in(staging)
        .map_err(io(staging))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(io(tmp.path()))?;
    make_parents(root, &dest)?;
    let created = if create_only {
        match tmp.persist_noclobber(&dest) {
            Ok(_) => true,
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io(&dest)(e.error)),
        }
    } else {
        tmp.persist(&dest).map_err(|e| io(&dest)(e.error))?;
        true
    };
    if let Some(dir) = dest.parent() {
        sync_dir(dir)?;
    }
    Ok(created)
}

/// Move a finished staged pack into place as `name`, durably.
pub fn commit(root: &Path, staged: &Path, name: &str) -> Result<(), BackendError> {
    File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(io(staged))?;
    let dest = root.join(name);
    make_parents(root, &dest)?;
    std::fs::rename(staged, &dest).map_err(io(&dest))?;
    if let Some(dir) = dest.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// The writes of a local repository through its backend.
impl super::Backend {
    /// `put` and `put_new` of a local repository, durable (see `put`).
    pub(super) async fn local_put(
        &self,
        name: &str,
        data: Vec<u8>,
        create_only: bool,
    ) -> Result<bool, super::BackendError> {
        let Some(root) = self.local_root.clone() else {
            return Err(super::BackendError::BadLocation {
                repo: self.display.clone(),
                reason: "not a local repository".into(),
            });
        };
        let staging = self.staging_dir()?.to_path_buf();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || put(&root, &staging, &name, &data, create_only))
            .await
            .map_err(|e| super::BackendError::Io {
                path: "(writer thread)".into(),
                source: std::io::Error::other(e.to_string()),
            })?
    }
}
