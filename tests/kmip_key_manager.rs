//! `KmipKeyManager` through the `KeyManager` trait against a real PyKMIP 0.11 server:
//! server-side AES-GCM and local AES-KWP wrapping, older master keys after rotation, keys
//! that may not wrap, and the `--kmip-*` options (src/cli/kmip_args.rs).

#[path = "support/kmip.rs"]
mod pykmip;

use snapcrypt::cli::kmip_args;

use std::sync::Arc;

use clap::Parser;
use pykmip::PyKmip;
use snapcrypt::kms::kmip::{
    ALGORITHM_LOCAL_KWP, ALGORITHM_SERVER_GCM, KeyState, KmipClient, KmipError, KmipKeyManager,
    ProtocolVersion, RevocationReason, WrapMode,
};
use snapcrypt::kms::{KeyManager, KmsError};

const DATA_KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

fn client(server: &PyKmip) -> Arc<KmipClient> {
    Arc::new(KmipClient::new(server.config()).unwrap())
}

#[tokio::test]
async fn server_side_wrap_unwrap_round_trip() {
    let server = PyKmip::start();
    let c = client(&server);
    let (km, created) =
        KmipKeyManager::find_or_create(c.clone(), "snapcrypt-master", WrapMode::ServerSide)
            .await
            .unwrap();
    assert!(created);
    assert_eq!(km.kind(), "kmip");
    let id = km.active_key_id().await.unwrap();
    assert_eq!(id, km.key_id());

    let w = km.wrap(DATA_KEY).await.unwrap();
    assert_eq!(w.kms, "kmip");
    assert_eq!(w.master_key_id, id);
    assert_eq!(w.algorithm, ALGORITHM_SERVER_GCM);
    assert_eq!(w.ciphertext.len(), 32);
    assert_ne!(&w.ciphertext[..], &DATA_KEY[..]);
    assert_eq!(w.iv.as_ref().unwrap().len(), 12);
    assert_eq!(w.tag.as_ref().unwrap().len(), 16);
    assert_eq!(&km.unwrap(&w).await.unwrap()[..], DATA_KEY);
    // Two wraps of one key differ (fresh IV).
    assert_ne!(km.wrap(DATA_KEY).await.unwrap().ciphertext, w.ciphertext);

    // The record survives JSON (as stored in the repository).
    let json = serde_json::to_string(&w).unwrap();
    let back: snapcrypt::kms::WrappedKey = serde_json::from_str(&json).unwrap();
    assert_eq!(&km.unwrap(&back).await.unwrap()[..], DATA_KEY);

    // Found again by name, not created twice.
    let (again, created) =
        KmipKeyManager::find_or_create(c, "snapcrypt-master", WrapMode::ServerSide)
            .await
            .unwrap();
    assert!(!created);
    assert_eq!(again.key_id(), id);

    let mut tampered = w.clone();
    tampered.ciphertext[0] ^= 1;
    assert!(matches!(
        km.unwrap(&tampered).await,
        Err(KmsError::UnwrapFailed { .. })
    ));
    let mut moved = w.clone();
    moved.master_key_id = "4242".into();
    assert!(matches!(
        km.unwrap(&moved).await,
        Err(KmsError::UnknownKey { .. })
    ));
    let mut local = w.clone();
    local.kms = "local".into();
    assert!(matches!(
        km.unwrap(&local).await,
        Err(KmsError::UnknownKey { .. })
    ));
}

#[tokio::test]
async fn local_key_wrap_round_trip_and_cross_mode_unwrap() {
    let server = PyKmip::start();
    let c = client(&server);
    let id = c.create_master_key("snapcrypt-kwp").await.unwrap();
    let local = KmipKeyManager::new(c.clone(), id.clone(), WrapMode::LocalKeyWrap).unwrap();
    let w = local.wrap(DATA_KEY).await.unwrap();
    assert_eq!(w.algorithm, ALGORITHM_LOCAL_KWP);
    assert_eq!(w.ciphertext.len(), 40, "KWP of 32 bytes is 40 bytes");
    assert!(w.iv.is_none() && w.tag.is_none());
    assert_eq!(&local.unwrap(&w).await.unwrap()[..], DATA_KEY);

    // Unwrapping follows the record, whatever mode the manager wraps with.
    let server_side = KmipKeyManager::new(c, id, WrapMode::ServerSide).unwrap();
    assert_eq!(&server_side.unwrap(&w).await.unwrap()[..], DATA_KEY);
    let g = server_side.wrap(DATA_KEY).await.unwrap();
    assert_eq!(&local.unwrap(&g).await.unwrap()[..], DATA_KEY);

    let mut tampered = w.clone();
    tampered.ciphertext[5] ^= 1;
    assert!(matches!(
        local.unwrap(&tampered).await,
        Err(KmsError::UnwrapFailed { .. })
    ));
}

