//! KMIP 1.x request payloads this client sends and the response payloads it reads, as typed
//! values over the TTLV tree. Only what the operations here need; unknown fields are ignored.

use zeroize::Zeroizing;

use super::tags::*;
use super::ttlv::{Ttlv, Value};
use super::types::{KeyState, Operation, ProtocolVersion, ResultReason, ResultStatus};

/// A whole request message with one batch item.
pub fn request(version: ProtocolVersion, op: Operation, payload: Vec<Ttlv>) -> Ttlv {
    Ttlv::structure(
        REQUEST_MESSAGE,
        vec![
            Ttlv::structure(
                REQUEST_HEADER,
                vec![protocol_version(version), Ttlv::integer(BATCH_COUNT, 1)],
            ),
            Ttlv::structure(
                BATCH_ITEM,
                vec![
                    Ttlv::enumeration(OPERATION, op.code()),
                    Ttlv::structure(REQUEST_PAYLOAD, payload),
                ],
            ),
        ],
    )
}

fn protocol_version(v: ProtocolVersion) -> Ttlv {
    Ttlv::structure(
        PROTOCOL_VERSION,
        vec![
            Ttlv::integer(PROTOCOL_VERSION_MAJOR, v.major),
            Ttlv::integer(PROTOCOL_VERSION_MINOR, v.minor),
        ],
    )
}

/// The one batch item of a response, not yet judged.
#[derive(Debug)]
pub struct ResponseItem {
    pub operation: Option<Operation>,
    pub status: ResultStatus,
    pub reason: Option<ResultReason>,
    pub message: Option<String>,
    pub payload: Option<Ttlv>,
}

/// Read the response message: its first batch item. `Err` says what is missing.
pub fn parse_response(msg: Ttlv) -> Result<ResponseItem, String> {
    if msg.tag != RESPONSE_MESSAGE {
        return Err(format!("tag {:06X} is not a Response Message", msg.tag));
    }
    if msg.child(RESPONSE_HEADER).is_none() {
        return Err("no Response Header".into());
    }
    let Value::Structure(items) = msg.value else {
        return Err("Response Message is not a structure".into());
    };
    let batch = items
        .into_iter()
        .find(|i| i.tag == BATCH_ITEM)
        .ok_or("no Batch Item")?;
    let status = batch
        .child(RESULT_STATUS)
        .and_then(Ttlv::as_enumeration)
        .map(ResultStatus::from_code)
        .ok_or("no Result Status")?;
    let operation = batch
        .child(OPERATION)
        .and_then(Ttlv::as_enumeration)
        .map(Operation::from_code);
    let reason = batch
        .child(RESULT_REASON)
        .and_then(Ttlv::as_enumeration)
        .map(ResultReason::from_code);
    let message = batch
        .child(RESULT_MESSAGE)
        .and_then(Ttlv::as_text)
        .map(str::to_owned);
    let Value::Structure(fields) = batch.value else {
        return Err("Batch Item is not a structure".into());
    };
    let payload = fields.into_iter().find(|i| i.tag == RESPONSE_PAYLOAD);
    Ok(ResponseItem {
        operation,
        status,
        reason,
        message,
        payload,
    })
}

/// An Attribute: its name and value (the tag of `value` is replaced by Attribute Value).
fn attribute(name: &str, value: Ttlv) -> Ttlv {
    Ttlv::structure(
        ATTRIBUTE,
        vec![
            Ttlv::text(ATTRIBUTE_NAME, name),
            Ttlv::new(ATTRIBUTE_VALUE, value.value),
        ],
    )
}

fn name_attribute(name: &str) -> Ttlv {
    attribute(
        "Name",
        Ttlv::structure(
            ATTRIBUTE_VALUE,
            vec![
                Ttlv::text(NAME_VALUE, name),
                Ttlv::enumeration(NAME_TYPE, NAME_TYPE_TEXT),
            ],
        ),
    )
}

/// Encrypt | Decrypt | Wrap Key | Unwrap Key: what a master key is for.
pub const MASTER_KEY_USAGE: i32 = USAGE_ENCRYPT | USAGE_DECRYPT | USAGE_WRAP_KEY | USAGE_UNWRAP_KEY;

