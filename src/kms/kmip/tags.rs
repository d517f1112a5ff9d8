//! KMIP 1.x tag numbers and enumeration values used by this client (KMIP 1.4 section 9.1.3).

#![allow(missing_docs)]

pub const ACTIVATION_DATE: u32 = 0x420001;
pub const ATTRIBUTE: u32 = 0x420008;
pub const ATTRIBUTE_INDEX: u32 = 0x420009;
pub const ATTRIBUTE_NAME: u32 = 0x42000A;
pub const ATTRIBUTE_VALUE: u32 = 0x42000B;
pub const BATCH_COUNT: u32 = 0x42000D;
pub const BATCH_ITEM: u32 = 0x42000F;
pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
pub const CRYPTOGRAPHIC_LENGTH: u32 = 0x42002A;
pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
pub const IV_COUNTER_NONCE: u32 = 0x42003D;
pub const KEY: u32 = 0x42003F;
pub const KEY_BLOCK: u32 = 0x420040;
pub const KEY_FORMAT_TYPE: u32 = 0x420042;
pub const KEY_MATERIAL: u32 = 0x420043;
pub const KEY_VALUE: u32 = 0x420045;
pub const MAXIMUM_ITEMS: u32 = 0x42004F;
pub const NAME: u32 = 0x420053;
pub const NAME_TYPE: u32 = 0x420054;
pub const NAME_VALUE: u32 = 0x420055;
pub const OBJECT_TYPE: u32 = 0x420057;
pub const OFFSET: u32 = 0x420058;
pub const OPERATION: u32 = 0x42005C;
pub const PROTOCOL_VERSION: u32 = 0x420069;
pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42006A;
pub const PROTOCOL_VERSION_MINOR: u32 = 0x42006B;
pub const QUERY_FUNCTION: u32 = 0x420074;
pub const REQUEST_HEADER: u32 = 0x420077;
pub const REQUEST_MESSAGE: u32 = 0x420078;
pub const REQUEST_PAYLOAD: u32 = 0x420079;
pub const RESPONSE_HEADER: u32 = 0x42007A;
pub const RESPONSE_MESSAGE: u32 = 0x42007B;
pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
pub const RESULT_MESSAGE: u32 = 0x42007D;
pub const RESULT_REASON: u32 = 0x42007E;
pub const RESULT_STATUS: u32 = 0x42007F;
pub const REVOCATION_MESSAGE: u32 = 0x420080;
pub const REVOCATION_REASON: u32 = 0x420081;
pub const REVOCATION_REASON_CODE: u32 = 0x420082;
pub const SERVER_INFORMATION: u32 = 0x420088;
pub const STATE: u32 = 0x42008D;
pub const SYMMETRIC_KEY: u32 = 0x42008F;
pub const TEMPLATE_ATTRIBUTE: u32 = 0x420091;
pub const TIME_STAMP: u32 = 0x420092;
pub const UNIQUE_BATCH_ITEM_ID: u32 = 0x420093;
pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
pub const VENDOR_IDENTIFICATION: u32 = 0x42009D;
pub const DATA: u32 = 0x4200C2;
pub const TAG_LENGTH: u32 = 0x4200CE;
pub const LOCATED_ITEMS: u32 = 0x4200D5;
pub const AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA: u32 = 0x4200FE;
pub const AUTHENTICATED_ENCRYPTION_TAG: u32 = 0x4200FF;

/// Object Type: Symmetric Key.
pub const OBJECT_TYPE_SYMMETRIC_KEY: u32 = 0x02;
/// Cryptographic Algorithm: AES.
pub const ALGORITHM_AES: u32 = 0x03;
/// Block Cipher Mode: GCM.
pub const MODE_GCM: u32 = 0x09;
/// Key Format Type: Raw and Transparent Symmetric Key.
pub const KEY_FORMAT_RAW: u32 = 0x01;
pub const KEY_FORMAT_TRANSPARENT_SYMMETRIC: u32 = 0x07;
/// Name Type: Uninterpreted Text String.
pub const NAME_TYPE_TEXT: u32 = 0x01;
/// Query Function values.
pub const QUERY_OPERATIONS: u32 = 0x01;
pub const QUERY_OBJECTS: u32 = 0x02;
pub const QUERY_SERVER_INFORMATION: u32 = 0x03;

/// Cryptographic Usage Mask bits.
pub const USAGE_ENCRYPT: i32 = 0x04;
pub const USAGE_DECRYPT: i32 = 0x08;
pub const USAGE_WRAP_KEY: i32 = 0x10;
pub const USAGE_UNWRAP_KEY: i32 = 0x20;
