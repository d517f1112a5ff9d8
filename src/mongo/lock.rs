//! Holding a member's writes while something happens (the cut of a volume snapshot):
//! `fsync` with `lock: true` and `fsyncUnlock` on one kept connection, as MongoDB's "back up
//! with filesystem snapshots" procedure does.
//!
//! The rules, each a way a lock went wrong somewhere:
//! - One connection, kept from lock to unlock (the client's pool holds one): a lock blocks
//!   the writes that a new connection's authentication may need.
//! - The lock count the `fsync` reply gives is checked: our lock is the one that took it from
//!   `count - 1` to `count`, and releasing means unlocking until it is back to `count - 1`,
//!   never below (someone else's lock is theirs) and never more than once per lock we added.
//! - The member must be a secondary when locked (unless the caller allows the primary) and
//!   still one after the work: an election in between aborts (the data is not a secondary's).
//! - The work gets a deadline (`max_lock`); past it the lock is released and the run fails.
//! - Whatever happens (error, deadline, election), the unlock runs before this returns.

use std::future::Future;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};

use super::client::{ConnectionSettings, TlsFiles, client_options};
use super::explain::{Address, Failure, explain, setup_failure};
use super::hello::HelloReply;

/// How many `fsyncUnlock` calls a release may make (each removes one lock we added; a retry
/// after a lost reply must not unlock someone else's).
const UNLOCK_TRIES: u32 = 3;

/// What went wrong while locking, working under the lock, or unlocking.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LockError {
    #[error("could not connect to mongod on member {member} ({address}): {reason}")]
    Connect {
        member: String,
        address: String,
        reason: String,
    },
    #[error(
        "member {member} is {role}, not a secondary: only a secondary is locked unless the spec allows the primary"
    )]
    NotSecondary { member: String, role: String },
    #[error("fsync lock on member {member}: {reason}")]
    Lock { member: String, reason: String },
    #[error(
        "the work under the lock on member {member} failed: {reason} (the member was unlocked)"
    )]
    Work { member: String, reason: String },
    #[error(
        "the lock on member {member} would have lasted over {limit_secs} s (maxLockSeconds): aborted and unlocked"
    )]
    Overran { member: String, limit_secs: u64 },
    #[error(
        "member {member} became {role} while locked: the cut is not a secondary's, aborted (the member was unlocked)"
    )]
    Election { member: String, role: String },
    #[error("fsyncUnlock on member {member}: {reason}; the member may still be locked")]
    Unlock { member: String, reason: String },
}

/// What a completed lock looked like, for status, an Event and a metric.
#[derive(Clone, Debug, PartialEq)]
pub struct LockReport {
    /// How long writes were held.
    pub held: Duration,
    /// The member's lock count before our lock (0 unless someone else holds one).
    pub count_before: i64,
}

/// A member as the lock reaches it.
#[derive(Clone, Debug)]
pub struct LockTarget {
    /// The member's name (its pod), for messages.
    pub member: String,
    pub host: String,
    pub port: u16,
    /// Lock the primary too (the spec's allowPrimary).
    pub allow_primary: bool,
}

/// How long a lock may last, and how often the member is asked whether it is still a
/// secondary while it is held.
#[derive(Clone, Copy, Debug)]
pub struct LockLimits {
    /// `maxLockSeconds`: past it the work is abandoned and the member unlocked.
    pub max_lock: Duration,
    /// The interval of the `hello` checks during the work (an election aborts at once, not
    /// when the work ends).
    pub check_every: Duration,
}

