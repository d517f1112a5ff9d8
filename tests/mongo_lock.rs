//! The write lock for a consistent cut (src/mongo/lock.rs) against a scripted member: the lock
//! is taken before the work and released after it on the same connection; someone else's lock
//! stays; the primary is refused; an election, a failing work and an overrun deadline all
//! abort and unlock; a lost unlock reply is retried without unlocking twice.
//!
//! TEST DOUBLE: the member is tests/fixtures/mockupdb/lockable.py (PyPI `mockupdb`), which
//! answers `hello`, `fsync` (lock), `fsyncUnlock` and `currentOp` as mongod 6/7 do, with the
//! lock count shared by its connections, and records every command. No mongod can be installed
//! on the development and CI machines.

mod support;

use std::time::{Duration, Instant};

use snapcrypt::mongo::AuthMechanism;
use snapcrypt::mongo::ConnectionSettings;
use snapcrypt::mongo::lock::{
    LockError, LockLimits, LockTarget, unlock_abandoned, with_write_lock,
};
use support::mockupdb::Lockable;

/// The scripted member, and where the lock reaches it.
fn member() -> Lockable {
    Lockable::start(None)
}

fn target(m: &Lockable, allow_primary: bool) -> LockTarget {
    LockTarget {
        member: "rs0-1".into(),
        host: "127.0.0.1".into(),
        port: m.port,
        allow_primary,
    }
}

/// A lock of at most `secs` seconds, with the member asked every 200 ms.
fn limits(secs: u64) -> LockLimits {
    LockLimits {
        max_lock: Duration::from_secs(secs),
        check_every: Duration::from_millis(200),
    }
}

