//! The target directory: refused or cleared before anything is written, laid out, and
//! finished (sizes checked, modes and times set, files synced, symlinks last).
//!
//! The target is hostile (whoever can write the claim, a compromised mongod during an
//! in-place restore, can plant links in it), so it is opened once as a [`Root`] and every
//! entry is reached from that descriptor without following any link (`engine/beneath.rs`).
//! A file already there is replaced, never written through: unlinked, then created with
//! `O_EXCL` (a hard link to a file outside the target stays untouched). A target that is the
//! repository, holds it, or lies inside it is refused before anything is written.

use std::collections::HashMap;
use std::fs::{File, FileTimes};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use super::{FixWords, INCOMPLETE_MARKER, RestoreOptions};
use crate::engine::beneath::{BeneathError, FileId, Root, file_id, name_str, read_names};
use crate::engine::error::EngineError;
use crate::engine::format::{EntryKind, TreeEntry};

/// The target opened as a root, and the identity (device, inode) of each file the restore
/// made, by position in the tree: every later open checks it still has the file it made, so
/// a file swapped in during the restore (a hard link to a file elsewhere on the volume) is
/// never written.
pub(super) struct Target {
    pub root: Root,
    made: Vec<FileId>,
    /// How a refusal names the setting that would let the restore go on.
    fix_words: FixWords,
}

impl Target {
    /// The error for entry path `rel`.
    pub(super) fn error(&self, rel: &str, reason: impl ToString) -> EngineError {
        EngineError::Target {
            path: self.root.show(rel),
            reason: reason.to_string(),
        }
    }

    fn beneath(&self, e: BeneathError) -> EngineError {
        EngineError::Target {
            path: e.path().to_string(),
            reason: e.reason(),
        }
    }

    /// Open entry `rel` beneath the target with `flags`, following no link and never
    /// blocking on a FIFO planted there.
    pub(super) fn open(&self, rel: &str, flags: OFlags) -> Result<File, EngineError> {
        self.root
            .open_at(rel, flags | OFlags::NONBLOCK, Mode::empty())
            .map(File::from)
            .map_err(|e| self.beneath(e))
    }

    /// Open the file the restore made for tree entry `i` (at `rel`) with `flags`, checked to
    /// be that file still.
    pub(super) fn open_made(
        &self,
        i: usize,
        rel: &str,
        flags: OFlags,
    ) -> Result<File, EngineError> {
        let f = self.open(rel, flags)?;
        self.check_made(i, rel, &f)?;
        Ok(f)
    }

    /// Check `f` (opened at `rel`) is the file the restore made for tree entry `i`.
    pub(super) fn check_made(&self, i: usize, rel: &str, f: &File) -> Result<(), EngineError> {
        let st = rustix::fs::fstat(f).map_err(|x| self.error(rel, std::io::Error::from(x)))?;
        if self.made.get(i) != Some(&file_id(&st)) {
            return Err(self.error(
                rel,
                "was replaced by something else while the restore wrote it (another process writes into the target): stopped; stop whatever writes there and restore again",
            ));
        }
        Ok(())
    }
}

/// A target at `dir` whose files (those of `tree` that exist) count as made, for unit tests.
#[cfg(test)]
pub(super) fn for_tests(dir: &Path, tree: &[TreeEntry]) -> Target {
    let made = tree
        .iter()
        .map(|e| {
            std::fs::symlink_metadata(dir.join(&e.path))
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino())
                })
                .unwrap_or((0, 0))
        })
        .collect();
    Target {
        root: Root::open(dir).expect("a test directory"),
        made,
        fix_words: FixWords::Flags,
    }
}

