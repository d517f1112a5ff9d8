//! The scan: walk a source directory from descriptors (never following links, never leaving
//! it: `engine/beneath.rs`) into the entries a backup copies, and open each scanned file
//! safely again, beneath the same root, when it is read.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::engine::beneath::{BeneathError, FileId, Root, file_id, name_str, read_names};
use crate::engine::error::EngineError;
use crate::engine::format::EntryKind;

/// One entry found by the scan.
#[derive(Clone, Debug)]
pub struct ScanEntry {
    pub rel: String,
    pub abs: PathBuf,
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime_ns: i128,
    pub size: u64,
    pub inode: u64,
    /// The device it was on (with the inode, its identity).
    pub dev: u64,
    pub target: Option<String>,
}

/// What a scan found.
#[derive(Debug)]
pub struct Scan {
    pub root: PathBuf,
    /// The source's directory, opened once: every read is beneath it.
    pub dir: Root,
    pub entries: Vec<ScanEntry>,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// What is not backed up, each with why: sockets, FIFOs, devices, a root lost+found.
    pub skipped: Vec<String>,
}

fn mtime_ns(m: &Stat) -> i128 {
    i128::from(m.st_mtime) * 1_000_000_000 + i128::from(m.st_mtime_nsec)
}

/// Walk `root` (not following symlinks), in sorted order: every directory opened from its
/// parent's descriptor (beneath the root, no link followed at any depth, no other file
/// system entered) and checked to be the directory its parent listed (device and inode), so
/// a directory swapped for a link or another directory during the scan fails the backup
/// naming it, and nothing outside the source is ever listed or read. With `within`, `root`
/// itself must lie beneath it (a volume's mount) and no part of it below `within` may be a
/// link. Refuses, before anything is written, a missing or unreadable source and one with
/// `max_files` files or more.
pub fn scan(root: &Path, within: Option<&Path>, max_files: u64) -> Result<Scan, EngineError> {
    scan_with(root, within, max_files, &mut |_| {})
}

/// [`scan`], calling `before_dir` with each directory's relative path just before it is
/// opened (a directory listed, then changed before it is read: the hostile-tree tests swap
/// it there).
pub fn scan_with(
    root: &Path,
    within: Option<&Path>,
    max_files: u64,
    before_dir: &mut dyn FnMut(&str),
) -> Result<Scan, EngineError> {
    let dir = open_source(root, within)?;
    let mut scan = Scan {
        // The root's own name, as the snapshot records it (its parent's identity follows it).
        root: std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
        dir,
        entries: Vec::new(),
        files: 0,
        dirs: 0,
        bytes: 0,
        skipped: Vec::new(),
    };
    let mut stack = vec![(String::new(), scan.dir.id())];
    while let Some((rel, id)) = stack.pop() {
        if !rel.is_empty() {
            before_dir(&rel);
        }
        let subdirs = scan.directory(&rel, id, max_files)?;
        // Reverse so that popping visits subdirectories in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(scan)
}

/// Open the source: beneath `within` when given (no link below it), else the user's path.
fn open_source(root: &Path, within: Option<&Path>) -> Result<Root, EngineError> {
    let from = |e: BeneathError| EngineError::Source {
        path: e.path().to_string(),
        reason: match e.io_kind() {
            Some(std::io::ErrorKind::NotADirectory) => "not a directory".into(),
            _ => e.reason(),
        },
    };
    match within {
        Some(within) => Root::open_within(within, root, false).map_err(|e| match e {
            BeneathError::Io { .. } => from(e),
            refused => EngineError::Source {
                path: root.display().to_string(),
                reason: format!(
                    "lies outside the data volume mounted at {}, or reaches it through a link ({refused}): refused, nothing was read",
                    within.display()
                ),
            },
        }),
        None => Root::open(root).map_err(from),
    }
}

impl Scan {
    /// `rel` shown under the source (for messages and `ScanEntry::abs`).
    fn abs(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn source_error(&self, rel: &str, e: impl Into<std::io::Error>) -> EngineError {
        EngineError::Source {
            path: self.abs(rel).display().to_string(),
            reason: e.into().to_string(),
        }
    }

    /// Open directory `rel` from the root's descriptor, check it is the directory its parent
    /// listed (`id`), record it and its children; its subdirectories, sorted, with the
    /// identity each was listed with.
    fn directory(
        &mut self,
        rel: &str,
        id: FileId,
        max_files: u64,
    ) -> Result<Vec<(String, FileId)>, EngineError> {
        let fd = self
            .dir
            .open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| EngineError::Source {
                path: e.path().to_string(),
                reason: e.reason(),
            })?;
        let m = rustix::fs::fstat(&fd).map_err(|e| self.source_error(rel, e))?;
        if file_id(&m) != id {
            return Err(swapped(&self.abs(rel), "directory"));
        }
        self.entries.push(ScanEntry {
            rel: rel.to_string(),
            abs: self.abs(rel),
            kind: EntryKind::Dir,
            mode: m.st_mode & 0o7777,
            mtime_ns: mtime_ns(&m),
            size: 0,
            inode: m.st_ino,
            dev: m.st_dev,
            target: None,
        });
        self.dirs += 1;
        let mut children = read_names(fd.as_fd()).map_err(|e| self.source_error(rel, e))?;
        children.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, _) in children {
            let name_s = name_str(&name);
            if name_s.as_bytes() != name.as_slice() {
                let shown = self.abs(rel).join(&name_s);
                self.skipped.push(format!(
                    "{}: its name is not UTF-8 (not backed up)",
                    shown.display()
                ));
                continue;
            }
            let child = if rel.is_empty() {
                name_s
            } else {
                format!("{rel}/{name_s}")
            };
            if let Some(sub) = self.child(fd.as_fd(), &name, child, max_files)? {
                subdirs.push(sub);
            }
        }
        Ok(subdirs)
    }

    /// Record entry `name` of the directory open at `fd` (path `rel`), never following it; a
    /// subdirectory is returned instead, with its identity, to be scanned in turn.
    fn child(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        name: &[u8],
        rel: String,
        max_files: u64,
    ) -> Result<Option<(String, FileId)>, EngineError> {
        let m = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.source_error(&rel, e))?;
        let (kind, target) = match FileType::from_raw_mode(m.st_mode) {
            // A data volume's root on ext4 holds lost+found (root's, mode 0700, unreadable by
            // mongod's user): filesystem bookkeeping, not data.
            FileType::Directory if rel == "lost+found" => {
                self.skipped
                    .push(format!("{rel}: filesystem bookkeeping, not data"));
                return Ok(None);
            }
            FileType::Directory => return Ok(Some((rel, file_id(&m)))),
            FileType::RegularFile => {
                // Readable now, through its parent's descriptor, never through a link.
                let f = rustix::fs::openat(
                    fd,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.source_error(&rel, e))?;
                let opened = rustix::fs::fstat(&f).map_err(|e| self.source_error(&rel, e))?;
                if file_id(&opened) != file_id(&m) {
                    return Err(swapped(&self.abs(&rel), "file"));
                }
                self.files += 1;
                self.bytes += m.st_size as u64;
                if self.files >= max_files {
                    return Err(EngineError::TooManyFiles {
                        path: self.root.display().to_string(),
                        count: count_files(&self.dir),
                        max: max_files,
                    });
                }
                (EntryKind::File, None)
            }
            FileType::Symlink => {
                let t = rustix::fs::readlinkat(fd, name, Vec::new())
                    .map_err(|e| self.source_error(&rel, e))?;
                (EntryKind::Symlink, Some(t.to_string_lossy().into_owned()))
            }
            _ => {
                self.skipped
                    .push(format!("{rel}: not a regular file, directory or symlink"));
                return Ok(None);
            }
        };
        self.entries.push(ScanEntry {
            abs: self.abs(&rel),
            rel,
            kind,
            mode: m.st_mode & 0o7777,
            mtime_ns: mtime_ns(&m),
            size: if kind == EntryKind::File {
                m.st_size as u64
            } else {
                0
            },
            inode: m.st_ino,
            dev: m.st_dev,
            target,
        });
        Ok(None)
    }
}