#[tokio::test]
async fn unwrap_under_an_older_key_after_a_newer_one_is_created() {
    let server = PyKmip::start();
    let c = client(&server);
    let (old, _) = KmipKeyManager::find_or_create(c.clone(), "snapcrypt-rot", WrapMode::ServerSide)
        .await
        .unwrap();
    let w_old = old.wrap(DATA_KEY).await.unwrap();
    let w_old_kwp = KmipKeyManager::new(c.clone(), old.key_id(), WrapMode::LocalKeyWrap)
        .unwrap()
        .wrap(DATA_KEY)
        .await
        .unwrap();

    // Rotation: a new master key of the same name; data keys rewrapped under it.
    let new_id = old.create_master_key("snapcrypt-rot").await.unwrap();
    assert_ne!(new_id, old.key_id());
    assert_eq!(old.key_state(&new_id).await.unwrap(), KeyState::Active);
    let mut ids = old.locate_by_name("snapcrypt-rot").await.unwrap();
    ids.sort();
    assert_eq!(ids.len(), 2);
    let new = old.with_key(new_id.clone());
    let w_new = new.wrap(DATA_KEY).await.unwrap();
    assert_eq!(w_new.master_key_id, new_id);

    // The newest Active key of the name is picked from now on.
    let (picked, created) =
        KmipKeyManager::find_or_create(c, "snapcrypt-rot", WrapMode::ServerSide)
            .await
            .unwrap();
    assert!(!created);
    assert_eq!(picked.key_id(), new_id);

    // The new manager still unwraps what the old key wrapped (older records name their key).
    for w in [&w_old, &w_old_kwp, &w_new] {
        assert_eq!(
            &new.unwrap(w).await.unwrap()[..],
            DATA_KEY,
            "{}",
            w.master_key_id
        );
    }
    let info = new.server_info().await.unwrap();
    assert_eq!(
        info.vendor.as_deref(),
        Some("PyKMIP 0.11.0 Software Server")
    );
}

#[tokio::test]
async fn revoked_or_unactivated_or_unknown_keys_do_not_wrap() {
    let server = PyKmip::start();
    let c = client(&server);
    let id = c.create_master_key("snapcrypt-revoked").await.unwrap();
    c.revoke(&id, RevocationReason::CessationOfOperation, None)
        .await
        .unwrap();
    for mode in [WrapMode::ServerSide, WrapMode::LocalKeyWrap] {
        let km = KmipKeyManager::new(c.clone(), id.clone(), mode).unwrap();
        match km.active_key_id().await {
            Err(KmsError::NotActive { key_id, state }) => {
                assert_eq!(key_id, id);
                assert_eq!(state, "Deactivated");
            }
            other => panic!("expected NotActive, got {other:?}"),
        }
        let e = km.wrap(DATA_KEY).await.unwrap_err();
        assert!(matches!(e, KmsError::NotActive { .. }), "{mode:?}: {e:?}");
        assert!(e.to_string().contains("is Deactivated, not Active"), "{e}");
    }

    let pre = c.create_aes256_key("snapcrypt-pre").await.unwrap();
    let km = KmipKeyManager::new(c.clone(), pre, WrapMode::ServerSide).unwrap();
    let e = km.wrap(DATA_KEY).await.unwrap_err();
    assert!(e.to_string().contains("is PreActive, not Active"), "{e}");

    let km = KmipKeyManager::new(c.clone(), "4242", WrapMode::ServerSide).unwrap();
    let e = km.active_key_id().await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("master key \"4242\" not found on the KMIP server"),
        "{msg}"
    );
    println!("{msg}");

    // A name whose only key is not Active is not silently replaced.
    let e = KmipKeyManager::find_or_create(c, "snapcrypt-revoked", WrapMode::ServerSide)
        .await
        .unwrap_err();
    assert!(matches!(e, KmipError::NoActiveKey { .. }), "{e:?}");
    assert!(e.to_string().contains("Deactivated"), "{e}");
    assert!(e.to_string().contains("--kmip-key-id"), "{e}");
}

