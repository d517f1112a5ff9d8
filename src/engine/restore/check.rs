//! Read a restored target back and compare it with the snapshot: every entry's kind, every
//! file's size, permission bits and the id of each of its chunks, every link's target. The
//! file list is streamed and one chunk is held at a time; each file's cached pages are dropped
//! first (it was synced), so what is compared is what the volume returns, not what the restore
//! left in memory. Nothing is followed through a link.

use std::fs::File;
use std::io::Read;

use rustix::fs::{FileType, OFlags};

use super::target::Target;
use crate::engine::crypto::DataKey;
use crate::engine::error::EngineError;
use crate::engine::format::{EntryKind, SnapshotManifest, TreeEntry};
use crate::engine::repo::{Index, Repository};

/// How many differences are named in the error (the count says how many in all).
const NAMED: usize = 5;

/// Compare `target` with snapshot `snap` (whose file-list blobs `index` locates). Blocks on
/// the store: call from a blocking context of a multi-threaded runtime.
pub fn check_restored(
    repo: &Repository,
    index: &Index,
    snap: &SnapshotManifest,
    target: &Target,
    handle: &tokio::runtime::Handle,
) -> Result<(), EngineError> {
    let hasher = repo.chunk_hasher()?;
    let chunk_size = repo.config.chunker.size as usize;
    let mut buf = vec![0u8; chunk_size];
    let mut differences: Vec<String> = Vec::new();
    let mut count = 0usize;
    // The file being read across the parts of its entry.
    let mut open: Option<File> = None;
    repo.for_each_tree_entry(index, snap, handle, |e| {
        let found = if e.part > 0 {
            match open.as_mut() {
                Some(f) => compare_chunks(f, &e, &hasher, &mut buf),
                None => Ok(()),
            }
        } else {
            open = None;
            check_entry(target, &e, &hasher, &mut buf, &mut open)
        };
        if let Err(why) = found {
            // A file that differs is reported once, not once per later part.
            open = None;
            count += 1;
            if differences.len() < NAMED {
                differences.push(format!("{}: {why}", shown(&e.path)));
            }
        }
        Ok(())
    })?;
    if count == 0 {
        return Ok(());
    }
    Err(target.error(
        "",
        format!(
            "read back after the restore, {count} entr{} differ from snapshot {}: {}",
            if count == 1 { "y" } else { "ies" },
            snap.id,
            differences.join("; ")
        ),
    ))
}

fn shown(path: &str) -> &str {
    if path.is_empty() { "." } else { path }
}

/// One entry against what the target holds at its path; a file's first chunks too (a file
/// listed in parts stays open in `open` for the rest).
fn check_entry(
    target: &Target,
    e: &TreeEntry,
    hasher: &DataKey,
    buf: &mut [u8],
    open: &mut Option<File>,
) -> Result<(), String> {
    let st = target
        .root
        .stat(&e.path)
        .map_err(|err| err.reason())?
        .ok_or("missing")?;
    let kind = FileType::from_raw_mode(st.st_mode);
    let want_mode = e.mode & 0o7777;
    let mode = st.st_mode & 0o7777;
    match e.kind {
        EntryKind::Dir if kind != FileType::Directory => return Err("not a directory".into()),
        EntryKind::Symlink => {
            if kind != FileType::Symlink {
                return Err("not a symbolic link".into());
            }
            let (parent, name) = target
                .root
                .open_parent(&e.path)
                .map_err(|err| err.reason())?;
            let link = rustix::fs::readlinkat(&parent, name, Vec::new())
                .map_err(|err| std::io::Error::from(err).to_string())?;
            let link = link.to_string_lossy();
            if Some(link.as_ref()) != e.target.as_deref() {
                return Err(format!(
                    "links to {link}, the snapshot has {}",
                    e.target.as_deref().unwrap_or("nothing")
                ));
            }
            return Ok(());
        }
        EntryKind::File if kind != FileType::RegularFile => {
            return Err("not a regular file".into());
        }
        _ => {}
    }
    // The root's own mode is the target's, not necessarily the snapshot's.
    if !e.path.is_empty() && mode != want_mode {
        return Err(format!("mode {mode:o}, the snapshot has {want_mode:o}"));
    }
    if e.kind != EntryKind::File {
        return Ok(());
    }
    if st.st_size as u64 != e.size {
        return Err(format!("{} bytes, the snapshot has {}", st.st_size, e.size));
    }
    let mut f = target
        .open(&e.path, OFlags::RDONLY)
        .map_err(|err| err.to_string())?;
    // Synced by the restore, so its pages are clean: dropping them makes the reads below come
    // from the volume. A hint: a failure only means a read from the cache.
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    compare_chunks(&mut f, e, hasher, buf)?;
    *open = Some(f);
    Ok(())
}

/// The next `e.chunks.len()` chunks of `f` have the ids `e.chunks` lists, and a file's end
/// comes with its last chunk.
fn compare_chunks(
    f: &mut File,
    e: &TreeEntry,
    hasher: &DataKey,
    buf: &mut [u8],
) -> Result<(), String> {
    for (n, want) in e.chunks.iter().enumerate() {
        let got = read_full(f, buf).map_err(|err| err.to_string())?;
        if got == 0 {
            return Err(format!("ends before chunk {n} of this part"));
        }
        if hasher.chunk_id(&buf[..got]) != *want {
            return Err(format!(
                "chunk {n} of this part (part {}) does not match the snapshot",
                e.part
            ));
        }
    }
    Ok(())
}

/// Read until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}
