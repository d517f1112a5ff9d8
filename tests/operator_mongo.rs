//! The MongoDB driver path of the sync-source choice: the operator's code asks each member
//! `hello` over a direct connection with the official Rust driver, reads the replica set config
//! for delays, and chooses.
//!
//! TEST DOUBLE: the members are mockupdb servers (tests/fixtures/mockupdb/members.py, PyPI
//! `mockupdb`), scripted with recorded replies (tests/fixtures/hello/). No mongod can be
//! installed on the development and CI machines, so this checks the driver and our parsing of
//! real wire-protocol replies, not MongoDB itself. Authentication is not exercised here (the
//! double does not speak SCRAM or X.509); the options built for each mechanism are unit-tested
//! in src/mongo/client.rs.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use snapcrypt::api::backup_job::{AuthMechanism, SyncSourceMode};
use snapcrypt::mongo::{Answer, ConnectionSettings, MemberAddress, ask_members, choose};

/// The venv python that .ci/install-deps.sh fills (mockupdb, pymongo).
fn python() -> PathBuf {
    std::env::var_os("SNAPCRYPT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| support::cache_dir().join("venv/bin/python"))
}

/// A scripted replica set; stops when dropped.
struct Members {
    child: Child,
    ports: Vec<u16>,
}

impl Members {
    fn start(specs: &[&str]) -> Members {
        let root = support::repo_root();
        let mut child = Command::new(python())
            .arg(root.join("tests/fixtures/mockupdb/members.py"))
            .arg(root.join("tests/fixtures/hello"))
            .args(specs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (run .ci/install-deps.sh for the test venv with mockupdb): {e}",
                    python().display()
                )
            });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).expect(
            "mockupdb members did not start within 30 s (is mockupdb installed in the test venv?)",
        );
        let ports = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected first line from members.py: {line:?}"))
            .split_whitespace()
            .map(|p| p.parse().expect("port"))
            .collect();
        Members { child, ports }
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        // Closing stdin ends the script; kill in case it hangs.
        drop(self.child.stdin.take());
        std::thread::sleep(Duration::from_millis(100));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings() -> ConnectionSettings {
    ConnectionSettings {
        port: 27017,
        mechanism: AuthMechanism::None,
        auth_source: "admin".into(),
        timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

fn addresses(members: &Members) -> Vec<MemberAddress> {
    members
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| MemberAddress {
            pod: format!("rs0-{i}"),
            node: Some(format!("node-{i}")),
            host: Some("127.0.0.1".into()),
            // A member that is down gets a port where nothing listens.
            port: Some(if *port == 0 {
                support::free_port()
            } else {
                *port
            }),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_asks_every_member_and_the_choice_follows_their_replies() {
    let set = Members::start(&[
        "primary",
        "secondary",
        "secondary-lagging",
        "secondary-hidden",
        "secondary-delayed",
        "recovering",
        "arbiter",
        "unreachable:down",
    ]);
    let reports = ask_members(&addresses(&set), &settings()).await;
    let roles: Vec<String> = reports
        .iter()
        .map(|r| match &r.answer {
            Answer::Replied(h) => format!(
                "{} {}{}",
                r.pod,
                h.role(),
                if h.hidden { " hidden" } else { "" }
            ),
            Answer::Failed(_) => format!("{} no answer", r.pod),
            Answer::NotAsked => format!("{} not asked", r.pod),
        })
        .collect();
    assert_eq!(
        roles,
        [
            "rs0-0 PRIMARY",
            "rs0-1 SECONDARY",
            "rs0-2 SECONDARY",
            "rs0-3 SECONDARY hidden",
            "rs0-4 SECONDARY hidden",
            "rs0-5 RECOVERING",
            "rs0-6 ARBITER",
            "rs0-7 no answer",
        ]
    );
    // The delay comes from replSetGetConfig, matched to each member by its `me`.
    assert_eq!(reports[4].delay_secs, Some(3600));
    assert_eq!(reports[1].delay_secs, Some(0));

    let any = choose(SyncSourceMode::AnySecondary, None, &reports).expect("a secondary");
    assert_eq!(
        (any.pod.as_str(), any.role.as_str()),
        ("rs0-1", "SECONDARY")
    );
    assert_eq!(any.node.as_deref(), Some("node-1"));
    assert!(any.reason.contains("1 s behind"), "{}", any.reason);
    let primary = choose(SyncSourceMode::Primary, None, &reports).expect("the primary");
    assert_eq!(primary.pod, "rs0-0");
    let named = choose(SyncSourceMode::Member, Some("rs0-3"), &reports).expect("named");
    assert_eq!(
        (named.pod.as_str(), named.role.as_str()),
        ("rs0-3", "SECONDARY")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_eligible_secondary_is_explained_member_by_member() {
    let set = Members::start(&["primary", "secondary-hidden", "arbiter:down"]);
    let reports = ask_members(&addresses(&set), &settings()).await;
    let err = choose(SyncSourceMode::AnySecondary, None, &reports)
        .expect_err("nothing eligible")
        .to_string();
    assert!(
        err.starts_with("no member is eligible for spec.source.syncSource.mode anySecondary: rs0-0: primary; rs0-1: hidden; rs0-2: no answer ("),
        "{err}"
    );
}