/// The error for an entry replaced during the backup.
fn swapped(path: &Path, what: &str) -> EngineError {
    EngineError::Source {
        path: path.display().to_string(),
        reason: format!(
            "was replaced by another {what} or a link while it was backed up: nothing outside the source was read and no snapshot was written; a consistent copy needs a quiesced source (spec.source.consistency)"
        ),
    }
}

/// Count regular files under the root (for the too-many-files message), from descriptors.
fn count_files(root: &Root) -> u64 {
    let mut n = 0;
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let Ok(fd) = root.open_at(&rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) else {
            continue;
        };
        let Ok(names) = read_names(fd.as_fd()) else {
            continue;
        };
        for (name, _) in names {
            let Ok(m) = rustix::fs::statat(&fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            match FileType::from_raw_mode(m.st_mode) {
                FileType::Directory => stack.push(if rel.is_empty() {
                    name_str(&name)
                } else {
                    format!("{rel}/{}", name_str(&name))
                }),
                FileType::RegularFile => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// Open a scanned file for reading beneath the source's root (no link followed at any
/// depth), and check it is the file the scan saw (same device and inode, still a regular
/// file): a path swapped for a link after the scan (to a key file, say) is never read.
pub(super) fn open_scanned(root: &Root, entry: &ScanEntry) -> Result<File, EngineError> {
    let err = |reason: String| EngineError::Source {
        path: entry.abs.display().to_string(),
        reason,
    };
    let file = root
        .open_at(
            &entry.rel,
            OFlags::RDONLY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| match e {
            BeneathError::Link { path } => {
                let what = if path == entry.abs.display().to_string() {
                    String::new()
                } else {
                    format!(" (its directory {path})")
                };
                err(format!(
                    "became a symbolic link after the scan{what}: not followed, no snapshot was written"
                ))
            }
            other => err(other.reason()),
        })?;
    let m = rustix::fs::fstat(&file).map_err(|e| err(std::io::Error::from(e).to_string()))?;
    if FileType::from_raw_mode(m.st_mode) != FileType::RegularFile
        || file_id(&m) != (entry.dev, entry.inode)
    {
        return Err(err(format!(
            "was replaced after the scan (inode {}, scanned {}): a consistent copy needs a quiesced source; no snapshot was written",
            m.st_ino, entry.inode
        )));
    }
    Ok(file)
}
