//! The KMIP client against a real PyKMIP 0.11 server (started per test): operations,
//! failover, and the errors a user meets (wrong CA, client certificate, server down,
//! unknown key, unsupported operation or version).

#[path = "support/kmip.rs"]
mod pykmip;
#[path = "support/tcp_proxy.rs"]
mod tcp_proxy;

use std::net::TcpListener;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use pykmip::{PyKmip, closed_endpoint};
use snapcrypt::kms::kmip::{
    FailureStage, KeyState, KmipClient, KmipConfig, KmipError, Operation, ProtocolVersion,
    ResultReason, RevocationReason, TlsMaterial,
};

fn client(config: KmipConfig) -> KmipClient {
    KmipClient::new(config).expect("valid configuration")
}

#[tokio::test]
async fn create_activate_attributes_locate_and_server_info() {
    let server = PyKmip::start();
    let c = client(server.config());

    let pre = c.create_aes256_key("snapcrypt-test-pre").await.unwrap();
    assert_eq!(c.key_state(&pre).await.unwrap(), KeyState::PreActive);

    let id = c.create_master_key("snapcrypt-test-master").await.unwrap();
    assert_eq!(c.key_state(&id).await.unwrap(), KeyState::Active);
    let a = c
        .get_attributes(
            &id,
            &["State", "Name", "Initial Date", "Cryptographic Length"],
        )
        .await
        .unwrap();
    assert_eq!(a.unique_identifier, id);
    assert_eq!(a.state, Some(KeyState::Active));
    assert_eq!(a.names, vec!["snapcrypt-test-master".to_string()]);
    assert_eq!(a.cryptographic_length, Some(256));
    assert!(a.initial_date.is_some_and(|d| d > 1_700_000_000));
    let all = c.get_attributes(&id, &[]).await.unwrap();
    assert_eq!(all.usage_mask, Some(0x04 | 0x08 | 0x10 | 0x20));

    assert_eq!(
        c.locate_by_name("snapcrypt-test-master").await.unwrap(),
        vec![id.clone()]
    );
    assert!(c.locate_by_name("no-such-name").await.unwrap().is_empty());

    let info = c.server_info().await.unwrap();
    assert_eq!(info.endpoint, server.endpoint());
    assert!(info.versions.contains(&ProtocolVersion::V1_4), "{info:?}");
    assert!(info.operations.contains(&Operation::Encrypt), "{info:?}");
    assert!(!info.operations.contains(&Operation::ReKey), "{info:?}");
    println!("PyKMIP server info: {info:?}");
}

#[tokio::test]
async fn encrypt_decrypt_round_trip_and_known_answer() {
    let server = PyKmip::start();
    let c = client(server.config());
    let id = c.create_master_key("snapcrypt-test-ed").await.unwrap();
    let pt = b"a 32-byte data key, for example!";
    let iv = [7u8; 12];
    let out = c.encrypt_gcm(&id, pt, &iv, b"aad", 16).await.unwrap();
    assert_eq!(out.data.len(), pt.len());
    assert_ne!(&out.data[..], &pt[..]);
    let tag = out.tag.expect("KMIP 1.4 returns the GCM tag");
    assert_eq!(tag.len(), 16);
    let back = c
        .decrypt_gcm(&id, &out.data, &iv, b"aad", &tag)
        .await
        .unwrap();
    assert_eq!(&back[..], &pt[..]);

    // A wrong tag or wrong additional data fails (PyKMIP: General Failure).
    let mut bad = tag.clone();
    bad[0] ^= 1;
    let e = c
        .decrypt_gcm(&id, &out.data, &iv, b"aad", &bad)
        .await
        .unwrap_err();
    assert_eq!(e.result_reason(), Some(ResultReason::GeneralFailure), "{e}");
    assert!(
        c.decrypt_gcm(&id, &out.data, &iv, b"other", &tag)
            .await
            .is_err()
    );

    // A registered key: the server's AES-GCM equals local AES-GCM.
    let key: Vec<u8> = (0u8..32).collect();
    let kid = c
        .register_aes256_key("snapcrypt-test-known", &key)
        .await
        .unwrap();
    c.activate(&kid).await.unwrap();
    let out = c.encrypt_gcm(&kid, pt, &iv, b"aad", 16).await.unwrap();
    let local = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
    let mut expect = pt.to_vec();
    local
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(b"aad"),
            &mut expect,
        )
        .unwrap();
    let mut got = out.data.clone();
    got.extend_from_slice(&out.tag.unwrap());
    assert_eq!(got, expect);
    assert_eq!(&c.get_symmetric_key(&kid).await.unwrap()[..], &key[..]);
}