fn settings() -> ConnectionSettings {
    ConnectionSettings {
        port: 27017,
        mechanism: AuthMechanism::None,
        auth_source: "admin".into(),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn cmds(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter().map(|(c, n)| (c.to_string(), *n)).collect()
}

#[tokio::test]
async fn the_lock_spans_the_work_and_only_the_work() {
    let m = member();
    let seen_during = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let during = seen_during.clone();
    let record = m.record_path().to_path_buf();
    let ((), report) = with_write_lock(
        &target(&m, false),
        &settings(),
        limits(10),
        |_| async move {
            // The work sees the lock already taken and not yet released.
            let text = std::fs::read_to_string(record).unwrap_or_default();
            during
                .lock()
                .unwrap()
                .push(text.contains("\"fsync\"") && !text.contains("fsyncUnlock"));
            Ok(())
        },
    )
    .await
    .expect("locked and unlocked");
    assert_eq!(*seen_during.lock().unwrap(), vec![true]);
    assert_eq!(report.count_before, 0);
    assert_eq!(m.commands(), cmds(&[("fsync", 1), ("fsyncUnlock", 0)]));
}

#[tokio::test]
async fn someone_elses_lock_stays_and_the_primary_is_refused() {
    let m = member();
    m.control("lockcount 1");
    let (_, report) = with_write_lock(&target(&m, false), &settings(), limits(10), |_| async {
        Ok(())
    })
    .await
    .expect("locked");
    assert_eq!(report.count_before, 1);
    assert_eq!(m.commands(), cmds(&[("fsync", 2), ("fsyncUnlock", 1)]));

    m.control("lockcount 0");
    m.control("primary");
    let refused = with_write_lock(&target(&m, false), &settings(), limits(10), |_| async {
        Ok(())
    })
    .await;
    assert!(
        matches!(&refused, Err(LockError::NotSecondary { role, .. }) if role == "PRIMARY"),
        "{refused:?}"
    );
    assert_eq!(m.commands().len(), 2, "no lock taken on the primary");
    // allowPrimary: locked anyway.
    with_write_lock(&target(&m, true), &settings(), limits(10), |_| async {
        Ok(())
    })
    .await
    .expect("allowed");
}

#[tokio::test]
async fn an_election_a_failure_or_an_overrun_aborts_and_unlocks() {
    let m = member();
    // An election while locked: the member is a primary when the work is done.
    let ctl = m.controller();
    let elected = with_write_lock(
        &target(&m, false),
        &settings(),
        limits(10),
        |_| async move {
            ctl("primary");
            Ok(())
        },
    )
    .await;
    assert!(
        matches!(&elected, Err(LockError::Election { .. })),
        "{elected:?}"
    );
    m.control("secondary");

    let failed = with_write_lock(&target(&m, false), &settings(), limits(10), |_| async {
        Err::<(), _>("the snapshotter said no".to_string())
    })
    .await;
    assert!(
        matches!(&failed, Err(LockError::Work { reason, .. }) if reason == "the snapshotter said no")
    );

    let overran = with_write_lock(&target(&m, false), &settings(), limits(1), |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    })
    .await;
    assert!(
        matches!(&overran, Err(LockError::Overran { limit_secs: 1, .. })),
        "{overran:?}"
    );
    assert_eq!(
        m.commands(),
        cmds(&[
            ("fsync", 1),
            ("fsyncUnlock", 0),
            ("fsync", 1),
            ("fsyncUnlock", 0),
            ("fsync", 1),
            ("fsyncUnlock", 0)
        ]),
        "every path out unlocked"
    );
}

#[tokio::test]
async fn a_lost_unlock_reply_is_checked_before_unlocking_again() {
    let m = member();
    m.control("fail-unlock 1");
    with_write_lock(&target(&m, false), &settings(), limits(10), |_| async {
        Ok(())
    })
    .await
    .expect("unlocked on the second try");
    let got = m.commands();
    assert_eq!(
        got.last().map(|(c, n)| (c.as_str(), *n)),
        Some(("fsyncUnlock", 0)),
        "{got:?}"
    );
    let unlocks = got.iter().filter(|(c, _)| c == "fsyncUnlock").count();
    assert_eq!(unlocks, 2, "one lost, one that took: {got:?}");
    assert!(
        got.iter().any(|(c, _)| c == "currentOp"),
        "asked before unlocking again: {got:?}"
    );
}

/// An election while the work is still going on ends the lock at the next check, not when
/// the work ends (a copy under the lock may last minutes).
#[tokio::test]
async fn an_election_mid_work_ends_the_lock_at_once() {
    let m = member();
    let ctl = m.controller();
    let started = Instant::now();
    let elected = with_write_lock(
        &target(&m, false),
        &settings(),
        limits(60),
        |_| async move {
            ctl("primary");
            // A long copy: the election must not wait for it.
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        },
    )
    .await;
    assert!(
        matches!(&elected, Err(LockError::Election { role, .. }) if role == "PRIMARY"),
        "{elected:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the election was noticed only after {:?}",
        started.elapsed()
    );
    assert_eq!(m.commands(), cmds(&[("fsync", 1), ("fsyncUnlock", 0)]));
}

/// A lock whose holder was lost: unlocked down to the count recorded before it (someone
/// else's lock stays), or once when no count was recorded; a member not locked is left alone.
#[tokio::test]
async fn an_abandoned_lock_is_undone_and_only_it() {
    let m = member();
    // Someone else's lock (1), then ours (2); the holder recorded count_before 1.
    m.control("lockcount 2");
    let found = unlock_abandoned(&target(&m, false), &settings(), Some(1))
        .await
        .expect("unlocked");
    assert!(found);
    assert_eq!(m.commands(), cmds(&[("currentOp", 2), ("fsyncUnlock", 1)]));
    // No count recorded (the holder died before the reply): one unlock at most.
    let m = member();
    m.control("lockcount 2");
    unlock_abandoned(&target(&m, false), &settings(), None)
        .await
        .expect("unlocked");
    assert_eq!(m.lock_count(), 1);
    // Not locked: nothing to do, no fsyncUnlock sent.
    let m = member();
    let found = unlock_abandoned(&target(&m, false), &settings(), Some(0))
        .await
        .expect("looked");
    assert!(!found);
    assert_eq!(m.commands(), cmds(&[("currentOp", 0)]));
}
