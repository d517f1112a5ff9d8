//! Repository locks. Backups, restores and verifies take shared locks (any number at once);
//! prune takes an exclusive one. A lock is an object under `locks/` that its holder rewrites
//! every `stale_after / 4`.
//!
//! Staleness is judged on one clock only, the store's: a taker writes its own lock, lists
//! `locks/`, and a lock whose last write is more than `stale_after` older than the taker's own
//! write is stale and removed. No two hosts' clocks are compared.
//!
//! A holder is sure of its lock only while its last successful refresh started less than
//! `stale_after - margin` ago (its own monotonic clock): no taker can have judged it stale
//! before then. Past that point, or when a refresh finds the lock gone, the lock is *lost* for
//! good: a later successful write never makes it valid again (someone may already have acted on
//! its absence), and the holder must stop before its next commit point (`check`). See
//! docs/REPOSITORY.md, "Locks and deletion".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backend::{Backend, BackendError, SMALL_OBJECT_MAX};
use super::crypto::random_id;
use crate::engine::error::EngineError;

/// A lock whose last write is this much older than a taker's own write is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// `STALE_AFTER`, or `$SNAPCRYPT_LOCK_STALE_SECS` (for tests: every process that shares a
/// repository must use the same value).
pub fn stale_after() -> Duration {
    env_secs("SNAPCRYPT_LOCK_STALE_SECS").unwrap_or(STALE_AFTER)
}

