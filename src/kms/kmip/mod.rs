//! A KMIP key manager: master keys in a KMIP server (KMIP 1.0–1.4 over mutual TLS), data
//! keys wrapped by the server's AES-256-GCM Encrypt (default) or, opt-in and weaker, locally
//! with AES-KWP under a master key fetched with Get.
//!
//! - [`KmipClient`]: the protocol client (failover across endpoints, typed operations).
//! - [`KmipKeyManager`]: the [`KeyManager`](crate::kms::KeyManager) over it, plus the key
//!   lifecycle helpers rotation uses (create, state, locate, server info).
//! - [`ttlv`]: the TTLV codec, which never panics on malformed input.

mod client;
mod error;
mod manager;
mod messages;
mod operations;
pub mod tags;
mod tls;
pub mod ttlv;
mod types;

pub use client::{DEFAULT_PORT, DEFAULT_TIMEOUT, KmipClient, KmipConfig, ServerInfo};
pub use error::{EndpointFailure, FailureStage, KmipError, OperationFailure};
pub use manager::{
    ALGORITHM_LOCAL_KWP, ALGORITHM_SERVER_GCM, DEFAULT_KEY_NAME, KIND, KmipKeyManager, WrapMode,
};
pub use messages::{EncryptOutput, KeyAttributes, QueryOutput};
pub use tls::TlsMaterial;
pub use types::{
    KeyState, Operation, ProtocolVersion, ResultReason, ResultStatus, RevocationReason,
};

/// Decode `data` as a KMIP response and run every response parser over it. The fuzz target
/// (`fuzz/fuzz_targets/ttlv_decode.rs`) and the seeded mutation test call this; it must
/// return (with whatever result) and never panic.
#[doc(hidden)]
pub fn fuzz_response(data: &[u8]) {
    let Ok(msg) = ttlv::decode(data) else { return };
    let _ = msg.encode();
    if let Ok(item) = messages::parse_response(msg)
        && let Some(p) = item.payload
    {
        let _ = messages::response_unique_id(&p);
        let _ = messages::parse_attributes(&p);
        let _ = messages::parse_locate(&p);
        let _ = messages::parse_encrypt(&p);
        let _ = messages::parse_decrypt(&p);
        let _ = messages::parse_get_symmetric_key(&p);
        let _ = messages::parse_discover_versions(&p);
        let _ = messages::parse_query(&p);
    }
}
