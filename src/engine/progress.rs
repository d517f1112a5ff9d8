//! Progress of a backup or restore: counters the workers bump, and snapshots of them (with rate
//! and ETA) that the CLI prints and the snapshot pod reports into status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// Shared counters.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    pub bytes_total: AtomicU64,
    pub files_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub files_done: AtomicU64,
    /// Backup: chunks that were not their parent's at the same offset, so were looked up
    /// among the chunks the backup stored lately (and stored if new). Not in reports.
    pub chunks_looked_up: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            bytes_total: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            chunks_looked_up: AtomicU64::new(0),
        }
    }
}

/// One reading of the counters.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ProgressReport {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub files_total: u64,
    pub percent: f64,
    pub bytes_per_second: u64,
    pub eta_seconds: Option<u64>,
    pub elapsed_seconds: f64,
}

impl Progress {
    pub fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_file(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_totals(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
    }

    /// Read the counters, with rate and ETA.
    pub fn report(&self) -> ProgressReport {
        let bytes_done = self.bytes_done.load(Ordering::Relaxed);
        let bytes_total = self.bytes_total.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            (bytes_done as f64 / elapsed) as u64
        } else {
            0
        };
        let eta_seconds =
            (rate > 0 && bytes_total >= bytes_done).then(|| (bytes_total - bytes_done) / rate);
        ProgressReport {
            bytes_done,
            bytes_total,
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            percent: if bytes_total > 0 {
                (bytes_done as f64 * 100.0 / bytes_total as f64).min(100.0)
            } else {
                0.0
            },
            bytes_per_second: rate,
            eta_seconds,
            elapsed_seconds: elapsed,
        }
    }
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl ProgressReport {
    /// One short line: `42% 1.2 GiB/2.9 GiB 3/10 files 120.0 MiB/s ETA 14s`.
    pub fn summary(&self) -> String {
        let eta = self
            .eta_seconds
            .map(|s| format!(" ETA {s}s"))
            .unwrap_or_default();
        format!(
            "{:.0}% {}/{} {}/{} files {}/s{eta}",
            self.percent,
            human_bytes(self.bytes_done),
            human_bytes(self.bytes_total),
            self.files_done,
            self.files_total,
            human_bytes(self.bytes_per_second)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_and_summary() {
        let p = Progress::default();
        p.set_totals(10, 2048);
        p.add_bytes(1024);
        p.add_file();
        let r = p.report();
        assert_eq!(r.percent, 50.0);
        assert!(
            r.summary().starts_with("50% 1.0 KiB/2.0 KiB 1/10 files"),
            "{}",
            r.summary()
        );
        assert_eq!(human_bytes(5), "5 B");
    }
}