#[tokio::test]
async fn rekey_is_reported_as_not_supported() {
    let server = PyKmip::start();
    let c = client(server.config());
    let id = c.create_master_key("snapcrypt-test-rekey").await.unwrap();
    let e = c.rekey(&id).await.unwrap_err();
    assert!(e.is_not_supported(), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("does not support ReKey"), "{msg}");
    assert!(msg.contains("Operation Not Supported"), "{msg}");
    assert!(msg.contains("Rekey operation is not supported"), "{msg}");
    println!("{msg}");
}

#[tokio::test]
async fn encrypt_under_kmip_1_0_is_refused_clearly() {
    let server = PyKmip::start();
    let id = client(server.config())
        .create_master_key("snapcrypt-test-v10")
        .await
        .unwrap();
    let mut config = server.config();
    config.version = ProtocolVersion::V1_0;
    let c = client(config);
    // Other operations work at 1.0.
    assert_eq!(c.key_state(&id).await.unwrap(), KeyState::Active);
    // Additional data is a KMIP 1.4 field: refused before sending.
    let e = c
        .encrypt_gcm(&id, b"data", &[0; 12], b"aad", 16)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("additional data needs KMIP 1.4"),
        "{e}"
    );
    let e = c
        .encrypt_gcm(&id, b"data", &[0; 12], b"", 16)
        .await
        .unwrap_err();
    assert_eq!(
        e.result_reason(),
        Some(ResultReason::OperationNotSupported),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("refused Encrypt"), "{msg}");
    assert!(msg.contains("(KMIP 1.0)"), "{msg}");
    assert!(msg.contains("exists from KMIP 1.2 on"), "{msg}");
    println!("{msg}");
}

#[tokio::test]
async fn unknown_key_id_and_revoked_key() {
    let server = PyKmip::start();
    let c = client(server.config());
    let e = c.key_state("4242").await.unwrap_err();
    assert_eq!(e.result_reason(), Some(ResultReason::ItemNotFound), "{e}");
    assert!(e.to_string().contains("check the key id"), "{e}");

    let id = c.create_master_key("snapcrypt-test-revoke").await.unwrap();
    c.revoke(&id, RevocationReason::CessationOfOperation, Some("test"))
        .await
        .unwrap();
    assert_eq!(c.key_state(&id).await.unwrap(), KeyState::Deactivated);
    let e = c
        .encrypt_gcm(&id, b"data", &[0; 12], b"", 16)
        .await
        .unwrap_err();
    assert_eq!(
        e.result_reason(),
        Some(ResultReason::PermissionDenied),
        "{e}"
    );
    c.destroy(&id).await.unwrap();
    let e = c.get_symmetric_key(&id).await.unwrap_err();
    assert_eq!(e.result_reason(), Some(ResultReason::ItemNotFound), "{e}");

    // Another client identity does not see this client's keys (PyKMIP: owner = cert CN).
    let mut other = server.config();
    other.tls = server.tls_as("client2");
    let id2 = c.create_master_key("snapcrypt-test-owner").await.unwrap();
    let e = client(other).get_symmetric_key(&id2).await.unwrap_err();
    assert_eq!(
        e.result_reason(),
        Some(ResultReason::PermissionDenied),
        "{e}"
    );
}