/// Run `work` while `target`'s writes are locked, for at most `limits.max_lock`; unlock on
/// every path out. `work` is given the member's lock count before our lock. Returns the
/// work's value and the lock's report.
pub async fn with_write_lock<T, W, F>(
    target: &LockTarget,
    settings: &ConnectionSettings,
    limits: LockLimits,
    work: W,
) -> Result<(T, LockReport), LockError>
where
    W: FnOnce(i64) -> F,
    F: Future<Output = Result<T, String>>,
{
    let member = target.member.clone();
    let connect = connect_error(target);
    let session = Session::open(target, settings).map_err(&connect)?;
    let run = |cmd: Document| session.run(cmd);

    // A secondary (unless allowed), then the lock, on this one connection.
    let role = |reply: &Document| HelloReply::from_document(reply).role().to_string();
    let hello = run(doc! {"hello": 1}).await.map_err(connect)?;
    if !target.allow_primary && role(&hello) != "SECONDARY" {
        session.close().await;
        return Err(LockError::NotSecondary {
            member,
            role: role(&hello),
        });
    }
    let lock_err = |reason: String| LockError::Lock {
        member: member.clone(),
        reason,
    };
    let reply = match run(doc! {"fsync": 1, "lock": true}).await {
        Ok(r) => r,
        Err(e) => {
            // The reply may be lost after the lock was taken: look, and undo only ours.
            let _ = release_if_locked(&run).await;
            session.close().await;
            return Err(lock_err(e));
        }
    };
    let taken = Instant::now();
    let count = lock_count(&reply);
    let outcome = match count {
        Some(n) if n >= 1 => {
            let before = n - 1;
            // The work, with the member asked every `check_every` whether it still is what
            // it was when locked; the whole of it within `max_lock`.
            let watched = async {
                let work = work(before);
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        done = &mut work => {
                            return done.map_err(|reason| LockError::Work {
                                member: member.clone(),
                                reason,
                            });
                        }
                        () = tokio::time::sleep(limits.check_every) => {
                            still_a_secondary(&run, target, &role).await?;
                        }
                    }
                }
            };
            let after_work = match tokio::time::timeout(limits.max_lock, watched).await {
                Err(_) => Err(LockError::Overran {
                    member: member.clone(),
                    limit_secs: limits.max_lock.as_secs(),
                }),
                Ok(Err(e)) => Err(e),
                Ok(Ok(value)) => still_a_secondary(&run, target, &role).await.map(|()| value),
            };
            let held = taken.elapsed();
            let unlocked = release_to(&run, n, before)
                .await
                .map_err(|reason| LockError::Unlock {
                    member: member.clone(),
                    reason,
                });
            match (after_work, unlocked) {
                (_, Err(e)) => Err(e),
                (Err(e), Ok(())) => Err(e),
                (Ok(v), Ok(())) => Ok((
                    v,
                    LockReport {
                        held,
                        count_before: before,
                    },
                )),
            }
        }
        other => {
            // A reply without a sensible count: undo what we may have added, and refuse.
            let _ = release_if_locked(&run).await;
            let got = other.map_or("missing".to_string(), |n| n.to_string());
            Err(lock_err(format!(
                "the reply's lockCount is {got}, expected 1 or more"
            )))
        }
    };
    session.close().await;
    outcome
}

/// Whether the locked member still is a secondary (or anything, with allowPrimary): an
/// election, or no answer, ends the lock.
async fn still_a_secondary<R, Fut>(
    run: &R,
    target: &LockTarget,
    role: &impl Fn(&Document) -> String,
) -> Result<(), LockError>
where
    R: Fn(Document) -> Fut,
    Fut: Future<Output = Result<Document, String>>,
{
    match run(doc! {"hello": 1}).await {
        Ok(h) if target.allow_primary || role(&h) == "SECONDARY" => Ok(()),
        Ok(h) => Err(LockError::Election {
            member: target.member.clone(),
            role: role(&h),
        }),
        Err(reason) => Err(connect_error(target)(format!(
            "lost while locked: {reason}"
        ))),
    }
}

/// Unlock a member whose lock holder was lost (the operator restarted while it held it):
/// down to `count_before` when the holder recorded it, else one lock at most (the one it may
/// have taken). Returns whether the member was found locked.
pub async fn unlock_abandoned(
    target: &LockTarget,
    settings: &ConnectionSettings,
    count_before: Option<i64>,
) -> Result<bool, LockError> {
    let member = target.member.clone();
    let connect = connect_error(target);
    let session = Session::open(target, settings).map_err(&connect)?;
    let run = |cmd: Document| session.run(cmd);
    let outcome = async {
        let op = run(doc! {"currentOp": 1}).await.map_err(connect)?;
        if !op.get_bool("fsyncLock").unwrap_or(false) {
            return Ok(false);
        }
        let unlock = |reason: String| LockError::Unlock {
            member: member.clone(),
            reason,
        };
        let reply = run(doc! {"fsyncUnlock": 1}).await.map_err(unlock)?;
        if let (Some(before), Some(now)) = (count_before, lock_count(&reply)) {
            release_to(&run, now, before).await.map_err(unlock)?;
        }
        Ok(true)
    }
    .await;
    session.close().await;
    outcome
}

/// A connection failure to `target`, as a [`LockError`].
fn connect_error(target: &LockTarget) -> impl Fn(String) -> LockError + '_ {
    move |reason| LockError::Connect {
        member: target.member.clone(),
        address: Address {
            host: &target.host,
            port: target.port,
        }
        .to_string(),
        reason,
    }
}

/// One kept connection to a member's admin database (the driver's pool, limited to one by
/// [`client_options`]), with the TLS files it reads.
struct Session {
    client: mongodb::Client,
    admin: mongodb::Database,
    host: String,
    port: u16,
    timeout: std::time::Duration,
    _files: TlsFiles,
}

impl Session {
    fn open(target: &LockTarget, settings: &ConnectionSettings) -> Result<Session, String> {
        let files = TlsFiles::write(settings).map_err(|e| e.to_string())?;
        let opts = client_options(&target.host, target.port, settings, &files);
        let at = Address {
            host: &target.host,
            port: target.port,
        };
        let client = mongodb::Client::with_options(opts).map_err(|e| setup_failure(at, &e))?;
        Ok(Session {
            admin: client.database("admin"),
            client,
            host: target.host.clone(),
            port: target.port,
            timeout: settings.timeout,
            _files: files,
        })
    }

