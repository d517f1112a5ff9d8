//! The KmipServer controller's decisions without a cluster: the plan from observations, and a
//! whole reconcile against the in-memory API (`controller::memory_api`) where the TLS Secret
//! is missing, so no KMIP server is needed (tests/kmip_e2e.rs runs one, PyKMIP).

use std::sync::Arc;

use super::build::{Connection, Observed};
use super::plan::plan;
use super::*;
use crate::api::kmip_server::{KmipServerIdentity, MasterKeyState};
use crate::controller::execute::Change;
use crate::controller::memory_api::MemoryApi;

fn server() -> KmipServer {
    serde_yaml::from_str(
        "apiVersion: snapcrypt.dev/v1alpha1
kind: KmipServer
metadata: {name: vault-kmip, namespace: db, uid: ks-uid, generation: 1}
spec:
  endpoints: [127.0.0.1:1]
  tls: {secretName: kmip-client-tls}
  masterKey: {create: {name: snapcrypt-db}}
  rotation: {period: 90d}
  pollInterval: 5m",
    )
    .expect("KmipServer fixture")
}

fn observed() -> Observed {
    Observed {
        connection: Connection::Ok(KmipServerIdentity::default()),
        active_key: Some(("k2".into(), MasterKeyState::Active)),
        key_states: [
            ("k1".to_string(), MasterKeyState::Active),
            ("k2".to_string(), MasterKeyState::Active),
        ]
        .into(),
        dependents: [("k1".to_string(), 3)].into(),
        jobs_total: 1,
        jobs_on_active_key: 0,
        rotated: Some(("k1".into(), "k2".into())),
        replaced: None,
        key_error: None,
    }
}

fn at(t: &str) -> jiff::Timestamp {
    t.parse().expect("time")
}

/// A rotation is written to status (the old key Superseded, still listed with its
/// dependants) and then announced; a replaced key's Event names its state.
#[test]
fn a_rotation_is_written_then_announced() {
    let mut ks = server();
    ks.status = Some(crate::api::KmipServerStatus {
        active_key_id: Some("k1".into()),
        keys: vec![crate::api::kmip_server::MasterKeyStatus {
            id: "k1".into(),
            state: MasterKeyState::Active,
            ..Default::default()
        }],
        ..Default::default()
    });
    let o = plan(&ks, &observed(), at("2026-12-07T10:00:00Z"));
    let s: Vec<String> = o.changes.iter().map(Change::summary).collect();
    assert_eq!(s, ["status KmipServer/vault-kmip", "event Rotated"]);
    let k1 = o.status.keys.iter().find(|k| k.id == "k1").expect("k1");
    assert_eq!(k1.state, MasterKeyState::Superseded);
    assert_eq!(k1.dependent_snapshots, 3);
    assert_eq!(o.status.active_key_id.as_deref(), Some("k2"));
    let mut replaced = observed();
    replaced.replaced = Some(MasterKeyState::Compromised);
    let o = plan(&ks, &replaced, at("2026-12-07T10:00:00Z"));
    match &o.changes[1] {
        Change::Event { reason, note } => {
            assert_eq!(*reason, crate::controller::reason::Reason::KeyReplaced);
            assert!(note.starts_with("master key k1 is Compromised"), "{note}");
        }
        other => panic!("{other:?}"),
    }
}

/// Key states keep their KMIP names in status, and one this version does not know reads as
/// Unknown.
#[test]
fn key_states_keep_their_names() {
    for (state, name) in [
        (MasterKeyState::Active, "\"Active\""),
        (MasterKeyState::PreActive, "\"PreActive\""),
        (MasterKeyState::Superseded, "\"Superseded\""),
        (
            MasterKeyState::DestroyedCompromised,
            "\"DestroyedCompromised\"",
        ),
    ] {
        assert_eq!(serde_json::to_string(&state).expect("json"), name);
        assert_eq!(
            serde_json::from_str::<MasterKeyState>(name).expect("read"),
            state
        );
    }
    assert_eq!(
        serde_json::from_str::<MasterKeyState>("\"Frozen\"").expect("read"),
        MasterKeyState::Unknown
    );
}

/// A whole reconcile against the in-memory API: without its TLS Secret the server is not
/// Ready, status names the Secret, and nothing is tried on the network.
#[tokio::test]
async fn a_kmip_server_without_its_secret_says_which_one() {
    let mem = MemoryApi::new();
    mem.put(&server());
    let ctx = mem.context();
    let ks: KmipServer = mem.get("db", "vault-kmip").expect("KmipServer");
    reconcile(Arc::new(ks), ctx).await.expect("reconcile");
    assert_eq!(mem.take_writes(), ["status kmipservers/vault-kmip"]);
    let ks: KmipServer = mem.get("db", "vault-kmip").expect("KmipServer");
    let st = ks.status.unwrap_or_default();
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "False");
    assert!(
        ready
            .message
            .contains("spec.tls.secretName: Secret kmip-client-tls does not exist"),
        "{}",
        ready.message
    );
}