fn aes256_template(name: &str, with_algorithm: bool) -> Ttlv {
    let mut attrs = Vec::new();
    if with_algorithm {
        attrs.push(attribute(
            "Cryptographic Algorithm",
            Ttlv::enumeration(0, ALGORITHM_AES),
        ));
        attrs.push(attribute("Cryptographic Length", Ttlv::integer(0, 256)));
    }
    attrs.push(attribute(
        "Cryptographic Usage Mask",
        Ttlv::integer(0, MASTER_KEY_USAGE),
    ));
    attrs.push(name_attribute(name));
    Ttlv::structure(TEMPLATE_ATTRIBUTE, attrs)
}

/// Create: an AES-256 symmetric key named `name`, for Encrypt, Decrypt, Wrap and Unwrap.
pub fn create_aes256(name: &str) -> Vec<Ttlv> {
    vec![
        Ttlv::enumeration(OBJECT_TYPE, OBJECT_TYPE_SYMMETRIC_KEY),
        aes256_template(name, true),
    ]
}

/// Register: the given raw AES-256 key named `name`.
pub fn register_aes256(name: &str, key: &[u8]) -> Vec<Ttlv> {
    vec![
        Ttlv::enumeration(OBJECT_TYPE, OBJECT_TYPE_SYMMETRIC_KEY),
        aes256_template(name, false),
        Ttlv::structure(
            SYMMETRIC_KEY,
            vec![Ttlv::structure(
                KEY_BLOCK,
                vec![
                    Ttlv::enumeration(KEY_FORMAT_TYPE, KEY_FORMAT_RAW),
                    Ttlv::structure(KEY_VALUE, vec![Ttlv::bytes(KEY_MATERIAL, key)]),
                    Ttlv::enumeration(CRYPTOGRAPHIC_ALGORITHM, ALGORITHM_AES),
                    Ttlv::integer(CRYPTOGRAPHIC_LENGTH, 256),
                ],
            )],
        ),
    ]
}

/// A payload that is only a Unique Identifier (Activate, Get, Destroy, ReKey, …).
pub fn unique_id(id: &str) -> Vec<Ttlv> {
    vec![Ttlv::text(UNIQUE_IDENTIFIER, id)]
}

/// GetAttributes of `names` (all attributes if empty).
pub fn get_attributes(id: &str, names: &[&str]) -> Vec<Ttlv> {
    let mut p = unique_id(id);
    p.extend(names.iter().map(|n| Ttlv::text(ATTRIBUTE_NAME, *n)));
    p
}

/// Locate the objects that carry the Name `name`.
pub fn locate_by_name(name: &str) -> Vec<Ttlv> {
    vec![name_attribute(name)]
}

/// Query the given functions.
pub fn query(functions: &[u32]) -> Vec<Ttlv> {
    functions
        .iter()
        .map(|f| Ttlv::enumeration(QUERY_FUNCTION, *f))
        .collect()
}

/// Revoke with a reason code and an optional message.
pub fn revoke(id: &str, reason: u32, message: Option<&str>) -> Vec<Ttlv> {
    let mut r = vec![Ttlv::enumeration(REVOCATION_REASON_CODE, reason)];
    if let Some(m) = message {
        r.push(Ttlv::text(REVOCATION_MESSAGE, m));
    }
    let mut p = unique_id(id);
    p.push(Ttlv::structure(REVOCATION_REASON, r));
    p
}

fn gcm_parameters(tag_len: i32) -> Ttlv {
    // PyKMIP refuses GCM without Tag Length (Invalid Field); Padding Method is not sent since
    // GCM has none and some servers reject it.
    Ttlv::structure(
        CRYPTOGRAPHIC_PARAMETERS,
        vec![
            Ttlv::enumeration(BLOCK_CIPHER_MODE, MODE_GCM),
            Ttlv::enumeration(CRYPTOGRAPHIC_ALGORITHM, ALGORITHM_AES),
            Ttlv::integer(TAG_LENGTH, tag_len),
        ],
    )
}