/// Open the target: beneath `opts.target_within` when given (the claim's mount in a restore
/// pod: no part of the target below it may be a link), else the user's own path. Missing
/// directories are made. Refused when it is not a directory, or overlaps `repo_dir`.
pub(super) fn open(
    target: &Path,
    opts: &RestoreOptions,
    repo_dir: Option<&Path>,
) -> Result<Target, EngineError> {
    let terr = |reason: String| EngineError::Target {
        path: target.display().to_string(),
        reason,
    };
    let from = |e: BeneathError| EngineError::Target {
        path: e.path().to_string(),
        reason: e.reason(),
    };
    let root = match &opts.target_within {
        Some(within) => Root::open_within(within, target, true).map_err(from)?,
        None => {
            match target.symlink_metadata() {
                Ok(m) if !m.is_dir() && !m.file_type().is_symlink() => {
                    return Err(terr("exists and is not a directory".into()));
                }
                _ => {}
            }
            std::fs::create_dir_all(target).map_err(|e| terr(e.to_string()))?;
            Root::open(target).map_err(|e| match e.io_kind() {
                Some(std::io::ErrorKind::NotADirectory) => {
                    terr("exists and is not a directory".into())
                }
                _ => from(e),
            })?
        }
    };
    if let Some(repo_dir) = repo_dir {
        // The repository's own directory, as the backend opened it.
        let repo = Root::open(repo_dir).map_err(from)?;
        if crate::engine::beneath::overlap(&root, &repo).map_err(from)? {
            return Err(terr(format!(
                "overlaps the repository at {} (one is the other or lies inside it): refused, nothing was written; restore into a directory outside the repository",
                repo_dir.display()
            )));
        }
    }
    Ok(Target {
        root,
        made: Vec::new(),
        fix_words: opts.fix_words,
    })
}

/// Refuse a target that is not empty without `force`, or holds what the snapshot does not
/// (unless `delete_extra`: then remove it, never following a link); leave the incomplete
/// marker in it.
pub(super) fn prepare(
    t: &Target,
    tree: &[TreeEntry],
    opts: &RestoreOptions,
) -> Result<(), EngineError> {
    let names = read_names(t.root.fd()).map_err(|e| t.error("", e))?;
    // An ext4 volume's root holds lost+found from birth: a fresh PVC counts as empty.
    let non_empty = names.iter().any(|(n, _)| n.as_slice() != b"lost+found");
    if non_empty && !opts.force {
        return Err(t.error(
            "",
            format!(
                "is not empty: nothing was written ({} to restore into it anyway)",
                t.fix_words.force()
            ),
        ));
    }
    if non_empty {
        // Files the snapshot does not have would be left beside restored ones (an old
        // journal next to restored collections, which mongod would recover from as a
        // mixture).
        let extra = extra_entries(t, tree)?;
        if !extra.is_empty() && !opts.delete_extra {
            let shown: Vec<&str> = extra.iter().take(10).map(String::as_str).collect();
            return Err(t.error(
                "",
                format!(
                    "holds {} entr{} the snapshot does not have ({}{}): nothing was written; remove them, or {} to have the restore remove them",
                    extra.len(),
                    if extra.len() == 1 { "y" } else { "ies" },
                    shown.join(", "),
                    if extra.len() > shown.len() { ", …" } else { "" },
                    t.fix_words.delete_extra()
                ),
            ));
        }
        for rel in &extra {
            t.root
                .remove_all(rel)
                .map_err(|e| t.error(rel, format!("removing it: {}", e.reason())))?;
        }
    }
    t.root
        .remove_all(INCOMPLETE_MARKER)
        .map_err(|e| t.beneath(e))?;
    create_new(t, INCOMPLETE_MARKER, 0o600)?;
    Ok(())
}

/// Create file `rel` anew (`O_EXCL`, never through a link or an existing file).
fn create_new(t: &Target, rel: &str, mode: u32) -> Result<File, EngineError> {
    t.root
        .open_at(
            rel,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(mode),
        )
        .map(File::from)
        .map_err(|e| t.beneath(e))
}