#[tokio::test]
async fn failover_skips_a_closed_endpoint_and_remembers_who_answered() {
    let server = PyKmip::start();
    let dead = closed_endpoint();
    let mut config = server.config();
    config.endpoints = vec![dead.clone(), server.endpoint()];
    let c = client(config);
    assert_eq!(c.answered_by(), None);
    let id = c
        .create_master_key("snapcrypt-test-failover")
        .await
        .unwrap();
    assert_eq!(c.answered_by(), Some(server.endpoint()));
    assert_eq!(c.key_state(&id).await.unwrap(), KeyState::Active);
    assert_eq!(c.endpoints(), vec![dead, server.endpoint()]);
}

/// The server behind the kept connection dies in the middle of a run of operations (as in a
/// key rotation, which unwraps and wraps one data key after another): the next operation
/// goes to the next endpoint, and the run finishes there with the same answers.
#[tokio::test]
async fn a_server_dying_mid_run_fails_over_to_the_next_endpoint() {
    let server = PyKmip::start();
    // The first endpoint is the same server behind a proxy that can die.
    let proxy = tcp_proxy::TcpProxy::start(&server.endpoint());
    let mut config = server.config();
    config.endpoints = vec![proxy.endpoint(), server.endpoint()];
    let c = client(config);
    let id = c.create_master_key("snapcrypt-test-midrun").await.unwrap();
    let keys: Vec<[u8; 32]> = (0..4u8).map(|i| [i; 32]).collect();
    let iv = [9u8; 12];
    let mut wrapped = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if i == 2 {
            // Half-way: the kept connection is cut and the endpoint is gone.
            assert_eq!(c.answered_by(), Some(proxy.endpoint()));
            proxy.kill();
        }
        let out = c.encrypt_gcm(&id, k, &iv, b"aad", 16).await.unwrap();
        wrapped.push(out);
    }
    assert_eq!(c.answered_by(), Some(server.endpoint()));
    for (k, out) in keys.iter().zip(&wrapped) {
        let tag = out.tag.as_deref().expect("tag");
        let back = c
            .decrypt_gcm(&id, &out.data, &iv, b"aad", tag)
            .await
            .unwrap();
        assert_eq!(&back[..], &k[..]);
    }
    assert_eq!(c.key_state(&id).await.unwrap(), KeyState::Active);
}

#[tokio::test]
async fn server_down_on_every_endpoint() {
    // Started for its PKI only: both endpoints below are closed ports.
    let server = PyKmip::start();
    let (a, b) = (closed_endpoint(), closed_endpoint());
    let mut config = server.config();
    config.endpoints = vec![a.clone(), b.clone()];
    let e = client(config).key_state("1").await.unwrap_err();
    let KmipError::Unreachable { attempts } = &e else {
        panic!("expected Unreachable, got {e:?}")
    };
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].endpoint, a);
    assert_eq!(attempts[1].endpoint, b);
    assert!(attempts.iter().all(|f| f.stage == FailureStage::Connect));
    let msg = e.to_string();
    assert!(
        msg.contains("no KMIP server could be reached (2 endpoints tried"),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("connection refused"), "{msg}");
    println!("{msg}");
}

