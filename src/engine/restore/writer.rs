//! Writing restored data into the target files. Writes that continue each other in one file
//! are joined into one run of up to 512 KiB (chunks of a file sit mostly in order in its packs),
//! and a long run on 4 KiB boundaries is written with `O_DIRECT`, past the page cache.
//!
//! Why past the page cache: a restore writes each byte once and then syncs it, so caching it
//! buys nothing, and on the machines measured (bench/RESULTS.md) filling the page cache cost
//! more than the whole rest of a restore. It also keeps a restore pod's page cache, which its
//! cgroup is charged for, from growing with the data. Where the file system refuses
//! `O_DIRECT` (tmpfs, some FUSE and network file systems) or a run is not aligned (a file's
//! tail), the write goes through the page cache as before.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::target::Target;
use crate::engine::error::EngineError;
use crate::engine::format::TreeEntry;
use rustix::fs::OFlags;

/// `O_DIRECT` needs the buffer, the file offset and the length aligned to the file system's
/// logical block size; 4 KiB covers every common one.
const ALIGN: usize = 4096;

/// The longest run joined into one write (longer writes are split): small enough to stay in
/// the CPU's cache between the copy into it and the write (2 and 4 MiB runs were slower).
const RUN_MAX: usize = 512 * 1024;

/// Runs shorter than this go through the page cache even when aligned: a direct write waits
/// for the disk, and an incremental snapshot's changed chunks arrive one by one (16 KiB
/// writes scattered over the files), which the page cache gathers for the final sync.
const DIRECT_MIN: usize = 256 * 1024;

/// Descriptors kept open per writer before they are all closed.
const OPEN_MAX: usize = 256;

/// Bytes for one place of one file: what a reader joins and the file writer writes. The
/// bytes are `buf[start..start + len]`, `start` being the buffer's first 4 KiB boundary.
pub(super) struct Run {
    file: usize,
    offset: u64,
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Run {
    fn new() -> Self {
        let buf = vec![0u8; RUN_MAX + ALIGN];
        // A u8 pointer can always be aligned; should it ever not be, `start` is 0 and the
        // writer sees an unaligned buffer and writes it buffered.
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN) % ALIGN;
        Run {
            file: 0,
            offset: 0,
            buf,
            start,
            len: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// Runs in flight per reader: one being joined, one being written.
const RUNS: usize = 2;

/// The reader's side: joins writes that continue each other into runs and hands each full
/// run to its file writer (another thread), so decoding the next run overlaps writing this
/// one (a direct write waits for the disk).
pub(super) struct Runs {
    current: Run,
    to_writer: SyncSender<Run>,
    returned: Receiver<Run>,
    made: usize,
}

/// The writer has stopped (its error is what the restore reports).
fn writer_stopped() -> EngineError {
    EngineError::Worker("the restore's file writer stopped".into())
}

/// A reader's [`Runs`] and the [`FileWriter`] that writes them, connected.
pub(super) fn runs<'p>(files: Files<'p>, direct: bool) -> (Runs, FileWriter<'p>) {
    let (to_writer, from_reader) = sync_channel(RUNS);
    let (to_reader, returned) = sync_channel(RUNS);
    (
        Runs {
            current: Run::new(),
            to_writer,
            returned,
            made: 1,
        },
        FileWriter {
            target: files,
            files: HashMap::new(),
            direct,
            from_reader,
            to_reader,
        },
    )
}

impl Runs {
    /// Write `data` at `offset` of file `file` (an index into the paths).
    pub(super) fn write(
        &mut self,
        file: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), EngineError> {
        for (i, piece) in data.chunks(RUN_MAX).enumerate() {
            let offset = offset + (i * RUN_MAX) as u64;
            let c = &self.current;
            let continues = c.len > 0 && file == c.file && offset == c.offset + c.len as u64;
            if !continues || c.len + piece.len() > RUN_MAX {
                self.send()?;
                self.current.file = file;
                self.current.offset = offset;
            }
            let c = &mut self.current;
            let at = c.start + c.len;
            c.buf[at..at + piece.len()].copy_from_slice(piece);
            c.len += piece.len();
        }
        Ok(())
    }

    /// Hand the run joined so far to the writer, and take an empty one.
    fn send(&mut self) -> Result<(), EngineError> {
        if self.current.len == 0 {
            return Ok(());
        }
        let next = if self.made < RUNS {
            self.made += 1;
            Run::new()
        } else {
            self.returned.recv().map_err(|_| writer_stopped())?
        };
        let full = std::mem::replace(&mut self.current, next);
        self.to_writer.send(full).map_err(|_| writer_stopped())?;
        self.current.len = 0;
        Ok(())
    }

    /// Hand over the last run; the writer finishes once every reader's `Runs` is dropped.
    pub(super) fn finish(mut self) -> Result<(), EngineError> {
        self.send()
    }
}

/// A file of the target, opened once per writer: a direct descriptor when the file system
/// takes one, a buffered one when a write needs it.
#[derive(Default)]
struct TargetFile {
    direct: Option<File>,
    buffered: Option<File>,
}

/// The writing side, on its own thread: writes each run it is handed, and hands it back.
/// The target and its entries (a run's file is a position in the tree).
pub(super) type Files<'p> = (&'p Target, &'p [TreeEntry]);

pub(super) struct FileWriter<'p> {
    target: Files<'p>,
    files: HashMap<usize, TargetFile>,
    /// Direct writes are tried (cleared after the file system refuses one).
    direct: bool,
    from_reader: Receiver<Run>,
    to_reader: SyncSender<Run>,
}

impl FileWriter<'_> {
    /// Write runs until the reader is done (its `Runs` dropped).
    pub(super) fn run(mut self) -> Result<(), EngineError> {
        while let Ok(run) = self.from_reader.recv() {
            self.write_run(&run)?;
            // The reader may be done and gone: then the run is simply dropped.
            let _ = self.to_reader.try_send(run);
        }
        Ok(())
    }

