//! The target directory: refused or cleared before anything is written, laid out, and
//! finished (sizes checked, modes and times set, files synced, symlinks last). Nothing is ever
//! written through a link: every open refuses to follow one, and a planted link is replaced.

use std::collections::HashMap;
use std::fs::{FileTimes, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{INCOMPLETE_MARKER, RestoreOptions};
use crate::engine::EngineError;
use crate::engine::format::{EntryKind, TreeEntry};

fn target_error(target: &Path) -> impl Fn(String) -> EngineError + '_ {
    move |reason| EngineError::Target {
        path: target.display().to_string(),
        reason,
    }
}

/// Refuse a target that is not a directory, or is not empty without `force`, or holds what
/// the snapshot does not (unless `delete_extra`: then remove it); create it, and leave the
/// incomplete marker in it. The marker's path.
pub(super) fn prepare(
    target: &Path,
    tree: &[TreeEntry],
    opts: &RestoreOptions,
) -> Result<PathBuf, EngineError> {
    let terr = target_error(target);
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
        let extra = extra_entries(target, tree)?;
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
    Ok(marker)
}

/// Make every directory and every file (at full length) of the snapshot; symlinks come last
/// ([`finish`]), so nothing is ever written through one. Every parent was made a real
/// directory before its children. The path of each entry.
pub(super) fn lay_out(target: &Path, tree: &[TreeEntry]) -> Result<Vec<PathBuf>, EngineError> {
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
                reserve(&f, e.size).map_err(err)?;
            }
            EntryKind::Symlink => {}
        }
    }

    Ok(paths)
}

/// Allocate a file's blocks before it is written: one allocation of contiguous extents, not
/// one per write run (which, on a nearly full file system, is where a restore's time went),
/// and a target without room fails here, before any data is written. File systems that cannot
/// (`EOPNOTSUPP`) are written as before.
fn reserve(f: &std::fs::File, size: u64) -> std::io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::NOSPC => Err(std::io::Error::other(format!(
            "no room for its {size} bytes: the target's file system is too small for the snapshot"
        ))),
        Err(_) => Ok(()),
    }
}

/// Check sizes, then set modes and mtimes and sync: files first; then symlinks; then the
/// marker goes; directories deepest first. Each file is on disk before the restore says it
/// is done. Calls `file_done` per file.
pub(super) fn finish(
    tree: &[TreeEntry],
    paths: &[PathBuf],
    marker: &Path,
    file_done: impl Fn(),
) -> Result<(), EngineError> {
    for (e, p) in tree.iter().zip(paths) {
        if e.kind != EntryKind::File {
            continue;
        }
        set_meta(e, p)?;
        file_done();
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
    std::fs::remove_file(marker).map_err(|e| target_error(marker)(e.to_string()))?;
    for (e, p) in tree.iter().zip(paths).rev() {
        if e.kind == EntryKind::Dir {
            set_meta(e, p)?;
        }
    }
    Ok(())
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

/// Open flags that refuse to follow a symlink in the last component.
pub(super) fn no_follow() -> OpenOptions {
    no_follow_flags(0)
}

/// [`no_follow`] with more open flags.
pub(super) fn no_follow_flags(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW | flags);
    o
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
    // The target directory itself may belong to someone else (a volume's root is root's,
    // and the restore runs as mongod's user): then its own times and mode stay as they are.
    // Everything inside it the restore created, and gets the snapshot's.
    let not_ours =
        |x: &std::io::Error| e.path.is_empty() && x.kind() == std::io::ErrorKind::PermissionDenied;
    let times = FileTimes::new()
        .set_modified(system_time(e.mtime_ns))
        .set_accessed(system_time(e.mtime_ns));
    match f.set_times(times) {
        Err(x) if !not_ours(&x) => return Err(err(x)),
        _ => {}
    }
    match f.set_permissions(std::fs::Permissions::from_mode(e.mode)) {
        Err(x) if !not_ours(&x) => return Err(err(x)),
        _ => {}
    }
    f.sync_all().map_err(err)?;
    Ok(())
}