fn env_secs(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct LockFile {
    exclusive: bool,
    hostname: String,
    pid: u32,
    /// Unix seconds of the last refresh by the holder's clock (information only: staleness is
    /// judged by the store's timestamps).
    refreshed: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long to wait for a conflicting lock: `$SNAPCRYPT_LOCK_WAIT_SECS`, else `default`.
pub fn lock_wait(default: Duration) -> Duration {
    env_secs("SNAPCRYPT_LOCK_WAIT_SECS").unwrap_or(default)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// What the holder knows of its lock.
#[derive(Debug)]
struct Held {
    /// When the last successful write of the lock started (holder's monotonic clock).
    last_ok: Instant,
    /// Why the lock is lost, once it is.
    lost: Option<String>,
}

/// The timing of a lock, fixed when it is taken.
#[derive(Clone, Copy, Debug)]
struct Timing {
    stale_after: Duration,
    refresh_every: Duration,
    /// The holder trusts its lock for `stale_after - margin` after a successful write.
    trusted_for: Duration,
}

impl Timing {
    fn now() -> Self {
        let stale_after = stale_after();
        Timing {
            stale_after,
            refresh_every: stale_after / 4,
            trusted_for: stale_after - stale_after / 6,
        }
    }
}

impl Held {
    /// Record the outcome of a write that started at `started`.
    fn refreshed(&mut self, started: Instant, timing: Timing) {
        if self.lost.is_some() {
            return;
        }
        if started.duration_since(self.last_ok) >= timing.trusted_for {
            self.lose(format!(
                "it was not refreshed for {} s (a lock is stale after {} s)",
                started.duration_since(self.last_ok).as_secs(),
                timing.stale_after.as_secs()
            ));
        } else {
            self.last_ok = started;
        }
    }

    fn lose(&mut self, why: String) {
        if self.lost.is_none() {
            tracing::warn!("repository lock lost: {why}");
            self.lost = Some(why);
        }
    }

    fn check(&mut self, now: Instant, timing: Timing) -> Result<(), String> {
        let idle = now.duration_since(self.last_ok);
        if idle >= timing.trusted_for {
            self.lose(format!(
                "it was not refreshed for {} s (a lock is stale after {} s)",
                idle.as_secs(),
                timing.stale_after.as_secs()
            ));
        }
        match &self.lost {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }
}

/// A held lock; released on `release` (or, if the process dies, it goes stale).
pub struct RepoLock {
    backend: Backend,
    name: String,
    held: Arc<Mutex<Held>>,
    timing: Timing,
    refresher: JoinHandle<()>,
}

impl RepoLock {
    /// Take a lock, waiting up to `wait` for conflicting locks to go away.
    pub async fn acquire(
        backend: &Backend,
        exclusive: bool,
        wait: Duration,
    ) -> Result<Self, EngineError> {
        let name = format!("locks/{}", hex::encode(&random_id()?[..16]));
        let me = LockFile {
            exclusive,
            hostname: hostname(),
            pid: std::process::id(),
            refreshed: unix_now(),
        };
        let timing = Timing::now();
        let deadline = Instant::now() + wait;
        let last_ok = loop {
            let started = Instant::now();
            backend.put(&name, serde_json::to_vec(&me)?).await?;
            match Self::conflict(backend, &name, exclusive, timing).await? {
                None => break started,
                Some(holder) => {
                    backend.delete(&name).await?;
                    if Instant::now() >= deadline {
                        return Err(EngineError::Locked {
                            holder,
                            stale_after_secs: timing.stale_after.as_secs(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let held = Arc::new(Mutex::new(Held {
            last_ok,
            lost: None,
        }));
        let refresher = tokio::spawn(refresh_loop(
            backend.clone(),
            name.clone(),
            me,
            held.clone(),
            timing,
        ));
        Ok(RepoLock {
            backend: backend.clone(),
            name,
            held,
            timing,
            refresher,
        })
    }

    /// A shared lock for a reader (restore, verify). A repository the reader cannot write to
    /// (a read-only mount) is read without one: `None`, with the reason; the deletion grace
    /// period (docs/REPOSITORY.md) is then what protects the reader.
    pub async fn acquire_reader(
        backend: &Backend,
        wait: Duration,
    ) -> Result<(Option<Self>, Option<String>), EngineError> {
        match Self::acquire(backend, false, wait).await {
            Ok(lock) => Ok((Some(lock), None)),
            Err(EngineError::Backend(
                e @ (BackendError::Store { .. } | BackendError::Io { .. }),
            )) if e.is_read_only() => Ok((None, Some(e.to_string()))),
            Err(e) => Err(e),
        }
    }

    /// The holder of a lock that conflicts with ours, if any; removes stale locks.
    async fn conflict(
        backend: &Backend,
        own: &str,
        exclusive: bool,
        timing: Timing,
    ) -> Result<Option<String>, EngineError> {
        let locks = backend.list_meta("locks").await?;
        // The store's time of our own write: the clock every other lock is judged by.
        let store_now = match locks.iter().find(|l| l.name == own) {
            Some(l) => l.modified_ms,
            None => backend.modified_ms(own).await?,
        };
        for other in locks.iter().filter(|l| l.name != own) {
            let age_ms = store_now.saturating_sub(other.modified_ms);
            if age_ms > timing.stale_after.as_millis() as i64 {
                tracing::info!(
                    "removing stale lock {} (last written {} s before ours)",
                    other.name,
                    age_ms / 1000
                );
                backend.delete(&other.name).await?;
                continue;
            }
            let bytes = match backend.get_limited(&other.name, SMALL_OBJECT_MAX).await {
                Ok(b) => b,
                // Released between the listing and now.
                Err(BackendError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let Ok(lock) = serde_json::from_slice::<LockFile>(&bytes) else {
                // A lock we cannot read is a lock: it may be a newer writer's. It goes stale
                // like any other.
                return Ok(Some(format!("an unreadable lock ({})", other.name)));
            };
            if exclusive || lock.exclusive {
                let kind = if lock.exclusive {
                    "an exclusive"
                } else {
                    "a shared"
                };
                return Ok(Some(format!(
                    "{kind} lock of pid {} on {} ({})",
                    lock.pid, lock.hostname, other.name
                )));
            }
        }
        Ok(None)
    }

    /// Whether the lock is still surely held; call right before a commit point (a snapshot
    /// object written, data deleted). Once lost, always lost.
    pub fn check(&self) -> Result<(), EngineError> {
        let mut held = self
            .held
            .lock()
            .map_err(|_| EngineError::Worker("lock state poisoned".into()))?;
        held.check(Instant::now(), self.timing)
            .map_err(|why| EngineError::LockLost {
                lock: self.name.clone(),
                why,
            })
    }

    /// Release the lock.
    pub async fn release(self) -> Result<(), EngineError> {
        self.refresher.abort();
        self.backend.delete(&self.name).await?;
        Ok(())
    }
}

/// What a refresh found.
enum Refresh {
    /// Ours, rewritten with these bytes.
    Written(Vec<u8>),
    /// Gone: another taker removed it as stale.
    Gone,
    /// Something else is there now, or it changed under the write.
    Replaced,
}

/// Rewrite the lock every `refresh_every` until it is lost; never recreate a removed lock, nor
/// overwrite one that holds anything but what this holder last wrote.
async fn refresh_loop(
    backend: Backend,
    name: String,
    me: LockFile,
    held: Arc<Mutex<Held>>,
    timing: Timing,
) {
    let mut written = serde_json::to_vec(&me).unwrap_or_default();
    // Fault hook for tests: every refresh stalls this long (as a slow store's retries do).
    let fault_delay = env_secs("SNAPCRYPT_FAULT_LOCK_REFRESH_DELAY_SECS");
    loop {
        tokio::time::sleep(timing.refresh_every).await;
        if held.lock().map(|h| h.lost.is_some()).unwrap_or(true) {
            return;
        }
        let started = Instant::now();
        if let Some(d) = fault_delay {
            tokio::time::sleep(d).await;
        }
        let lock = LockFile {
            refreshed: unix_now(),
            ..me.clone()
        };
        // Only our own lock, as we last wrote it, is refreshed: one that is gone (another
        // taker removed it as stale) or holds something else is never written again.
        let attempt = async {
            let (current, version) = match backend.get_versioned(&name, SMALL_OBJECT_MAX).await {
                Ok(found) => found,
                Err(BackendError::NotFound { .. }) => return Ok(Refresh::Gone),
                Err(e) => return Err(EngineError::from(e)),
            };
            if current[..] != written[..] {
                return Ok(Refresh::Replaced);
            }
            let next = serde_json::to_vec(&lock)?;
            if backend
                .replace_if_unchanged(&name, next.clone(), version)
                .await?
            {
                Ok(Refresh::Written(next))
            } else {
                Ok(Refresh::Replaced)
            }
        };
        let outcome = tokio::time::timeout(timing.refresh_every, attempt).await;
        let Ok(mut h) = held.lock() else { return };
        match outcome {
            Ok(Ok(Refresh::Written(next))) => {
                written = next;
                h.refreshed(started, timing);
            }
            Ok(Ok(Refresh::Gone)) => {
                h.lose("another process removed it as stale".into());
                return;
            }
            Ok(Ok(Refresh::Replaced)) => {
                h.lose("it was replaced by another writer".into());
                return;
            }
            Ok(Err(e)) => tracing::warn!("refreshing repository lock {name}: {e}"),
            Err(_) => tracing::warn!(
                "refreshing repository lock {name}: no answer in {} s",
                timing.refresh_every.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            stale_after: Duration::from_secs(120),
            refresh_every: Duration::from_secs(30),
            trusted_for: Duration::from_secs(100),
        }
    }

    /// A refresh that succeeds after the lock could have been judged stale does not revive it.
    #[test]
    fn a_lock_lost_by_a_late_refresh_stays_lost() {
        let t0 = Instant::now();
        let mut h = Held {
            last_ok: t0,
            lost: None,
        };
        h.refreshed(t0 + Duration::from_secs(30), timing());
        assert!(h.check(t0 + Duration::from_secs(60), timing()).is_ok());
        // The next write started 110 s after the last good one: too late.
        h.refreshed(t0 + Duration::from_secs(140), timing());
        assert!(h.check(t0 + Duration::from_secs(141), timing()).is_err());
        h.refreshed(t0 + Duration::from_secs(150), timing());
        assert!(h.check(t0 + Duration::from_secs(151), timing()).is_err());
    }

    /// A refresh that finds its lock gone, or holding another writer's content, stops the
    /// holder and never writes it again (before: a lock removed between the check and the
    /// write came back, and a replaced one was overwritten).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_never_recreates_or_overwrites_a_lock() {
        use crate::engine::backend::{Location, StoreOptions};
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(
            &Location::Local(dir.path().join("repo")),
            &StoreOptions::default(),
            true,
        )
        .unwrap();
        let fast = Timing {
            stale_after: Duration::from_secs(8),
            refresh_every: Duration::from_millis(50),
            trusted_for: Duration::from_secs(6),
        };
        let me = LockFile {
            exclusive: false,
            hostname: "h".into(),
            pid: 1,
            refreshed: unix_now(),
        };
        for (case, change) in [
            ("gone", None),
            ("replaced", Some(&b"{\"exclusive\":true}"[..])),
        ] {
            let name = format!("locks/{case}");
            backend
                .put(&name, serde_json::to_vec(&me).unwrap())
                .await
                .unwrap();
            let held = Arc::new(Mutex::new(Held {
                last_ok: Instant::now(),
                lost: None,
            }));
            let task = tokio::spawn(refresh_loop(
                backend.clone(),
                name.clone(),
                me.clone(),
                held.clone(),
                fast,
            ));
            // Refreshed at least once while it is ours.
            let path = dir.path().join("repo").join(&name);
            let first = std::fs::read(&path).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::read(&path).unwrap() == first {
                assert!(Instant::now() < deadline, "{case}: never refreshed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            match change {
                None => backend.delete(&name).await.unwrap(),
                Some(other) => backend.put(&name, other.to_vec()).await.unwrap(),
            }
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the refresher stops")
                .unwrap();
            let why = held.lock().unwrap().lost.clone();
            assert!(why.is_some(), "{case}: not lost");
            match change {
                None => assert!(!path.exists(), "gone: recreated"),
                Some(other) => assert_eq!(
                    std::fs::read(&path).unwrap(),
                    other,
                    "replaced: overwritten"
                ),
            }
        }
    }

    #[test]
    fn a_holder_that_stopped_refreshing_knows_it() {
        let t0 = Instant::now();
        let mut h = Held {
            last_ok: t0,
            lost: None,
        };
        assert!(h.check(t0 + Duration::from_secs(99), timing()).is_ok());
        let why = h
            .check(t0 + Duration::from_secs(100), timing())
            .unwrap_err();
        assert!(why.contains("not refreshed for 100 s"), "{why}");
    }
}
