//! The fsync locks the operator holds on members, kept between reconciles: one task per lock,
//! which takes it, answers the member's checks while it is held, and releases it when told
//! (or when `maxLockSeconds` or an election ends it first). A Snapshot's status records each
//! lock before it is asked for, so a lock whose holder is gone (the operator restarted) is
//! found and released by the next reconcile.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::mongo::ConnectionSettings;
use crate::mongo::lock::{LockError, LockLimits, LockReport, LockTarget, with_write_lock};

/// A lock's key: the Snapshot's uid and the attempt it is for.
pub type HoldKey = (String, u32);

/// A held lock: how to tell its task to release, and the task.
struct Hold {
    release: oneshot::Sender<()>,
    task: JoinHandle<Result<LockReport, LockError>>,
}

/// The locks this operator process holds.
#[derive(Default)]
pub struct Holds {
    held: Mutex<HashMap<HoldKey, Hold>>,
}

impl Holds {
    /// Lock `target` and keep it locked until [`Holds::release`], or until `until` ends (Ok:
    /// the work is done, the lock may go; Err: it ended early, and why). Returns once the lock
    /// is taken (with the member's lock count before it), or why it was not.
    pub async fn take<U>(
        &self,
        key: HoldKey,
        target: LockTarget,
        settings: ConnectionSettings,
        limits: LockLimits,
        until: U,
    ) -> Result<i64, LockError>
    where
        U: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (locked_tx, locked_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let member = target.member.clone();
        let task = tokio::spawn(async move {
            with_write_lock(&target, &settings, limits, |before| async move {
                let _ = locked_tx.send(before);
                // Until told to release (a dropped sender says the same), or `until` ends.
                tokio::select! {
                    _ = release_rx => Ok(()),
                    done = until => done,
                }
            })
            .await
            .map(|((), report)| report)
        });
        match locked_rx.await {
            Ok(before) => {
                self.lock_map().insert(
                    key,
                    Hold {
                        release: release_tx,
                        task,
                    },
                );
                Ok(before)
            }
            // The task ended before the lock was taken: its error says why.
            Err(_) => Err(finished(task.await, &member)
                .err()
                .unwrap_or_else(|| LockError::Lock {
                    member,
                    reason: "the lock task ended without locking".into(),
                })),
        }
    }

    /// Whether this process holds (or held, and has not yet collected) the lock `key`.
    pub fn holds(&self, key: &HoldKey) -> bool {
        self.lock_map().contains_key(key)
    }

    /// Whether the lock `key` ended on its own (an overrun, an election, a lost member).
    pub fn ended(&self, key: &HoldKey) -> bool {
        self.lock_map()
            .get(key)
            .is_some_and(|h| h.task.is_finished())
    }

    /// Release the lock `key` and wait for the unlock; None if this process does not hold it.
    pub async fn release(
        &self,
        key: &HoldKey,
        member: &str,
    ) -> Option<Result<LockReport, LockError>> {
        let hold = self.lock_map().remove(key)?;
        let _ = hold.release.send(());
        Some(finished(hold.task.await, member))
    }

    /// Release every lock this process holds (the operator is stopping): members are not left
    /// locked until the next operator finds them.
    pub async fn release_all(&self) {
        let held: Vec<(HoldKey, Hold)> = self.lock_map().drain().collect();
        for (key, hold) in held {
            let _ = hold.release.send(());
            let outcome = finished(hold.task.await, "?");
            tracing::info!(attempt = key.1, ?outcome, "lock released at shutdown");
        }
    }

    fn lock_map(&self) -> std::sync::MutexGuard<'_, HashMap<HoldKey, Hold>> {
        // A panic elsewhere while the map was locked leaves it usable: it is only a map.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A lock task's outcome (a panicked task counts as an unlock that may not have happened).
fn finished(
    joined: Result<Result<LockReport, LockError>, tokio::task::JoinError>,
    member: &str,
) -> Result<LockReport, LockError> {
    joined.unwrap_or_else(|e| {
        Err(LockError::Unlock {
            member: member.to_string(),
            reason: format!("the lock task stopped: {e}"),
        })
    })
}
