//! The scan: walk a source directory (never following links) into the entries a backup
//! copies, and open each scanned file safely again when it is read.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::engine::EngineError;
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
    pub target: Option<String>,
}

/// What a scan found.
#[derive(Debug)]
pub struct Scan {
    pub root: PathBuf,
    pub entries: Vec<ScanEntry>,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// What is not backed up, each with why: sockets, FIFOs, devices, a root lost+found.
    pub skipped: Vec<String>,
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Walk `root` (not following symlinks), in sorted order. Refuses, before anything is written,
/// a missing or unreadable source and one with `max_files` files or more.
pub fn scan(root: &Path, max_files: u64) -> Result<Scan, EngineError> {
    let err = |p: &Path, e: std::io::Error| EngineError::Source {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(root).map_err(|e| err(root, e))?;
    if !meta.is_dir() {
        return Err(EngineError::Source {
            path: root.display().to_string(),
            reason: "not a directory".into(),
        });
    }
    let root = &root.canonicalize().map_err(|e| err(root, e))?;
    let mut scan = Scan {
        root: root.to_path_buf(),
        entries: Vec::new(),
        files: 0,
        dirs: 0,
        bytes: 0,
        skipped: Vec::new(),
    };
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let m = std::fs::symlink_metadata(&dir).map_err(|e| err(&dir, e))?;
        scan.entries.push(ScanEntry {
            rel: rel.clone(),
            abs: dir.clone(),
            kind: EntryKind::Dir,
            mode: m.mode() & 0o7777,
            mtime_ns: mtime_ns(&m),
            size: 0,
            inode: m.ino(),
            target: None,
        });
        scan.dirs += 1;
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| err(&dir, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| err(&dir, e))?;
        children.sort();
        let mut subdirs = Vec::new();
        for path in children {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = std::fs::symlink_metadata(&path).map_err(|e| err(&path, e))?;
            let ft = m.file_type();
            // A data volume's root on ext4 holds lost+found (root's, mode 0700, unreadable by
            // mongod's user): filesystem bookkeeping, not data.
            if ft.is_dir() && child_rel == "lost+found" {
                scan.skipped
                    .push(format!("{child_rel}: filesystem bookkeeping, not data"));
                continue;
            }
            if ft.is_dir() {
                subdirs.push((path, child_rel));
                continue;
            }
            let (kind, target) = if ft.is_file() {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| err(&path, e))?;
                scan.files += 1;
                scan.bytes += m.len();
                if scan.files >= max_files {
                    return Err(EngineError::TooManyFiles {
                        path: root.display().to_string(),
                        count: count_files(root),
                        max: max_files,
                    });
                }
                (EntryKind::File, None)
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&path).map_err(|e| err(&path, e))?;
                (EntryKind::Symlink, Some(t.to_string_lossy().into_owned()))
            } else {
                scan.skipped.push(format!(
                    "{child_rel}: not a regular file, directory or symlink"
                ));
                continue;
            };
            scan.entries.push(ScanEntry {
                rel: child_rel,
                abs: path,
                kind,
                mode: m.mode() & 0o7777,
                mtime_ns: mtime_ns(&m),
                size: if kind == EntryKind::File { m.len() } else { 0 },
                inode: m.ino(),
                target,
            });
        }
        // Reverse so that popping visits subdirectories in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(scan)
}

/// Count regular files under `root` (for the too-many-files message).
fn count_files(root: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// Open a scanned file for reading without following a symlink, and check it is the file the
/// scan saw (same inode, still a regular file): a path swapped for a link after the scan (to a
/// key file, say) is never read.
pub(super) fn open_scanned(entry: &ScanEntry) -> Result<File, EngineError> {
    let err = |reason: String| EngineError::Source {
        path: entry.abs.display().to_string(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&entry.abs)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                err(
                    "became a symbolic link after the scan: not followed, no snapshot was written"
                        .into(),
                )
            } else {
                err(e.to_string())
            }
        })?;
    let m = file.metadata().map_err(|e| err(e.to_string()))?;
    if !m.is_file() || m.ino() != entry.inode {
        return Err(err(format!(
            "was replaced after the scan (inode {}, scanned {}): a consistent copy needs a quiesced source; no snapshot was written",
            m.ino(),
            entry.inode
        )));
    }
    Ok(file)
}
