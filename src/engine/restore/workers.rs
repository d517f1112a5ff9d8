//! The readers: every core takes a pack, reads the spans of it the restore needs (a few MiB
//! per request), opens and checks each blob (authentication and chunk id) and writes it to
//! every place it belongs.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use super::plan::{PLACE, Placement};
use super::writer::{Runs, runs};
use crate::engine::error::EngineError;
use crate::engine::format::pack_object_name;
use crate::engine::progress::Progress;
use crate::engine::repo::{Index, Repository};
use crate::engine::spill::Sorted;

/// The most of a pack read in one request from a local repository: a span small enough to
/// be decrypted, decompressed and hashed while the read has left it in the CPU's cache.
/// Measured on the 1 GiB benchmark (2 cores): 8 MiB spans took 0.60 s of CPU, 1 MiB 0.38 s;
/// 512 KiB spent the gain again in system calls.
const SPAN_MAX_LOCAL: u64 = 1024 * 1024;

/// The same for an object store, where every request costs a round trip.
const SPAN_MAX_REMOTE: u64 = 8 * 1024 * 1024;

/// Needed blobs further apart than this are read in separate requests, not through the gap.
const GAP_MAX: u64 = 256 * 1024;

/// Placements handed to a reader at once: one pack's, or part of one (a pack is split when a
/// blob goes to very many places, so a batch stays small).
const BATCH: usize = 4096;

/// Read every pack the placements (sorted by pack and offset) name and write its blobs into
/// the target's `files`, on `threads` threads: a feeder reads the sorted placements and hands
/// them out a pack at a time.
pub(super) fn read_packs(
    repo: &Repository,
    index: &Index,
    placements: Sorted<PLACE>,
    chunk_size: u32,
    files: super::writer::Files<'_>,
    progress: &Progress,
    threads: usize,
) -> Result<(), EngineError> {
    let failed = AtomicBool::new(false);
    // Two more readers than cores: a core is not left idle while a reader waits for the
    // store or for its file writer (measured: 2 readers 0.72 s, 3 0.61 s, 4 0.58 s for the
    // 1 GiB benchmark on 2 cores).
    let readers = threads.max(1) + 2;
    let reader = &Reader {
        repo,
        index,
        handle: tokio::runtime::Handle::current(),
        span_max: if repo.backend.is_local() {
            SPAN_MAX_LOCAL
        } else {
            SPAN_MAX_REMOTE
        },
        progress,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Placement>>(readers);
    // The receiver goes with the last reader, so a feeder never waits on readers that left.
    let rx = Arc::new(Mutex::new(rx));
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let failed = &failed;
            let feeding = s.spawn(move || feed(placements, chunk_size, &tx, failed));
            let hs: Vec<_> = (0..readers)
                .map(|_| {
                    let rx = rx.clone();
                    // Each reader hands its runs to a file writer of its own.
                    let (mut runs, writer) = runs(files, true);
                    let writing = s.spawn(move || writer.run());
                    let reading = s.spawn(move || {
                        // The span read and a blob's plaintext: reused for every pack.
                        let (mut buf, mut scratch) = (Vec::new(), Vec::new());
                        let r = (|| {
                            while !failed.load(Ordering::Relaxed) {
                                let next = rx.lock().map(|rx| rx.recv());
                                let Ok(Ok(batch)) = next else { break };
                                read_pack(reader, &batch, &mut runs, (&mut buf, &mut scratch))?;
                            }
                            runs.finish()
                        })();
                        drop(rx);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        r
                    });
                    (reading, writing)
                })
                .collect();
            drop(rx);
            let panicked = |_| Err(EngineError::Worker("restore worker panicked".into()));
            let mut results: Vec<Result<(), EngineError>> = hs
                .into_iter()
                .map(|(reading, writing)| {
                    let read = reading.join().unwrap_or_else(panicked);
                    let written = writing.join().unwrap_or_else(panicked);
                    if written.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    // A writer's failure is the cause of its reader's "writer stopped".
                    written.and(read)
                })
                .collect();
            results.push(feeding.join().unwrap_or_else(panicked));
            results.into_iter().collect()
        })
    })
}

/// Hand out the sorted placements in batches of one pack (or part of one).
fn feed(
    placements: Sorted<PLACE>,
    chunk_size: u32,
    tx: &SyncSender<Vec<Placement>>,
    failed: &AtomicBool,
) -> Result<(), EngineError> {
    let mut batch: Vec<Placement> = Vec::new();
    for rec in placements {
        let p = Placement::decode(&rec?, chunk_size);
        if batch.first().is_some_and(|f| f.pack != p.pack) || batch.len() == BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(64));
            // Every reader left (one failed and says why): stop quietly.
            if failed.load(Ordering::Relaxed) || tx.send(full).is_err() {
                return Ok(());
            }
        }
        batch.push(p);
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    Ok(())
}