    /// Write one run: its 4 KiB-aligned part direct when the file system takes it, the rest
    /// (an unaligned start or tail) buffered.
    fn write_run(&mut self, run: &Run) -> Result<(), EngineError> {
        let (data, offset) = (run.bytes(), run.offset);
        let (t, tree) = self.target;
        let rel = tree[run.file].path.as_str();
        let err = |e: std::io::Error| t.error(rel, e);
        if self.files.len() >= OPEN_MAX && !self.files.contains_key(&run.file) {
            self.files.clear();
        }
        let target = self.files.entry(run.file).or_default();
        let mut done = 0;
        let direct_len = data.len() / ALIGN * ALIGN;
        let aligned = data.as_ptr().align_offset(ALIGN) == 0 && offset % ALIGN as u64 == 0;
        if self.direct && aligned && direct_len >= DIRECT_MIN {
            if target.direct.is_none() {
                match t.root.open_at(
                    rel,
                    OFlags::WRONLY | OFlags::DIRECT,
                    rustix::fs::Mode::empty(),
                ) {
                    Ok(f) => target.direct = Some(File::from(f)),
                    // The file system does not take O_DIRECT: buffered from now on.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = false,
                    Err(e) => return Err(t.error(rel, e.reason())),
                }
            }
            if let Some(f) = &target.direct {
                match f.write_all_at(&data[..direct_len], offset) {
                    Ok(()) => done = direct_len,
                    // Refused for its alignment (a file system with larger blocks): the whole
                    // run again, buffered, and buffered from now on.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.direct = false;
                        target.direct = None;
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        }
        if done < data.len() {
            if target.buffered.is_none() {
                target.buffered = Some(t.open_made(run.file, rel, OFlags::WRONLY)?);
            }
            if let Some(f) = &target.buffered {
                f.write_all_at(&data[done..], offset + done as u64)
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(names: &[&str]) -> Vec<TreeEntry> {
        names
            .iter()
            .map(|n| TreeEntry {
                path: n.to_string(),
                kind: crate::engine::format::EntryKind::File,
                mode: 0o600,
                mtime_ns: 0,
                size: 0,
                target: None,
                inode: 0,
                chunks: Vec::new(),
                part: 0,
            })
            .collect()
    }

    /// Runs joined, split at 4 MiB, unaligned starts and tails, a chunk longer than a run,
    /// several files: the files hold exactly what was written, direct or not.
    fn writes_land(dir: &std::path::Path, direct: bool) {
        let tree = entries(&["f0", "f1", "f2"]);
        let paths: Vec<_> = tree.iter().map(|e| dir.join(&e.path)).collect();
        let sizes = [9 * 1024 * 1024 + 100, 20_000, 5 * 1024 * 1024];
        let mut want: Vec<Vec<u8>> = sizes.iter().map(|n| vec![0u8; *n]).collect();
        for (p, n) in paths.iter().zip(sizes) {
            File::create(p).unwrap().set_len(n as u64).unwrap();
        }
        let t = super::super::target::for_tests(dir, &tree);
        let (mut w, writer) = runs((&t, &tree), direct);
        std::thread::scope(|s| {
            let writing = s.spawn(|| writer.run());
            let mut put = |f: usize, off: usize, len: usize, seed: u8| {
                let data: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                    .collect();
                w.write(f, off as u64, &data).unwrap();
                want[f][off..off + len].copy_from_slice(&data);
            };
            // File 0: 16 KiB chunks in order past one run, then its unaligned tail.
            for c in 0..(9 * 64) {
                put(0, c * 16384, 16384, c as u8);
            }
            put(0, 9 * 1024 * 1024, 100, 7);
            // File 1: an unaligned start, then an aligned write.
            put(1, 3, 5000, 1);
            put(1, 8192, 8192, 2);
            // File 2: one write longer than a run, then chunks out of order.
            put(2, 0, RUN_MAX + 8192, 3);
            put(2, 4 * 1024 * 1024 + 16384, 16384, 4);
            put(2, 4 * 1024 * 1024 + 8192, 8192, 5);
            w.finish().unwrap();
            writing.join().unwrap().unwrap();
        });
        for (p, want) in paths.iter().zip(&want) {
            assert!(std::fs::read(p).unwrap() == *want, "{}", p.display());
        }
    }

    #[test]
    fn writes_land_direct_or_buffered() {
        // /var/tmp is a disk file system here (direct writes taken); /dev/shm is tmpfs
        // (O_DIRECT refused at open on older kernels, so the fallback runs).
        for base in ["/var/tmp", "/dev/shm"] {
            if !std::path::Path::new(base).is_dir() {
                continue;
            }
            for direct in [true, false] {
                let dir = tempfile::tempdir_in(base).unwrap();
                writes_land(dir.path(), direct);
            }
        }
    }

    /// A writer that fails (a file that cannot be opened) stops its reader with an error,
    /// not a hang.
    #[test]
    fn a_failed_writer_stops_its_reader() {
        let dir = tempfile::tempdir().unwrap();
        let tree = entries(&["missing/f"]);
        let t = super::super::target::for_tests(dir.path(), &tree);
        let (mut w, writer) = runs((&t, &tree), true);
        std::thread::scope(|s| {
            let writing = s.spawn(|| writer.run());
            let mut r = Ok(());
            for c in 0..64u64 {
                r = w.write(0, c * RUN_MAX as u64, &vec![1u8; RUN_MAX]);
                if r.is_err() {
                    break;
                }
            }
            let r = r.and_then(|()| w.finish());
            assert!(r.is_err());
            let e = writing.join().unwrap().unwrap_err().to_string();
            assert!(e.contains("missing/f"), "{e}");
        });
    }
}
