//! Restore: read each needed pack once, open and check every blob (authentication and chunk
//! id), and write it to every place it belongs, on all cores; then set modes and mtimes.

use std::collections::{HashMap, HashSet};
use std::fs::{File, FileTimes, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::EngineError;
use super::crypto::ChunkId;
use super::format::{EntryKind, SnapshotManifest, TreeEntry, pack_object_name};
use super::lock::{RepoLock, lock_wait};
use super::progress::Progress;
use super::repo::{BlobLoc, Repository};

/// Left in the target while a restore runs; its presence means the restore did not finish.
pub const INCOMPLETE_MARKER: &str = ".snapcrypt-restore-incomplete";

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Write into a non-empty target.
    pub force: bool,
    /// With `force`, remove what the target holds that the snapshot does not (else such a
    /// target is refused, naming what is extra).
    pub delete_extra: bool,
    pub threads: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            force: false,
            delete_extra: false,
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
    /// Set when the repository could not be locked (read-only to this reader), with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_without_lock: Option<String>,
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

/// Open flags that refuse to follow a symlink in the last component.
fn no_follow() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW);
    o
}

/// Check a snapshot's file list before anything is written: every path relative, made of
/// plain names (no `..`, `.`, empty or absolute parts), listed once, under a directory listed
/// before it. A repository is untrusted input: a path that could leave the target, or pass
/// through a symlink the restore creates, is refused.
pub fn check_tree(tree: &[TreeEntry], snapshot: &str) -> Result<(), EngineError> {
    let bad = |path: &str, reason: &str| EngineError::Corrupt {
        object: format!("snapshots/{snapshot}"),
        reason: format!("file list entry {path:?}: {reason}; nothing was written"),
    };
    let mut dirs: HashSet<&str> = HashSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, e) in tree.iter().enumerate() {
        if i == 0 {
            if !e.path.is_empty() || e.kind != EntryKind::Dir {
                return Err(bad(&e.path, "the first entry must be the root directory"));
            }
            dirs.insert("");
            seen.insert("");
            continue;
        }
        if e.path.is_empty()
            || e.path.contains('\0')
            || e.path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad(&e.path, "not a plain relative path"));
        }
        if !seen.insert(&e.path) {
            return Err(bad(&e.path, "listed twice"));
        }
        let parent = e.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        if !dirs.contains(parent) {
            return Err(bad(
                &e.path,
                "its parent is not a directory listed before it",
            ));
        }
        if e.kind == EntryKind::Dir {
            dirs.insert(&e.path);
        }
    }
    Ok(())
}