/// Make every directory and every file (at full length) of the snapshot; symlinks come last
/// ([`finish`]). A file already at an entry's path (a link, a file with other links) is
/// removed and created anew, so nothing outside the target is ever written.
pub(super) fn lay_out(t: &mut Target, tree: &[TreeEntry]) -> Result<(), EngineError> {
    t.made = vec![(0, 0); tree.len()];
    for (i, e) in tree.iter().enumerate() {
        let rel = e.path.as_str();
        match e.kind {
            // The target itself (opened above).
            EntryKind::Dir if rel.is_empty() => {}
            EntryKind::Dir => {
                let (parent, name) = t.root.open_parent(rel).map_err(|x| t.beneath(x))?;
                match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => unlink(t, &parent, name, rel)?,
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(x) => return Err(t.error(rel, std::io::Error::from(x))),
                }
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(x) => return Err(t.error(rel, std::io::Error::from(x))),
                }
            }
            EntryKind::File => {
                let (parent, name) = t.root.open_parent(rel).map_err(|x| t.beneath(x))?;
                unlink(t, &parent, name, rel)?;
                let f = create_new(t, rel, 0o600)?;
                let st =
                    rustix::fs::fstat(&f).map_err(|x| t.error(rel, std::io::Error::from(x)))?;
                t.made[i] = file_id(&st);
                f.set_len(e.size).map_err(|x| t.error(rel, x))?;
                reserve(&f, e.size).map_err(|x| t.error(rel, x))?;
            }
            EntryKind::Symlink => {}
        }
    }
    Ok(())
}

/// Remove a non-directory at `name` in `parent` (nothing there is fine).
fn unlink(
    t: &Target,
    parent: &std::os::fd::OwnedFd,
    name: &str,
    rel: &str,
) -> Result<(), EngineError> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(rustix::io::Errno::ISDIR) => Err(t.error(
            rel,
            format!(
                "is a directory where the snapshot has a file: nothing was written to it ({} to have the restore remove it)",
                t.fix_words.delete_extra()
            ),
        )),
        Err(x) => Err(t.error(rel, std::io::Error::from(x))),
    }
}

/// Allocate a file's blocks before it is written: one allocation of contiguous extents, not
/// one per write run (which, on a nearly full file system, is where a restore's time went),
/// and a target without room fails here, before any data is written. File systems that cannot
/// (`EOPNOTSUPP`) are written as before.
fn reserve(f: &File, size: u64) -> std::io::Result<()> {
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
    t: &Target,
    tree: &[TreeEntry],
    file_done: impl Fn(),
) -> Result<(), EngineError> {
    for (i, e) in tree.iter().enumerate() {
        if e.kind == EntryKind::File {
            set_meta(t, i, e)?;
            file_done();
        }
    }
    for e in tree.iter().filter(|e| e.kind == EntryKind::Symlink) {
        let rel = e.path.as_str();
        let (parent, name) = t.root.open_parent(rel).map_err(|x| t.beneath(x))?;
        unlink(t, &parent, name, rel)?;
        rustix::fs::symlinkat(e.target.as_deref().unwrap_or(""), &parent, name)
            .map_err(|x| t.error(rel, std::io::Error::from(x)))?;
        let ts = timespec(e.mtime_ns);
        let times = Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        rustix::fs::utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|x| t.error(rel, std::io::Error::from(x)))?;
    }
    t.root
        .remove_file(INCOMPLETE_MARKER)
        .map_err(|x| t.beneath(x))?;
    for (i, e) in tree.iter().enumerate().rev() {
        if e.kind == EntryKind::Dir {
            set_meta(t, i, e)?;
        }
    }
    Ok(())
}

/// Mark the target as a restore that did not finish (after a failed read-back). Best effort:
/// the error that called for it says it all.
pub(super) fn mark_incomplete(t: &Target) {
    let _ = t.root.remove_all(INCOMPLETE_MARKER);
    let _ = create_new(t, INCOMPLETE_MARKER, 0o600);
}

fn timespec(ns: i128) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as i64,
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
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

