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

use std::io::Write;

use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use snapcrypt::api::backup_job::AuthMechanism;
use snapcrypt::mongo::ConnectionSettings;
use snapcrypt::mongo::lock::{LockError, LockTarget, with_write_lock};

/// The member's control channel: its stdin, and its stdout lines after `READY`.
type Control = Arc<Mutex<(Option<ChildStdin>, mpsc::Receiver<String>)>>;

/// Send a control line and wait for its acknowledgement.
fn control(ctl: &Control, line: &str) {
    let mut c = ctl.lock().expect("control");
    let stdin = c.0.as_mut().expect("stdin");
    writeln!(stdin, "{line}").expect("write control line");
    stdin.flush().expect("flush");
    let ack =
        c.1.recv_timeout(Duration::from_secs(10))
            .expect("no acknowledgement");
    assert_eq!(ack, format!("OK {line}"));
}

/// A lockable member; stops when dropped (its stdin closes).
struct Member {
    child: Child,
    ctl: Control,
    port: u16,
    record: tempfile::NamedTempFile,
}

impl Member {
    fn start() -> Member {
        let root = support::repo_root();
        let record = tempfile::NamedTempFile::new().expect("record file");
        let fixture = root.join("tests/fixtures/hello/secondary.json");
        let started = support::mockupdb::start(
            "lockable.py",
            &[fixture.as_os_str(), record.path().as_os_str()],
        );
        let port = started.ready.parse().expect("port");
        let (mut child, lines) = (started.child, started.lines);
        let ctl = Arc::new(Mutex::new((child.stdin.take(), lines)));
        Member {
            child,
            ctl,
            port,
            record,
        }
    }

    fn control(&self, line: &str) {
        control(&self.ctl, line);
    }

    fn target(&self, allow_primary: bool) -> LockTarget {
        LockTarget {
            member: "rs0-1".into(),
            host: "127.0.0.1".into(),
            port: self.port,
            allow_primary,
        }
    }

    /// The lock-related commands received, in order (heartbeats left out), with the lock
    /// count after each.
    fn commands(&self) -> Vec<(String, i64)> {
        std::fs::read_to_string(self.record.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                matches!(
                    v["cmd"].as_str(),
                    Some("fsync" | "fsyncUnlock" | "currentOp")
                )
            })
            .map(|v| {
                (
                    v["cmd"].as_str().unwrap_or_default().to_string(),
                    v["lockCount_after"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Ok(mut c) = self.ctl.lock() {
            drop(c.0.take());
        }
        let _ = self.child.wait();
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
    let m = Member::start();
    let seen_during = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let during = seen_during.clone();
    let record = m.record.path().to_path_buf();
    let ((), report) = with_write_lock(
        &m.target(false),
        &settings(),
        Duration::from_secs(10),
        async move {
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
    let m = Member::start();
    m.control("lockcount 1");
    let (_, report) = with_write_lock(
        &m.target(false),
        &settings(),
        Duration::from_secs(10),
        async { Ok(()) },
    )
    .await
    .expect("locked");
    assert_eq!(report.count_before, 1);
    assert_eq!(m.commands(), cmds(&[("fsync", 2), ("fsyncUnlock", 1)]));

    m.control("lockcount 0");
    m.control("primary");
    let refused = with_write_lock(
        &m.target(false),
        &settings(),
        Duration::from_secs(10),
        async { Ok(()) },
    )
    .await;
    assert!(
        matches!(&refused, Err(LockError::NotSecondary { role, .. }) if role == "PRIMARY"),
        "{refused:?}"
    );
    assert_eq!(m.commands().len(), 2, "no lock taken on the primary");
    // allowPrimary: locked anyway.
    with_write_lock(
        &m.target(true),
        &settings(),
        Duration::from_secs(10),
        async { Ok(()) },
    )
    .await
    .expect("allowed");
}

#[tokio::test]
async fn an_election_a_failure_or_an_overrun_aborts_and_unlocks() {
    let m = Member::start();
    // An election while locked: the member is a primary when the work is done.
    let ctl = m.ctl.clone();
    let elected = with_write_lock(
        &m.target(false),
        &settings(),
        Duration::from_secs(10),
        async move {
            control(&ctl, "primary");
            Ok(())
        },
    )
    .await;
    assert!(
        matches!(&elected, Err(LockError::Election { .. })),
        "{elected:?}"
    );
    m.control("secondary");

    let failed = with_write_lock(
        &m.target(false),
        &settings(),
        Duration::from_secs(10),
        async { Err::<(), _>("the snapshotter said no".to_string()) },
    )
    .await;
    assert!(
        matches!(&failed, Err(LockError::Work { reason, .. }) if reason == "the snapshotter said no")
    );

    let overran = with_write_lock(
        &m.target(false),
        &settings(),
        Duration::from_secs(1),
        async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        },
    )
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
    let m = Member::start();
    m.control("fail-unlock 1");
    with_write_lock(
        &m.target(false),
        &settings(),
        Duration::from_secs(10),
        async { Ok(()) },
    )
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
