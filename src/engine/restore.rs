//! Restore: read each needed pack once, open and check every blob (authentication and chunk
//! id), and write it to every place it belongs, on all cores; then set modes and mtimes.

use std::collections::HashMap;
use std::fs::{File, FileTimes, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::EngineError;
use super::crypto::ChunkId;
use super::format::{EntryKind, SnapshotManifest, TreeEntry, pack_object_name};
use super::progress::Progress;
use super::repo::{BlobLoc, Repository};

/// Left in the target while a restore runs; its presence means the restore did not finish.
pub const INCOMPLETE_MARKER: &str = ".snapcrypt-restore-incomplete";

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Write into a non-empty target.
    pub force: bool,
    pub threads: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            force: false,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreStats {
    pub snapshot: String,
    pub files: u64,
    pub bytes: u64,
}

fn system_time(ns: i128) -> SystemTime {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs() as u64)
            + Duration::from_nanos(u64::from(nanos))
    }
}

/// Where one chunk goes: file index and offset.
type Targets = Vec<(usize, u64)>;

/// Restore snapshot `snap` into `target`.
pub async fn restore(
    repo: &Repository,
    snap: &SnapshotManifest,
    target: &Path,
    opts: RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreStats, EngineError> {
    let terr = |reason: String| EngineError::Target {
        path: target.display().to_string(),
        reason,
    };
    if target.exists() {
        if !target.is_dir() {
            return Err(terr("exists and is not a directory".into()));
        }
        // An ext4 volume's root holds lost+found from birth: a fresh PVC counts as empty.
        let non_empty = std::fs::read_dir(target)
            .map_err(|e| terr(e.to_string()))?
            .filter_map(Result::ok)
            .any(|e| e.file_name() != "lost+found");
        if non_empty && !opts.force {
            return Err(terr(
                "is not empty: nothing was written (use --force to restore into it anyway)".into(),
            ));
        }
    }
    std::fs::create_dir_all(target).map_err(|e| terr(e.to_string()))?;
    let marker = target.join(INCOMPLETE_MARKER);
    File::create(&marker).map_err(|e| terr(e.to_string()))?;

    let index = repo.load_index().await?;
    let tree = repo.load_tree(&index, snap).await?;
    let total: u64 = tree
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.size)
        .sum();
    let files = tree.iter().filter(|e| e.kind == EntryKind::File).count() as u64;
    progress.set_totals(files, total);

    // Lay out directories, files (at full length) and symlinks.
    let paths: Vec<PathBuf> = tree.iter().map(|e| target.join(&e.path)).collect();
    for (e, p) in tree.iter().zip(&paths) {
        let err = |x: std::io::Error| EngineError::Target {
            path: p.display().to_string(),
            reason: x.to_string(),
        };
        match e.kind {
            EntryKind::Dir => std::fs::create_dir_all(p).map_err(err)?,
            EntryKind::File => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(p)
                    .map_err(err)?;
                f.set_len(e.size).map_err(err)?;
            }
            EntryKind::Symlink => {
                if p.symlink_metadata().is_ok() {
                    std::fs::remove_file(p).map_err(err)?;
                }
                std::os::unix::fs::symlink(e.target.as_deref().unwrap_or(""), p).map_err(err)?;
                let t = filetime_of(e.mtime_ns);
                filetime::set_symlink_file_times(p, t, t).map_err(err)?;
            }
        }
    }

    // Where every chunk goes, grouped by pack.
    let mut wanted: HashMap<ChunkId, Targets> = HashMap::new();
    for (i, e) in tree.iter().enumerate() {
        if e.kind != EntryKind::File {
            continue;
        }
        let mut off = 0u64;
        for id in &e.chunks {
            let loc = index.blobs.get(id).ok_or_else(|| EngineError::Corrupt {
                object: format!("snapshots/{}", snap.id),
                reason: format!(
                    "{} needs blob {}, which no index has",
                    e.path,
                    hex::encode(id)
                ),
            })?;
            wanted.entry(*id).or_default().push((i, off));
            off += u64::from(loc.entry.raw_len);
        }
        if off != e.size {
            return Err(EngineError::Corrupt {
                object: format!("snapshots/{}", snap.id),
                reason: format!(
                    "{}: chunks add up to {off} bytes, the file has {}",
                    e.path, e.size
                ),
            });
        }
    }
    let mut by_pack: HashMap<u32, Vec<(BlobLoc, Targets)>> = HashMap::new();
    for (id, targets) in wanted {
        let loc = index.blobs[&id];
        by_pack.entry(loc.pack).or_default().push((loc, targets));
    }
    let mut jobs: Vec<(u32, Vec<(BlobLoc, Targets)>)> = by_pack.into_iter().collect();
    jobs.sort_by_key(|j| j.0);
    for (_, blobs) in &mut jobs {
        blobs.sort_by_key(|b| b.0.entry.offset);
    }

    let handle = tokio::runtime::Handle::current();
    let cursor = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = opts.threads.max(1);
    let index = &index;
    let paths = &paths;
    let jobs = &jobs;
    let progress = &progress;
    let results: Vec<Result<(), EngineError>> = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let handle = handle.clone();
                    let (cursor, failed) = (&cursor, &failed);
                    s.spawn(move || {
                        let mut files: HashMap<usize, File> = HashMap::new();
                        let mut scratch = Vec::new();
                        let r = (|| {
                            loop {
                                if failed.load(Ordering::Relaxed) {
                                    return Ok(());
                                }
                                let j = cursor.fetch_add(1, Ordering::Relaxed);
                                let Some((pack, blobs)) = jobs.get(j) else {
                                    return Ok(());
                                };
                                let info = &index.packs[*pack as usize];
                                let first = u64::from(blobs[0].0.entry.offset);
                                let last = blobs
                                    .iter()
                                    .map(|b| {
                                        u64::from(b.0.entry.offset)
                                            + u64::from(b.0.entry.stored_len)
                                    })
                                    .max()
                                    .unwrap_or(first);
                                let bytes = handle.block_on(repo.backend.get_range(
                                    &pack_object_name(&info.id),
                                    first,
                                    last - first,
                                ))?;
                                // Owned, so blobs are decrypted in place.
                                let mut bytes: Vec<u8> = bytes.into();
                                let mut writer = CoalescingWriter::default();
                                for (loc, targets) in blobs {
                                    let start = (u64::from(loc.entry.offset) - first) as usize;
                                    let end = start + loc.entry.stored_len as usize;
                                    let sealed = bytes.get_mut(start..end).ok_or_else(|| {
                                        EngineError::Corrupt {
                                            object: pack_object_name(&info.id),
                                            reason: "shorter than its index says".into(),
                                        }
                                    })?;
                                    let plain =
                                        repo.open_blob_in_place(index, loc, sealed, &mut scratch)?;
                                    for (fi, off) in targets {
                                        writer.write(&mut files, paths, *fi, *off, plain)?;
                                        progress.add_bytes(plain.len() as u64);
                                    }
                                }
                                writer.flush(&mut files, paths)?;
                            }
                        })();
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EngineError::Worker("restore worker panicked".into()))
                    })
                })
                .collect()
        })
    });
    for r in results {
        r?;
    }

    // Check sizes, then modes and mtimes: files first, directories deepest first.
    for (e, p) in tree.iter().zip(paths) {
        if e.kind != EntryKind::File {
            continue;
        }
        set_meta(e, p)?;
        progress.add_file();
    }
    std::fs::remove_file(&marker).map_err(|e| terr(e.to_string()))?;
    for (e, p) in tree.iter().zip(paths).rev() {
        if e.kind == EntryKind::Dir {
            set_meta(e, p)?;
        }
    }
    Ok(RestoreStats {
        snapshot: snap.id.clone(),
        files,
        bytes: total,
    })
}