    /// One command, its reply or a one-line error in words (also when it does not answer
    /// in time: the address is probed to say why).
    async fn run(&self, cmd: Document) -> Result<Document, String> {
        let at = Address {
            host: &self.host,
            port: self.port,
        };
        match tokio::time::timeout(self.timeout, self.admin.run_command(cmd)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(explain(at, Failure::Driver(&e)).await),
            Err(_) => Err(explain(
                at,
                Failure::NoReply {
                    waited: self.timeout,
                },
            )
            .await),
        }
    }

    async fn close(self) {
        self.client.shutdown().await;
    }
}

/// Unlock from `count` (our lock included) down to `before`, one `fsyncUnlock` per lock we
/// added; a reply that says the count is already at or below `before` ends it.
async fn release_to<R, Fut>(run: &R, count: i64, before: i64) -> Result<(), String>
where
    R: Fn(Document) -> Fut,
    Fut: Future<Output = Result<Document, String>>,
{
    let mut last = String::new();
    let mut current = count;
    for _ in 0..UNLOCK_TRIES {
        if current <= before {
            return Ok(());
        }
        match run(doc! {"fsyncUnlock": 1}).await {
            Ok(reply) => current = lock_count(&reply).unwrap_or(before),
            Err(e) if e.contains("not locked") => return Ok(()),
            Err(e) => {
                // The reply was lost: ask before unlocking again.
                last = e;
                match run(doc! {"currentOp": 1}).await {
                    Ok(op) if !op.get_bool("fsyncLock").unwrap_or(false) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => last = e,
                }
            }
        }
    }
    if current <= before {
        Ok(())
    } else {
        Err(if last.is_empty() {
            format!("lockCount still {current} after {UNLOCK_TRIES} fsyncUnlock calls")
        } else {
            last
        })
    }
}

/// After a lost `fsync` reply: if the member says it is locked, unlock once (ours is the
/// newest lock), else nothing.
async fn release_if_locked<R, Fut>(run: &R) -> Result<(), String>
where
    R: Fn(Document) -> Fut,
    Fut: Future<Output = Result<Document, String>>,
{
    let op = run(doc! {"currentOp": 1}).await?;
    if op.get_bool("fsyncLock").unwrap_or(false) {
        run(doc! {"fsyncUnlock": 1}).await?;
    }
    Ok(())
}

/// The `lockCount` of an `fsync` or `fsyncUnlock` reply (an int32 or int64).
fn lock_count(reply: &Document) -> Option<i64> {
    match reply.get("lockCount")? {
        mongodb::bson::Bson::Int32(n) => Some(i64::from(*n)),
        mongodb::bson::Bson::Int64(n) => Some(*n),
        mongodb::bson::Bson::Double(n) => Some(*n as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The commands a scripted member got, by name.
    type Seen = Arc<Mutex<Vec<String>>>;

    /// A scripted member: each command's reply in turn, and the commands it got.
    fn member(
        replies: Vec<Result<Document, String>>,
    ) -> (
        Seen,
        impl Fn(Document) -> std::future::Ready<Result<Document, String>>,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(replies.into_iter()));
        let s = seen.clone();
        let run = move |cmd: Document| {
            let name = cmd.keys().next().cloned().unwrap_or_default();
            s.lock().expect("seen").push(name);
            let next = replies
                .lock()
                .expect("replies")
                .next()
                .unwrap_or_else(|| Err("no more replies".into()));
            std::future::ready(next)
        };
        (seen, run)
    }

    #[tokio::test]
    async fn release_unlocks_only_the_locks_it_added() {
        // Someone else holds one lock (before = 1); ours made it 2: one unlock, not two.
        let (seen, run) = member(vec![Ok(doc! {"ok": 1, "lockCount": 1})]);
        assert_eq!(release_to(&run, 2, 1).await, Ok(()));
        assert_eq!(*seen.lock().unwrap(), vec!["fsyncUnlock"]);
        // A lost reply: ask before unlocking again; already unlocked, so stop.
        let (seen, run) = member(vec![
            Err("connection reset".into()),
            Ok(doc! {"ok": 1, "inprog": [], "fsyncLock": false}),
        ]);
        assert_eq!(release_to(&run, 1, 0).await, Ok(()));
        assert_eq!(*seen.lock().unwrap(), vec!["fsyncUnlock", "currentOp"]);
        // Still locked after every try: an error, and at most UNLOCK_TRIES unlocks.
        let (seen, run) = member(vec![
            Err("timeout".into()),
            Ok(doc! {"ok": 1, "fsyncLock": true}),
            Err("timeout".into()),
            Ok(doc! {"ok": 1, "fsyncLock": true}),
            Err("timeout".into()),
            Ok(doc! {"ok": 1, "fsyncLock": true}),
        ]);
        assert!(release_to(&run, 1, 0).await.is_err());
        let unlocks = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == "fsyncUnlock")
            .count();
        assert_eq!(unlocks, UNLOCK_TRIES as usize);
    }

    #[test]
    fn lock_counts_come_in_any_numeric_type() {
        assert_eq!(lock_count(&doc! {"lockCount": 2_i32}), Some(2));
        assert_eq!(lock_count(&doc! {"lockCount": 3_i64}), Some(3));
        assert_eq!(lock_count(&doc! {"ok": 1}), None);
    }
}
