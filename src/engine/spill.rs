//! External sort of fixed-width records by their bytes, in a memory budget: what lets a
//! restore join a snapshot's chunks with the index, and order them by pack, with memory that
//! does not grow with the data (docs/REPOSITORY.md, "Memory").
//!
//! Written here rather than taken from a crate: the one external-sort crate (`extsort`) pulls
//! items from an iterator and encodes each through a trait of its own, where our producers push
//! (index objects as they arrive, file-list entries as they are parsed) and a record laid out
//! big-endian, key first, needs no encoding to sort: its bytes are its order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::PathBuf;

/// Runs merged at once; more are first merged into longer runs, so a merge never holds more
/// than this many read buffers.
const FAN_IN: usize = 64;
/// Read buffer of each run while merging.
const RUN_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("scratch space in {dir} (set TMPDIR to a directory with room): {source}")]
pub struct SpillError {
    pub dir: String,
    #[source]
    pub source: std::io::Error,
}

/// Records of `N` bytes, sorted by their bytes. Held in memory up to the budget; past it,
/// sorted runs go to unnamed scratch files (removed by the system when closed, crash or not)
/// and are merged back.
pub struct Sorter<const N: usize> {
    buf: Vec<[u8; N]>,
    cap: usize,
    runs: Vec<File>,
    dir: PathBuf,
    len: u64,
}

impl<const N: usize> Sorter<N> {
    /// A sorter holding at most `budget` bytes of records in memory, spilling into `dir`.
    pub fn new(dir: PathBuf, budget: usize) -> Self {
        Sorter {
            buf: Vec::new(),
            cap: (budget / N).max(1024),
            runs: Vec::new(),
            dir,
            len: 0,
        }
    }

    /// A sorter spilling into the system's scratch directory (`TMPDIR`; agent pods mount an
    /// emptyDir there).
    pub fn in_temp_dir(budget: usize) -> Self {
        Self::new(std::env::temp_dir(), budget)
    }

    /// Records pushed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Scratch files written so far (for tests of the memory design).
    pub fn spilled_runs(&self) -> usize {
        self.runs.len()
    }

    pub fn push(&mut self, rec: [u8; N]) -> Result<(), SpillError> {
        if self.buf.len() >= self.cap {
            self.spill()?;
        }
        // Grown by doubling up to the budget, then allocated at exactly the budget (doubling
        // past it would overshoot by up to half).
        if self.buf.len() == self.buf.capacity() {
            let more = self.buf.capacity().max(1024).min(self.cap - self.buf.len());
            self.buf.reserve_exact(more);
        }
        self.buf.push(rec);
        self.len += 1;
        Ok(())
    }

    fn err(&self) -> impl Fn(std::io::Error) -> SpillError + '_ {
        |source| SpillError {
            dir: self.dir.display().to_string(),
            source,
        }
    }

    fn spill(&mut self) -> Result<(), SpillError> {
        self.buf.sort_unstable();
        let mut f = tempfile::tempfile_in(&self.dir).map_err(self.err())?;
        f.write_all(self.buf.as_flattened()).map_err(self.err())?;
        f.rewind().map_err(self.err())?;
        self.runs.push(f);
        self.buf.clear();
        Ok(())
    }

    /// Every record pushed, in order.
    pub fn finish(mut self) -> Result<Sorted<N>, SpillError> {
        if self.runs.is_empty() {
            self.buf.sort_unstable();
            return Ok(Sorted::Memory(std::mem::take(&mut self.buf).into_iter()));
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        self.buf = Vec::new();
        while self.runs.len() > FAN_IN {
            let group: Vec<File> = self.runs.drain(..FAN_IN).collect();
            let mut out = BufWriter::with_capacity(
                RUN_BUFFER,
                tempfile::tempfile_in(&self.dir).map_err(self.err())?,
            );
            for rec in Merge::<N>::new(group, self.dir.clone()) {
                out.write_all(&rec?).map_err(self.err())?;
            }
            let mut f = out.into_inner().map_err(|e| (self.err())(e.into_error()))?;
            f.rewind().map_err(self.err())?;
            self.runs.push(f);
        }
        Ok(Sorted::Merge(Merge::new(
            std::mem::take(&mut self.runs),
            self.dir.clone(),
        )))
    }
}

/// Sorted records, from memory or merged from scratch files.
pub enum Sorted<const N: usize> {
    Memory(std::vec::IntoIter<[u8; N]>),
    Merge(Merge<N>),
}

impl<const N: usize> Iterator for Sorted<N> {
    type Item = Result<[u8; N], SpillError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Memory(it) => it.next().map(Ok),
            Sorted::Merge(m) => m.next(),
        }
    }
}

/// A k-way merge of sorted runs.
pub struct Merge<const N: usize> {
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<([u8; N], usize)>>,
    dir: PathBuf,
    started: bool,
}

impl<const N: usize> Merge<N> {
    fn new(runs: Vec<File>, dir: PathBuf) -> Self {
        Merge {
            readers: runs
                .into_iter()
                .map(|f| BufReader::with_capacity(RUN_BUFFER, f))
                .collect(),
            heap: BinaryHeap::new(),
            dir,
            started: false,
        }
    }

    /// The next record of run `i` onto the heap, if it has one.
    fn refill(&mut self, i: usize) -> Result<(), SpillError> {
        let mut rec = [0u8; N];
        match self.readers[i].read_exact(&mut rec) {
            Ok(()) => {
                self.heap.push(Reverse((rec, i)));
                Ok(())
            }
            // Runs are whole records, written by us: the end of one is the end of the run.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
            Err(source) => Err(SpillError {
                dir: self.dir.display().to_string(),
                source,
            }),
        }
    }
}

impl<const N: usize> Iterator for Merge<N> {
    type Item = Result<[u8; N], SpillError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            for i in 0..self.readers.len() {
                if let Err(e) = self.refill(i) {
                    return Some(Err(e));
                }
            }
        }
        let Reverse((rec, i)) = self.heap.pop()?;
        match self.refill(i) {
            Ok(()) => Some(Ok(rec)),
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u32, seed: u32) -> Vec<[u8; 8]> {
        (0..n)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) ^ seed).to_be_bytes();
                let mut r = [0u8; 8];
                r[..4].copy_from_slice(&x);
                r[4..].copy_from_slice(&i.to_be_bytes());
                r
            })
            .collect()
    }

    #[test]
    fn small_inputs_sort_in_memory_and_large_ones_through_merged_runs() {
        let dir = tempfile::tempdir().unwrap();
        for (n, runs) in [(0, 0), (1000, 0), (200_000, 195)] {
            let mut s = Sorter::<8>::new(dir.path().into(), 8 * 1024);
            let input = records(n, 7);
            for r in &input {
                s.push(*r).unwrap();
            }
            assert_eq!(s.len(), u64::from(n));
            assert_eq!(s.spilled_runs(), runs, "{n} records");
            let got: Vec<[u8; 8]> = s.finish().unwrap().map(|r| r.unwrap()).collect();
            let mut want = input;
            want.sort_unstable();
            assert_eq!(got, want, "{n} records");
        }
        // Nothing is left in the scratch directory: the runs were unnamed files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_scratch_directory_that_is_not_there_is_named_in_the_error() {
        let mut s = Sorter::<8>::new("/nonexistent/scratch".into(), 0);
        let e = (0..2000)
            .try_for_each(|i| s.push([i as u8; 8]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/scratch") && e.contains("TMPDIR"),
            "{e}"
        );
    }
}