/// Encrypt with AES-GCM under key `id`: client-chosen IV, additional data (omitted when
/// empty: the field exists from KMIP 1.4 only), tag length.
pub fn encrypt_gcm(id: &str, plaintext: &[u8], iv: &[u8], aad: &[u8], tag_len: i32) -> Vec<Ttlv> {
    let mut p = vec![
        Ttlv::text(UNIQUE_IDENTIFIER, id),
        gcm_parameters(tag_len),
        Ttlv::bytes(DATA, plaintext),
        Ttlv::bytes(IV_COUNTER_NONCE, iv),
    ];
    if !aad.is_empty() {
        p.push(Ttlv::bytes(AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad));
    }
    p
}

/// Decrypt with AES-GCM under key `id` (additional data omitted when empty).
pub fn decrypt_gcm(id: &str, ciphertext: &[u8], iv: &[u8], aad: &[u8], tag: &[u8]) -> Vec<Ttlv> {
    let tag_len = i32::try_from(tag.len()).unwrap_or(i32::MAX);
    let mut p = vec![
        Ttlv::text(UNIQUE_IDENTIFIER, id),
        gcm_parameters(tag_len),
        Ttlv::bytes(DATA, ciphertext),
        Ttlv::bytes(IV_COUNTER_NONCE, iv),
    ];
    if !aad.is_empty() {
        p.push(Ttlv::bytes(AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad));
    }
    p.push(Ttlv::bytes(AUTHENTICATED_ENCRYPTION_TAG, tag));
    p
}

/// The Unique Identifier of a response payload (Create, Register, Activate, ReKey, …).
pub fn response_unique_id(payload: &Ttlv) -> Result<String, String> {
    payload
        .child(UNIQUE_IDENTIFIER)
        .and_then(Ttlv::as_text)
        .map(str::to_owned)
        .ok_or_else(|| "no Unique Identifier in the response".into())
}

/// Attributes of a managed object, as returned by GetAttributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyAttributes {
    pub unique_identifier: String,
    pub state: Option<KeyState>,
    pub names: Vec<String>,
    pub object_type: Option<u32>,
    pub cryptographic_algorithm: Option<u32>,
    pub cryptographic_length: Option<i32>,
    pub usage_mask: Option<i32>,
    /// Seconds since the Unix epoch.
    pub initial_date: Option<i64>,
    pub activation_date: Option<i64>,
}

pub fn parse_attributes(payload: &Ttlv) -> Result<KeyAttributes, String> {
    let mut out = KeyAttributes {
        unique_identifier: response_unique_id(payload)?,
        ..Default::default()
    };
    for a in payload.children_with(ATTRIBUTE) {
        let (Some(name), Some(v)) = (
            a.child(ATTRIBUTE_NAME).and_then(Ttlv::as_text),
            a.child(ATTRIBUTE_VALUE),
        ) else {
            continue;
        };
        match name {
            "State" => out.state = v.as_enumeration().map(KeyState::from_code),
            "Name" => out.names.extend(
                v.child(NAME_VALUE)
                    .and_then(Ttlv::as_text)
                    .map(str::to_owned),
            ),
            "Object Type" => out.object_type = v.as_enumeration(),
            "Cryptographic Algorithm" => out.cryptographic_algorithm = v.as_enumeration(),
            "Cryptographic Length" => out.cryptographic_length = v.as_integer(),
            "Cryptographic Usage Mask" => out.usage_mask = v.as_integer(),
            "Initial Date" => out.initial_date = v.as_date_time(),
            "Activation Date" => out.activation_date = v.as_date_time(),
            _ => {}
        }
    }
    Ok(out)
}

/// The identifiers a Locate found.
pub fn parse_locate(payload: &Ttlv) -> Vec<String> {
    payload
        .children_with(UNIQUE_IDENTIFIER)
        .filter_map(Ttlv::as_text)
        .map(str::to_owned)
        .collect()
}