fn tls_failure(e: &KmipError) -> String {
    match e {
        KmipError::Unreachable { attempts } if attempts.len() == 1 => {
            assert_eq!(attempts[0].stage, FailureStage::Tls, "{e}");
            attempts[0].detail.clone()
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_ca_is_refused_at_the_handshake() {
    let server = PyKmip::start();
    let mut config = server.config();
    config.tls = TlsMaterial::from_files(
        &server.file("other-ca.pem"),
        Some(&server.file("client.pem")),
        Some(&server.file("client.key")),
    )
    .unwrap();
    let e = client(config).key_state("1").await.unwrap_err();
    let detail = tls_failure(&e);
    assert!(
        detail.contains("not signed by a CA in the configured KMIP CA file (--kmip-ca)"),
        "{detail}"
    );
    println!("{e}");
}

#[tokio::test]
async fn missing_client_certificate_is_refused() {
    let server = PyKmip::start();
    let mut config = server.config();
    config.tls = TlsMaterial::from_files(&server.file("ca.pem"), None, None).unwrap();
    let e = client(config).key_state("1").await.unwrap_err();
    let detail = tls_failure(&e);
    assert!(detail.contains("client certificate"), "{detail}");
    println!("{e}");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let server = PyKmip::start();
    let mut config = server.config();
    config.tls = server.tls_as("other-client");
    let e = client(config).key_state("1").await.unwrap_err();
    let detail = tls_failure(&e);
    assert!(
        detail.contains("did not accept our client certificate"),
        "{detail}"
    );
    println!("{e}");
}

#[tokio::test]
async fn client_certificate_without_client_auth_is_refused_by_kmip() {
    let server = PyKmip::start();
    let mut config = server.config();
    config.tls = server.tls_as("client-noeku");
    let e = client(config).key_state("1").await.unwrap_err();
    assert_eq!(
        e.result_reason(),
        Some(ResultReason::AuthenticationNotSuccessful),
        "{e}"
    );
    assert!(e.to_string().contains("client authentication"), "{e}");
}

#[tokio::test]
async fn a_silent_endpoint_times_out_and_the_next_answers() {
    let server = PyKmip::start();
    // Accepts TCP (the kernel completes it) but never speaks TLS.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_ep = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
    let mut config = server.config();
    config.endpoints = vec![silent_ep.clone()];
    config.timeout = Duration::from_millis(500);
    let e = client(config.clone()).key_state("1").await.unwrap_err();
    let detail = tls_failure(&e);
    assert!(
        detail.contains("handshake not finished within 0.5 s"),
        "{detail}"
    );

    config.endpoints = vec![silent_ep, server.endpoint()];
    let c = client(config);
    let id = c.create_master_key("snapcrypt-test-timeout").await.unwrap();
    assert_eq!(c.answered_by(), Some(server.endpoint()));
    assert_eq!(c.key_state(&id).await.unwrap(), KeyState::Active);
}

#[test]
fn bad_configuration_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e = TlsMaterial::from_files(&missing, None, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read the KMIP CA certificate file"),
        "{e}"
    );

    std::fs::write(dir.path().join("empty.pem"), "not pem").unwrap();
    let tls = TlsMaterial::from_files(&dir.path().join("empty.pem"), None, None).unwrap();
    let e = KmipClient::new(KmipConfig::new(vec!["h:1".into()], tls)).unwrap_err();
    assert!(e.to_string().contains("holds no certificate"), "{e}");

    let e = KmipClient::new(KmipConfig::new(vec![], TlsMaterial::default())).unwrap_err();
    assert!(e.to_string().contains("--kmip-endpoint"), "{e}");
    let e =
        KmipClient::new(KmipConfig::new(vec!["::1".into()], TlsMaterial::default())).unwrap_err();
    assert!(e.to_string().contains("brackets"), "{e}");
}

/// A scripted KMIP server over TLS (the test PKI's server certificate): each accepted
/// connection reads one request per scripted answer and writes the answer's bytes; `None`
/// closes the connection without answering; an empty answer never answers.
mod fake {
    use std::path::Path;
    use std::sync::Arc;

    use snapcrypt::kms::kmip::tags::*;
    use snapcrypt::kms::kmip::ttlv::Ttlv;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    pub async fn serve(state: &Path, connections: Vec<Vec<Option<Vec<u8>>>>) -> String {
        let chain = CertificateDer::pem_file_iter(state.join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(state.join("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for answers in connections {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                for answer in answers {
                    let mut header = [0u8; 8];
                    tls.read_exact(&mut header).await.unwrap();
                    let len = u32::from_be_bytes(header[4..8].try_into().unwrap()) as usize;
                    let mut body = vec![0u8; len];
                    tls.read_exact(&mut body).await.unwrap();
                    match answer {
                        // Silent: keep the connection open and never answer.
                        Some(bytes) if bytes.is_empty() => std::future::pending::<()>().await,
                        Some(bytes) => tls.write_all(&bytes).await.unwrap(),
                        None => break,
                    }
                    tls.flush().await.unwrap();
                }
                let _ = tls.shutdown().await;
            }
        });
        endpoint
    }

    /// A successful GetAttributes response whose State is `state`.
    pub fn state_response(op: u32, state: u32) -> Vec<u8> {
        Ttlv::structure(
            RESPONSE_MESSAGE,
            vec![
                Ttlv::structure(
                    RESPONSE_HEADER,
                    vec![
                        Ttlv::structure(
                            PROTOCOL_VERSION,
                            vec![
                                Ttlv::integer(PROTOCOL_VERSION_MAJOR, 1),
                                Ttlv::integer(PROTOCOL_VERSION_MINOR, 4),
                            ],
                        ),
                        Ttlv::date_time(TIME_STAMP, 0),
                        Ttlv::integer(BATCH_COUNT, 1),
                    ],
                ),
                Ttlv::structure(
                    BATCH_ITEM,
                    vec![
                        Ttlv::enumeration(OPERATION, op),
                        Ttlv::enumeration(RESULT_STATUS, 0),
                        Ttlv::structure(
                            RESPONSE_PAYLOAD,
                            vec![
                                Ttlv::text(UNIQUE_IDENTIFIER, "7"),
                                Ttlv::structure(
                                    ATTRIBUTE,
                                    vec![
                                        Ttlv::text(ATTRIBUTE_NAME, "State"),
                                        Ttlv::enumeration(ATTRIBUTE_VALUE, state),
                                    ],
                                ),
                            ],
                        ),
                    ],
                ),
            ],
        )
        .encode()
        .to_vec()
    }
}

#[tokio::test]
async fn hostile_or_broken_answers_give_errors_not_panics() {
    let pki = tempfile::tempdir().unwrap();
    let gen_certs =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/kmip/gen-certs.sh");
    assert!(
        std::process::Command::new("bash")
            .arg(gen_certs)
            .arg(pki.path())
            .status()
            .unwrap()
            .success()
    );
    let get_attributes = Operation::GetAttributes.code();
    let good = fake::state_response(get_attributes, 2);
    let mut bad_boolean = good.clone();
    // Make the Result Status an invalid Boolean (type 0x06, value 2).
    let at = bad_boolean
        .windows(4)
        .position(|w| w == [0x42, 0x00, 0x7f, 0x05])
        .unwrap();
    bad_boolean[at + 3] = 0x06;
    bad_boolean[at + 7] = 8;
    bad_boolean[at + 8..at + 16].copy_from_slice(&2u64.to_be_bytes());
    let mut huge = good.clone();
    huge[4..8].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            "is this a KMIP server?",
        ),
        (huge, "exceeds the 4194304-byte limit"),
        (bad_boolean, "malformed response: TTLV Boolean"),
        (
            fake::state_response(Operation::Get.code(), 2),
            "the answer is for Get",
        ),
        (
            good[..good.len() - 8].to_vec(),
            "closed the connection in the middle of its answer",
        ),
        // Nothing written, connection left open: the request times out.
        (vec![], "no complete answer within 1 s"),
    ];
    for (answer, expected) in cases {
        let ep = fake::serve(pki.path(), vec![vec![Some(answer)]]).await;
        let mut config = KmipConfig::new(
            vec![ep],
            TlsMaterial::from_files(&pki.path().join("ca.pem"), None, None).unwrap(),
        );
        config.timeout = Duration::from_secs(1);
        let e = client(config).key_state("7").await.unwrap_err();
        assert!(
            e.to_string().contains(expected),
            "want {expected:?}, got: {e}"
        );
    }

    // A kept connection that the server closed is replaced, and an idempotent request is
    // resent: the first connection answers once then closes without answering the second.
    let ep = fake::serve(
        pki.path(),
        vec![vec![Some(good.clone()), None], vec![Some(good)]],
    )
    .await;
    let config = KmipConfig::new(
        vec![ep],
        TlsMaterial::from_files(&pki.path().join("ca.pem"), None, None).unwrap(),
    );
    let c = client(config);
    assert_eq!(c.key_state("7").await.unwrap(), KeyState::Active);
    assert_eq!(c.key_state("7").await.unwrap(), KeyState::Active);
}
