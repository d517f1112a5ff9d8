//! Repository locks. Backups take shared locks (any number at once); prune takes an exclusive
//! one. A lock is an object under `locks/` that its holder refreshes; a lock not refreshed for
//! `STALE_AFTER` is ignored and removed by the next taker, so a dead holder never needs a manual
//! unlock.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::EngineError;
use super::backend::Backend;
use super::crypto::random_id;

/// A lock not refreshed for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(120);
const REFRESH_EVERY: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize, Debug, Clone)]
struct LockFile {
    exclusive: bool,
    hostname: String,
    pid: u32,
    /// Unix seconds of the last refresh.
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
    std::env::var("SNAPCRYPT_LOCK_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

/// A held lock; released on `release` (or, if the process dies, it goes stale).
pub struct RepoLock {
    backend: Backend,
    name: String,
    refresher: JoinHandle<()>,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
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
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            backend.put(&name, serde_json::to_vec(&me)?).await?;
            match Self::conflict(backend, &name, exclusive).await? {
                None => break,
                Some(holder) => {
                    backend.delete(&name).await?;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(EngineError::Locked {
                            holder,
                            stale_after_secs: STALE_AFTER.as_secs(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let refresher = {
            let backend = backend.clone();
            let name = name.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REFRESH_EVERY).await;
                    let lock = LockFile {
                        refreshed: unix_now(),
                        ..me.clone()
                    };
                    if let Ok(bytes) = serde_json::to_vec(&lock) {
                        let _ = backend.put(&name, bytes).await;
                    }
                }
            })
        };
        Ok(RepoLock {
            backend: backend.clone(),
            name,
            refresher,
        })
    }

    /// The holder of a lock that conflicts with ours, if any; removes stale locks.
    async fn conflict(
        backend: &Backend,
        own: &str,
        exclusive: bool,
    ) -> Result<Option<String>, EngineError> {
        for (other, _) in backend.list("locks").await? {
            if other == own {
                continue;
            }
            let Ok(bytes) = backend.get(&other).await else {
                continue;
            };
            let Ok(lock) = serde_json::from_slice::<LockFile>(&bytes) else {
                continue;
            };
            if unix_now().saturating_sub(lock.refreshed) > STALE_AFTER.as_secs() {
                backend.delete(&other).await?;
                continue;
            }
            if exclusive || lock.exclusive {
                let kind = if lock.exclusive {
                    "an exclusive"
                } else {
                    "a shared"
                };
                return Ok(Some(format!(
                    "{kind} lock of pid {} on {} ({other})",
                    lock.pid, lock.hostname
                )));
            }
        }
        Ok(None)
    }

    /// Release the lock.
    pub async fn release(self) -> Result<(), EngineError> {
        self.refresher.abort();
        self.backend.delete(&self.name).await?;
        Ok(())
    }
}