/// What the target holds that the snapshot does not (or holds as another kind), as paths
/// relative to the target, sorted; symlinks the restore will replace are not counted. Walks
/// without following links.
fn extra_entries(target: &Path, tree: &[TreeEntry]) -> Result<Vec<String>, EngineError> {
    let kinds: HashMap<&str, EntryKind> = tree.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    let mut extra = Vec::new();
    let mut stack = vec![(target.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| EngineError::Target {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        for entry in rd {
            let entry = entry.map_err(|e| EngineError::Target {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if rel.is_empty() && (name == "lost+found" || name == INCOMPLETE_MARKER) {
                continue;
            }
            let ft = entry.file_type().map_err(|e| EngineError::Target {
                path: entry.path().display().to_string(),
                reason: e.to_string(),
            })?;
            match kinds.get(child.as_str()) {
                _ if ft.is_symlink() => {
                    if !kinds.contains_key(child.as_str()) {
                        extra.push(child);
                    }
                }
                Some(EntryKind::Dir) if ft.is_dir() => stack.push((entry.path(), child)),
                Some(EntryKind::File) if ft.is_file() => {}
                _ => extra.push(child),
            }
        }
    }
    extra.sort();
    Ok(extra)
}

/// Remove whatever is at `p` unless it is a real directory (a symlink, a file), without
/// following links.
fn clear_for_dir(p: &Path) -> std::io::Result<()> {
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove a symlink at `p` (the restore never writes through one).
fn clear_link(p: &Path) -> std::io::Result<()> {
    match p.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(p),
        _ => Ok(()),
    }
}

/// Restore snapshot `snap` into `target`. Holds a shared repository lock while it reads, so
/// no prune removes what it needs; a repository it cannot write to is read without one (the
/// deletion grace protects it then), and the stats say so.
pub async fn restore(
    repo: &Repository,
    snap: &SnapshotManifest,
    target: &Path,
    opts: RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreStats, EngineError> {
    let (lock, unlocked) =
        RepoLock::acquire_reader(&repo.backend, lock_wait(Duration::from_secs(600))).await?;
    let result = run_restore(repo, snap, target, opts, progress).await;
    if let Some(lock) = lock {
        lock.release().await?;
    }
    result.map(|stats| RestoreStats {
        read_without_lock: unlocked,
        ..stats
    })
}

async fn run_restore(
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
    let index = repo.load_index().await?;
    let tree = repo.load_tree(&index, snap).await?;
    check_tree(&tree, &snap.id)?;
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
        // Files the snapshot does not have would be left beside restored ones (an old journal
        // next to restored collections, which mongod would recover from as a mixture).
        let extra = extra_entries(target, &tree)?;
        if !extra.is_empty() {
            if !opts.delete_extra {
                let shown: Vec<&str> = extra.iter().take(10).map(String::as_str).collect();
                return Err(terr(format!(
                    "holds {} entr{} the snapshot does not have ({}{}): nothing was written; remove them, or pass --delete-extra to have the restore remove them",
                    extra.len(),
                    if extra.len() == 1 { "y" } else { "ies" },
                    shown.join(", "),
                    if extra.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    }
                )));
            }
            for rel in &extra {
                let p = target.join(rel);
                let r = match p.symlink_metadata() {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                    Ok(_) => std::fs::remove_file(&p),
                    Err(_) => Ok(()),
                };
                r.map_err(|e| terr(format!("removing {rel}: {e}")))?;
            }
        }
    }
    std::fs::create_dir_all(target).map_err(|e| terr(e.to_string()))?;
    let marker = target.join(INCOMPLETE_MARKER);
    clear_link(&marker).map_err(|e| terr(e.to_string()))?;
    no_follow()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&marker)
        .map_err(|e| terr(e.to_string()))?;

    let total: u64 = tree
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.size)
        .sum();
    let files = tree.iter().filter(|e| e.kind == EntryKind::File).count() as u64;
    progress.set_totals(files, total);

    // Lay out directories and files (at full length); symlinks come last, so nothing is ever
    // written through one. Every parent was made a real directory before its children.
    let paths: Vec<PathBuf> = tree.iter().map(|e| target.join(&e.path)).collect();
    for (e, p) in tree.iter().zip(&paths) {
        let err = |x: std::io::Error| EngineError::Target {
            path: p.display().to_string(),
            reason: x.to_string(),
        };
        match e.kind {
            // The target itself (the user's own path, made above).
            EntryKind::Dir if e.path.is_empty() => {}
            EntryKind::Dir => {
                clear_for_dir(p).map_err(err)?;
                match std::fs::create_dir(p) {
                    Ok(()) => {}
                    Err(x) if x.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(x) => return Err(err(x)),
                }
            }
            EntryKind::File => {
                clear_link(p).map_err(err)?;
                let f = no_follow()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(err)?;
                f.set_len(e.size).map_err(err)?;
            }
            EntryKind::Symlink => {}
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

    // Check sizes, then modes and mtimes, and sync: files first; then symlinks; directories
    // deepest first. Each file is on disk before the restore says it is done.
    for (e, p) in tree.iter().zip(paths) {
        if e.kind != EntryKind::File {
            continue;
        }
        set_meta(e, p)?;
        progress.add_file();
    }
    for (e, p) in tree.iter().zip(paths) {
        if e.kind != EntryKind::Symlink {
            continue;
        }
        let err = |x: std::io::Error| EngineError::Target {
            path: p.display().to_string(),
            reason: x.to_string(),
        };
        clear_link(p).map_err(err)?;
        std::os::unix::fs::symlink(e.target.as_deref().unwrap_or(""), p).map_err(err)?;
        let t = filetime_of(e.mtime_ns);
        filetime::set_symlink_file_times(p, t, t).map_err(err)?;
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
        read_without_lock: None,
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
                v.insert(no_follow().write(true).open(path).map_err(err)?)
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

/// Check a restored file's size, set its times and mode, and sync it (a directory: times,
/// mode, sync). Through a descriptor opened without following links.
fn set_meta(e: &TreeEntry, p: &Path) -> Result<(), EngineError> {
    let err = |x: std::io::Error| EngineError::Target {
        path: p.display().to_string(),
        reason: x.to_string(),
    };
    let mut open = OpenOptions::new();
    open.read(true);
    // The target itself is the user's own path (it may be a link they made); below it,
    // nothing is followed.
    let follow = if e.path.is_empty() {
        0
    } else {
        libc::O_NOFOLLOW
    };
    if e.kind == EntryKind::Dir {
        open.custom_flags(follow | libc::O_DIRECTORY);
    } else {
        open.custom_flags(follow);
    }
    let f = open.open(p).map_err(err)?;
    if e.kind == EntryKind::File {
        let len = f.metadata().map_err(err)?.len();
        if len != e.size {
            return Err(EngineError::Target {
                path: p.display().to_string(),
                reason: format!("restored {len} bytes, snapshot has {}", e.size),
            });
        }
    }
    f.set_times(
        FileTimes::new()
            .set_modified(system_time(e.mtime_ns))
            .set_accessed(system_time(e.mtime_ns)),
    )
    .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(e.mode))
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime_ns: 0,
            size: 0,
            target: (kind == EntryKind::Symlink).then(|| "/etc/passwd".into()),
            inode: 0,
            chunks: vec![],
        }
    }

    /// Item 3 of the data-safety issue: a file list from the repository is untrusted; paths
    /// that could leave the target or pass through a link are refused before anything is
    /// written.
    #[test]
    fn item03_hostile_file_lists_are_refused() {
        use EntryKind::{Dir, File, Symlink};
        let ok = [vec![("", Dir), ("a", Dir), ("a/b", File), ("l", Symlink)]];
        for t in ok {
            let tree: Vec<_> = t.iter().map(|(p, k)| entry(p, *k)).collect();
            check_tree(&tree, "s").unwrap();
        }
        let bad: [(&[(&str, EntryKind)], &str); 9] = [
            (&[("", Dir), ("../x", File)], "plain relative"),
            (&[("", Dir), ("/etc/passwd", File)], "plain relative"),
            (
                &[("", Dir), ("a", Dir), ("a/../../x", File)],
                "plain relative",
            ),
            (&[("", Dir), ("./x", File)], "plain relative"),
            (&[("", Dir), ("a//b", File)], "plain relative"),
            (
                &[("", Dir), ("l", Symlink), ("l/passwd", File)],
                "parent is not a directory",
            ),
            (&[("", Dir), ("x/y", File)], "parent is not a directory"),
            (&[("", Dir), ("x", File), ("x", File)], "listed twice"),
            (&[("x", File)], "root directory"),
        ];
        for (t, why) in bad {
            let tree: Vec<_> = t.iter().map(|(p, k)| entry(p, *k)).collect();
            let e = check_tree(&tree, "s").unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("nothing was written"),
                "{t:?}: {e}"
            );
        }
    }
}
