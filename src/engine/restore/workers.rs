//! The readers: every core takes a pack, reads the span of it the restore needs in one
//! request, opens and checks each blob (authentication and chunk id) and writes it to every
//! place it belongs.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::plan::PackReads;
use super::target::no_follow;
use crate::engine::EngineError;
use crate::engine::format::pack_object_name;
use crate::engine::progress::Progress;
use crate::engine::repo::{Index, Repository};

/// Read every pack of `jobs` and write its blobs into the files at `paths`, on `threads`
/// threads.
pub(super) fn read_packs(
    repo: &Repository,
    index: &Index,
    jobs: &[PackReads],
    paths: &[PathBuf],
    progress: &Progress,
    threads: usize,
) -> Result<(), EngineError> {
    let handle = tokio::runtime::Handle::current();
    let cursor = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = threads.max(1);
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
    results.into_iter().collect()
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