/// The result of Encrypt.
#[derive(Debug, Clone)]
pub struct EncryptOutput {
    pub data: Vec<u8>,
    /// Set when the server chose the IV.
    pub iv: Option<Vec<u8>>,
    /// The AES-GCM tag (KMIP 1.4 and later).
    pub tag: Option<Vec<u8>>,
}

pub fn parse_encrypt(payload: &Ttlv) -> Result<EncryptOutput, String> {
    let field = |tag| {
        payload
            .child(tag)
            .and_then(Ttlv::as_bytes)
            .map(<[u8]>::to_vec)
    };
    Ok(EncryptOutput {
        data: field(DATA).ok_or("no Data in the Encrypt response")?,
        iv: field(IV_COUNTER_NONCE),
        tag: field(AUTHENTICATED_ENCRYPTION_TAG),
    })
}

/// The Data of a Decrypt response, wiped on drop.
pub fn parse_decrypt(payload: &Ttlv) -> Result<Zeroizing<Vec<u8>>, String> {
    payload
        .child(DATA)
        .and_then(Ttlv::as_bytes)
        .map(|d| Zeroizing::new(d.to_vec()))
        .ok_or_else(|| "no Data in the Decrypt response".into())
}

/// The raw key bytes of a Get response for a symmetric key, wiped on drop. Accepts the Raw
/// and Transparent Symmetric Key formats.
pub fn parse_get_symmetric_key(payload: &Ttlv) -> Result<Zeroizing<Vec<u8>>, String> {
    let block = payload
        .child(SYMMETRIC_KEY)
        .and_then(|k| k.child(KEY_BLOCK))
        .ok_or("the object is not a symmetric key (no Symmetric Key / Key Block)")?;
    let value = block
        .child(KEY_VALUE)
        .ok_or("no Key Value (is the key wrapped by the server?)")?;
    let material = value
        .child(KEY_MATERIAL)
        .ok_or("no Key Material in the Key Value")?;
    let bytes = match material.as_bytes() {
        Some(b) => b,
        None => material
            .child(KEY)
            .and_then(Ttlv::as_bytes)
            .ok_or("Key Material is neither Raw bytes nor a Transparent Symmetric Key")?,
    };
    Ok(Zeroizing::new(bytes.to_vec()))
}

/// Protocol versions of a DiscoverVersions response, the server's preference first.
pub fn parse_discover_versions(payload: &Ttlv) -> Vec<ProtocolVersion> {
    payload
        .children_with(PROTOCOL_VERSION)
        .filter_map(|v| {
            Some(ProtocolVersion::new(
                v.child(PROTOCOL_VERSION_MAJOR)?.as_integer()?,
                v.child(PROTOCOL_VERSION_MINOR)?.as_integer()?,
            ))
        })
        .collect()
}

/// What Query said about the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOutput {
    pub operations: Vec<Operation>,
    pub object_types: Vec<u32>,
    pub vendor_identification: Option<String>,
    /// The text strings found in Server Information (its content is vendor-defined).
    pub server_information: Vec<String>,
}

pub fn parse_query(payload: &Ttlv) -> QueryOutput {
    fn texts(t: &Ttlv, out: &mut Vec<String>) {
        match &t.value {
            Value::TextString(s) => out.push(s.clone()),
            Value::Structure(items) => items.iter().for_each(|i| texts(i, out)),
            _ => {}
        }
    }
    let mut server_information = Vec::new();
    if let Some(si) = payload.child(SERVER_INFORMATION) {
        texts(si, &mut server_information);
    }
    QueryOutput {
        operations: payload
            .children_with(OPERATION)
            .filter_map(Ttlv::as_enumeration)
            .map(Operation::from_code)
            .collect(),
        object_types: payload
            .children_with(OBJECT_TYPE)
            .filter_map(Ttlv::as_enumeration)
            .collect(),
        vendor_identification: payload
            .child(VENDOR_IDENTIFICATION)
            .and_then(Ttlv::as_text)
            .map(str::to_owned),
        server_information,
    }
}

#[cfg(test)]
#[path = "messages_tests.rs"]
mod tests;