/// What every reader reads with.
struct Reader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    handle: tokio::runtime::Handle,
    span_max: u64,
    progress: &'a Progress,
}

/// One pack's share of the restore (its placements, in offset order): span by span, read,
/// open every blob once, write it wherever it goes.
fn read_pack(
    r: &Reader,
    placements: &[Placement],
    writer: &mut Runs,
    (buf, scratch): (&mut Vec<u8>, &mut Vec<u8>),
) -> Result<(), EngineError> {
    let Reader {
        repo,
        index,
        handle,
        span_max,
        progress,
    } = r;
    let Some(first) = placements.first() else {
        return Ok(());
    };
    let opener = repo.pack_blobs(index, first.pack)?;
    let name = pack_object_name(&index.packs[first.pack as usize].id);
    let bounds = |p: &Placement| {
        let start = u64::from(p.entry.offset);
        start..start + u64::from(p.entry.stored_len)
    };
    let spans = spans(placements.iter().map(bounds), *span_max);
    // The pack's needed bytes read ahead while the first spans are decoded: from a cold
    // cache, each span would otherwise wait for the disk in turn (a 16 GiB restore read its
    // repository at under half the disk's speed).
    if let (Some(first), Some(last)) = (spans.first(), spans.last()) {
        let start = bounds(&placements[first.start]).start;
        let end = placements[last.clone()]
            .iter()
            .map(|p| bounds(p).end)
            .max()
            .unwrap_or(start);
        repo.backend.prefetch(&name, start, end - start);
    }
    for span in spans {
        let span = &placements[span];
        let start = bounds(&span[0]).start;
        let end = span.iter().map(|p| bounds(p).end).max().unwrap_or(start);
        let bytes = repo
            .backend
            .read_range_into(handle, &name, start, end - start, buf)?;
        // Each blob once, then every place it goes (its placements are side by side).
        for same in span.chunk_by(|a, b| a.entry.offset == b.entry.offset) {
            let at = bounds(&same[0]);
            let sealed = bytes
                .get_mut((at.start - start) as usize..(at.end - start) as usize)
                .ok_or_else(|| EngineError::Corrupt {
                    object: name.clone(),
                    reason: "shorter than its index says".into(),
                })?;
            let plain = opener.open_in_place(&same[0].entry, sealed, scratch)?;
            for p in same {
                writer.write(p.file, p.offset, plain)?;
                progress.add_bytes(plain.len() as u64);
            }
        }
    }
    Ok(())
}

/// Split blobs (byte ranges of one pack, in offset order) into spans read with one request
/// each: at most `max` bytes (or one blob), and no gap wider than [`GAP_MAX`]. Pure.
fn spans(ranges: impl Iterator<Item = Range<u64>>, max: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut open: Option<(usize, u64, u64)> = None; // first blob, span start, span end
    let mut n = 0;
    for (i, r) in ranges.enumerate() {
        n = i + 1;
        open = match open {
            Some((s, start, end)) if r.start <= end + GAP_MAX && r.end - start <= max => {
                Some((s, start, end.max(r.end)))
            }
            Some((s, _, _)) => {
                out.push(s..i);
                Some((i, r.start, r.end))
            }
            None => Some((i, r.start, r.end)),
        };
    }
    if let Some((s, _, _)) = open {
        out.push(s..n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_bounded_and_skip_wide_gaps() {
        const K: u64 = 1024;
        let r = |a: u64, b: u64| a * K..b * K;
        // Adjacent blobs: one span until 4 MiB is reached.
        let adjacent: Vec<_> = (0..600).map(|i| r(16 * i, 16 * (i + 1))).collect();
        let s = spans(adjacent.iter().cloned(), 4 * K * K);
        assert_eq!(s, vec![0..256, 256..512, 512..600]);
        // A gap of more than 256 KiB starts a new span; a smaller one does not.
        let gapped = vec![r(0, 16), r(16 + 256, 288), r(288 + 257, 561)];
        assert_eq!(spans(gapped.into_iter(), 4 * K * K), vec![0..2, 2..3]);
        // A blob larger than a span is a span of its own.
        let big = vec![
            r(0, 16),
            r(16, 16 + 5 * 1024),
            r(16 + 5 * 1024, 5 * 1024 + 32),
        ];
        assert_eq!(spans(big.into_iter(), 4 * K * K), vec![0..1, 1..2, 2..3]);
        assert!(spans(std::iter::empty(), 4 * K * K).is_empty());
    }
}