/// What the target holds that the snapshot does not (or holds as another kind), as paths
/// relative to the target, sorted; symlinks the restore will replace are not counted. Walks
/// from directory descriptors, without following links.
fn extra_entries(t: &Target, tree: &[TreeEntry]) -> Result<Vec<String>, EngineError> {
    let kinds: HashMap<&str, EntryKind> = tree.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    let mut extra = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = t
            .root
            .open_at(&rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| t.beneath(e))?;
        let names = read_names(dir.as_fd()).map_err(|e| t.error(&rel, e))?;
        for (name, _) in names {
            let name_s = name_str(&name);
            let child = if rel.is_empty() {
                name_s.clone()
            } else {
                format!("{rel}/{name_s}")
            };
            if rel.is_empty() && (name_s == "lost+found" || name_s == INCOMPLETE_MARKER) {
                continue;
            }
            let st = match rustix::fs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(x) => return Err(t.error(&child, std::io::Error::from(x))),
            };
            let ft = FileType::from_raw_mode(st.st_mode);
            match kinds.get(child.as_str()) {
                // A name that is not UTF-8 is never the snapshot's.
                _ if name_s.as_bytes() != name.as_slice() => extra.push(child),
                _ if ft == FileType::Symlink => {
                    if !kinds.contains_key(child.as_str()) {
                        extra.push(child);
                    }
                }
                Some(EntryKind::Dir) if ft == FileType::Directory => stack.push(child),
                Some(EntryKind::File) if ft == FileType::RegularFile => {}
                _ => extra.push(child),
            }
        }
    }
    extra.sort();
    Ok(extra)
}

/// Check a restored file's size, set its times and mode, and sync it (a directory: times,
/// mode, sync). Through a descriptor opened beneath the target, following no link.
fn set_meta(t: &Target, i: usize, e: &TreeEntry) -> Result<(), EngineError> {
    let rel = e.path.as_str();
    let f = if e.kind == EntryKind::Dir {
        t.open(rel, OFlags::RDONLY | OFlags::DIRECTORY)?
    } else {
        t.open_made(i, rel, OFlags::RDONLY)?
    };
    if e.kind == EntryKind::File {
        let len = f.metadata().map_err(|x| t.error(rel, x))?.len();
        if len != e.size {
            return Err(t.error(
                rel,
                format!("restored {len} bytes, snapshot has {}", e.size),
            ));
        }
    }
    // The target directory itself may belong to someone else (a volume's root is root's,
    // and the restore runs as mongod's user): then its own times and mode stay as they are.
    // Everything inside it the restore created, and gets the snapshot's.
    let not_ours =
        |x: &std::io::Error| rel.is_empty() && x.kind() == std::io::ErrorKind::PermissionDenied;
    let times = FileTimes::new()
        .set_modified(system_time(e.mtime_ns))
        .set_accessed(system_time(e.mtime_ns));
    match f.set_times(times) {
        Err(x) if !not_ours(&x) => return Err(t.error(rel, x)),
        _ => {}
    }
    match f.set_permissions(std::fs::Permissions::from_mode(e.mode)) {
        Err(x) if !not_ours(&x) => return Err(t.error(rel, x)),
        _ => {}
    }
    f.sync_all().map_err(|x| t.error(rel, x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory found where the snapshot has a file (a target changed under the restore)
    /// names what removes it in the reader's words: the flag, or the Restore's field. The
    /// Restore controller's old string rewrite missed this message (it said --delete-extra to
    /// a Restore's user).
    #[test]
    fn a_directory_in_a_files_place_names_the_fix_in_the_readers_words() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("x.wt")).expect("mkdir");
        let mut t = for_tests(dir.path(), &[]);
        let parent = t.root.fd().try_clone_to_owned().expect("fd");
        let flags = unlink(&t, &parent, "x.wt", "x.wt")
            .expect_err("refused")
            .to_string();
        assert!(
            flags.ends_with("(pass --delete-extra to have the restore remove it)"),
            "{flags}"
        );
        t.fix_words = FixWords::RestoreSpec;
        let fields = unlink(&t, &parent, "x.wt", "x.wt")
            .expect_err("refused")
            .to_string();
        assert!(
            fields.ends_with(
                "(set spec.target.deleteExtra (with force) to have the restore remove it)"
            ),
            "{fields}"
        );
    }
}