/// Joins writes that continue each other in one file into one `pwrite` (chunks of a file sit
/// mostly in order in its packs), so a GiB is not 65,536 system calls.
#[derive(Default)]
struct CoalescingWriter {
    file: usize,
    offset: u64,
    buf: Vec<u8>,
}

const COALESCE_MAX: usize = 4 * 1024 * 1024;

impl CoalescingWriter {
    fn write(
        &mut self,
        files: &mut HashMap<usize, File>,
        paths: &[PathBuf],
        file: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), EngineError> {
        let continues = !self.buf.is_empty()
            && file == self.file
            && offset == self.offset + self.buf.len() as u64;
        if !continues || self.buf.len() + data.len() > COALESCE_MAX {
            self.flush(files, paths)?;
            self.file = file;
            self.offset = offset;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush(
        &mut self,
        files: &mut HashMap<usize, File>,
        paths: &[PathBuf],
    ) -> Result<(), EngineError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = &paths[self.file];
        let err = |e: std::io::Error| EngineError::Target {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if files.len() > 256 {
            files.clear();
        }
        let f = match files.entry(self.file) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(OpenOptions::new().write(true).open(path).map_err(err)?)
            }
        };
        f.write_all_at(&self.buf, self.offset).map_err(err)?;
        self.buf.clear();
        Ok(())
    }
}

fn filetime_of(ns: i128) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(
        ns.div_euclid(1_000_000_000) as i64,
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

fn set_meta(e: &TreeEntry, p: &Path) -> Result<(), EngineError> {
    let err = |x: std::io::Error| EngineError::Target {
        path: p.display().to_string(),
        reason: x.to_string(),
    };
    if e.kind == EntryKind::File {
        let len = std::fs::metadata(p).map_err(err)?.len();
        if len != e.size {
            return Err(EngineError::Target {
                path: p.display().to_string(),
                reason: format!("restored {len} bytes, snapshot has {}", e.size),
            });
        }
    }
    // Times first: the file or directory is still readable by us before its mode is applied.
    let f = File::open(p).map_err(err)?;
    f.set_times(
        FileTimes::new()
            .set_modified(system_time(e.mtime_ns))
            .set_accessed(system_time(e.mtime_ns)),
    )
    .map_err(err)?;
    drop(f);
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(e.mode)).map_err(err)?;
    Ok(())
}
