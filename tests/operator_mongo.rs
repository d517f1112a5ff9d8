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

use std::process::Child;

use std::time::Duration;

use snapcrypt::mongo::{Answer, ConnectionSettings, MemberAddress, ask_members, choose};
use snapcrypt::mongo::{AuthMechanism, SyncSourceMode};

/// A scripted replica set; stops when dropped.
struct Members {
    child: Child,
    ports: Vec<u16>,
}

impl Members {
    fn start(specs: &[&str]) -> Members {
        let fixtures = support::repo_root().join("tests/fixtures/hello");
        let mut args = vec![fixtures.into_os_string()];
        args.extend(specs.iter().map(Into::into));
        let started = support::mockupdb::start("members.py", &args);
        let ports = started
            .ready
            .split_whitespace()
            .map(|p| p.parse().expect("port"))
            .collect();
        let child = started.child;
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

/// The members' addresses, and the sockets that hold the ports of the members that are down.
/// A down member's port is bound but never listened on: a connection to it is refused, and no
/// other process (a member of the test beside this one) can take it meanwhile. A port found
/// free and let go was once taken by another test's member, which then answered PRIMARY.
fn addresses(members: &Members) -> (Vec<MemberAddress>, Vec<tokio::net::TcpSocket>) {
    let mut held = Vec::new();
    let addrs = members
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| MemberAddress {
            pod: format!("rs0-{i}"),
            node: Some(format!("node-{i}")),
            host: Some("127.0.0.1".into()),
            port: Some(if *port == 0 {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket
                    .bind("127.0.0.1:0".parse().expect("address"))
                    .expect("bind a port for a member that is down");
                let port = socket.local_addr().expect("bound address").port();
                held.push(socket);
                port
            } else {
                *port
            }),
        })
        .collect();
    (addrs, held)
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
    let (addrs, _down) = addresses(&set);
    let reports = ask_members(&addrs, &settings()).await;
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
    let (addrs, _down) = addresses(&set);
    let reports = ask_members(&addrs, &settings()).await;
    let err = choose(SyncSourceMode::AnySecondary, None, &reports)
        .expect_err("nothing eligible")
        .to_string();
    assert!(
        err.starts_with("no member is eligible for spec.source.syncSource.mode anySecondary: rs0-0: primary; rs0-1: hidden; rs0-2: no answer ("),
        "{err}"
    );
}