#[tokio::test]
async fn server_side_wrapping_needs_kmip_1_4() {
    let server = PyKmip::start();
    let mut config = server.config();
    config.version = ProtocolVersion::V1_2;
    let c = Arc::new(KmipClient::new(config).unwrap());
    let e = KmipKeyManager::new(c.clone(), "1", WrapMode::ServerSide).unwrap_err();
    assert!(e.to_string().contains("needs KMIP 1.4"), "{e}");
    // Local wrapping works at 1.2 (Get exists since 1.0).
    let id = c.create_master_key("snapcrypt-v12").await.unwrap();
    let km = KmipKeyManager::new(c, id, WrapMode::LocalKeyWrap).unwrap();
    let w = km.wrap(DATA_KEY).await.unwrap();
    assert_eq!(&km.unwrap(&w).await.unwrap()[..], DATA_KEY);
}

#[tokio::test]
async fn pykmip_state_is_removed_with_the_server() {
    let server = PyKmip::start();
    let dir = server.state_dir();
    let c = client(&server);
    let id = c.create_master_key("snapcrypt-gone").await.unwrap();
    KmipKeyManager::new(c, id, WrapMode::LocalKeyWrap)
        .unwrap()
        .wrap(DATA_KEY)
        .await
        .unwrap();
    assert!(dir.join("pykmip.db").exists());
    drop(server);
    assert!(
        !dir.exists(),
        "the server's key database must not outlive the test"
    );
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    kmip: kmip_args::KmipArgs,
}

fn parse(args: &[&str]) -> kmip_args::KmipArgs {
    Cli::try_parse_from(std::iter::once("snapcrypt").chain(args.iter().copied()))
        .unwrap()
        .kmip
}

#[test]
fn kmip_args_parse_and_validate() {
    let a = parse(&[]);
    assert!(!a.configured());
    assert!(
        a.config()
            .unwrap_err()
            .to_string()
            .contains("--kmip-endpoint")
    );

    let a = parse(&[
        "--kmip-endpoint",
        "a:1",
        "--kmip-endpoint",
        "b:2,c:3",
        "--kmip-version",
        "1.2",
        "--kmip-local-wrap",
        "--kmip-timeout-secs",
        "3",
    ]);
    assert!(a.configured());
    assert_eq!(a.endpoints, vec!["a:1", "b:2", "c:3"]);
    assert_eq!(a.version, ProtocolVersion::V1_2);
    assert_eq!(a.wrap_mode(), WrapMode::LocalKeyWrap);
    assert_eq!(a.key_name, "snapcrypt-master");
    assert_eq!(a.timeout_secs, 3);
    let e = a.config().unwrap_err().to_string();
    assert!(e.contains("--kmip-ca FILE"), "{e}");

    let e = Cli::try_parse_from(["snapcrypt", "--kmip-version", "2.0"]).unwrap_err();
    assert!(
        e.to_string().contains("use one of 1.0, 1.1, 1.2, 1.3, 1.4"),
        "{e}"
    );
    assert!(Cli::try_parse_from(["snapcrypt", "--kmip-timeout-secs", "0"]).is_err());

    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    for flag in [
        "--kmip-endpoint <HOST:PORT>",
        "--kmip-ca <FILE>",
        "--kmip-cert <FILE>",
        "--kmip-key <FILE>",
        "--kmip-key-id <ID>",
        "--kmip-key-name <NAME>",
        "--kmip-server-name <NAME>",
        "--kmip-version <VERSION>",
        "--kmip-local-wrap",
        "--kmip-timeout-secs <SECONDS>",
        "WEAKER MODE",
    ] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
}

#[tokio::test]
async fn kmip_args_key_manager_finds_or_creates_then_uses_the_id() {
    let server = PyKmip::start();
    let f = |n: &str| server.file(n).display().to_string();
    let base = [
        "--kmip-endpoint".to_string(),
        server.endpoint(),
        "--kmip-ca".into(),
        f("ca.pem"),
        "--kmip-cert".into(),
        f("client.pem"),
        "--kmip-key".into(),
        f("client.key"),
    ];
    let argv = |extra: &[&str]| {
        let mut v: Vec<String> = base.to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = parse(
        &argv(&["--kmip-key-name", "cli-key"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let km = a.key_manager().await.unwrap();
    let id = km.active_key_id().await.unwrap();
    let w = km.wrap(DATA_KEY).await.unwrap();

    let a = parse(
        &argv(&["--kmip-key-id", &id])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let km2 = a.key_manager().await.unwrap();
    assert_eq!(km2.key_id(), id);
    assert_eq!(&km2.unwrap(&w).await.unwrap()[..], DATA_KEY);
}
