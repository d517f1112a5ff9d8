//! KMIP TTLV (Tag-Type-Length-Value) encoding, KMIP 1.0–1.4 section 9.1.
//!
//! Written by hand rather than with the `kmip-ttlv` crate (0.3.5): that crate is a serde
//! (de)serializer whose enum variants are picked by string matchers on earlier values
//! (`"if 0x42000A==State"`), has no nesting-depth limit on untrusted input, cannot encode or
//! decode Interval, and its sync/async modes are mutually exclusive cargo features. A KMIP
//! response is small and its attribute values are polymorphic, so a plain tree of [`Ttlv`]
//! items that typed code reads (`messages.rs`) is simpler and easier to make panic-free.
//!
//! The decoder never panics: every length is checked against the bytes that remain before
//! anything is allocated, nesting is bounded by [`MAX_DEPTH`], and a whole message is bounded
//! by [`MAX_MESSAGE_LEN`]. Byte strings are wiped from memory when dropped (they may hold key
//! material: a Get response, an Encrypt request).

use zeroize::Zeroizing;

/// The largest message (header included) this client sends or accepts. KMIP responses for
/// the operations used here are a few hundred bytes; 4 MiB leaves room for large Query or
/// Locate answers while bounding what a hostile server can make us allocate.
pub const MAX_MESSAGE_LEN: usize = 4 * 1024 * 1024;
/// The deepest nesting of structures accepted. KMIP 1.x messages nest about 7 levels.
pub const MAX_DEPTH: usize = 32;
/// Tag, type and length: the fixed part of every item.
pub const HEADER_LEN: usize = 8;

const TYPE_STRUCTURE: u8 = 0x01;
const TYPE_INTEGER: u8 = 0x02;
const TYPE_LONG_INTEGER: u8 = 0x03;
const TYPE_BIG_INTEGER: u8 = 0x04;
const TYPE_ENUMERATION: u8 = 0x05;
const TYPE_BOOLEAN: u8 = 0x06;
const TYPE_TEXT_STRING: u8 = 0x07;
const TYPE_BYTE_STRING: u8 = 0x08;
const TYPE_DATE_TIME: u8 = 0x09;
const TYPE_INTERVAL: u8 = 0x0A;

/// One TTLV item: a tag and a typed value.
#[derive(Clone, PartialEq, Eq)]
pub struct Ttlv {
    pub tag: u32,
    pub value: Value,
}

/// A TTLV value. Byte strings are zeroized on drop; Debug never shows their contents.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Structure(Vec<Ttlv>),
    Integer(i32),
    LongInteger(i64),
    /// Big-endian two's complement, a multiple of 8 bytes.
    BigInteger(Vec<u8>),
    Enumeration(u32),
    Boolean(bool),
    TextString(String),
    ByteString(Zeroizing<Vec<u8>>),
    /// Seconds since the Unix epoch.
    DateTime(i64),
    /// Seconds.
    Interval(u32),
}

impl std::fmt::Debug for Ttlv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:06X} {:?}", self.tag, self.value)
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Structure(items) => f.debug_list().entries(items).finish(),
            Value::Integer(v) => write!(f, "Integer({v})"),
            Value::LongInteger(v) => write!(f, "LongInteger({v})"),
            Value::BigInteger(v) => write!(f, "BigInteger({} bytes)", v.len()),
            Value::Enumeration(v) => write!(f, "Enumeration({v:#x})"),
            Value::Boolean(v) => write!(f, "Boolean({v})"),
            Value::TextString(v) => write!(f, "TextString({v:?})"),
            Value::ByteString(v) => write!(f, "ByteString({} bytes)", v.len()),
            Value::DateTime(v) => write!(f, "DateTime({v})"),
            Value::Interval(v) => write!(f, "Interval({v})"),
        }
    }
}

/// Why bytes are not a well-formed TTLV item. Offsets count from the start of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated TTLV at byte {offset}: need {needed} more bytes, {available} left")]
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("unknown TTLV type {item_type:#04x} (tag {tag:06X}) at byte {offset}")]
    UnknownType {
        offset: usize,
        tag: u32,
        item_type: u8,
    },
    #[error("TTLV item {tag:06X} at byte {offset} has length {len}, invalid for its type")]
    BadLength { offset: usize, tag: u32, len: u32 },
    #[error("TTLV Boolean {tag:06X} at byte {offset} is neither 0 nor 1")]
    BadBoolean { offset: usize, tag: u32 },
    #[error("TTLV Text String {tag:06X} at byte {offset} is not UTF-8")]
    BadUtf8 { offset: usize, tag: u32 },
    #[error("TTLV structures nested deeper than {MAX_DEPTH} at byte {offset}")]
    TooDeep { offset: usize },
    #[error("TTLV message of {len} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLong { len: usize },
    #[error("{extra} bytes after the TTLV message")]
    TrailingBytes { extra: usize },
}

impl Ttlv {
    pub fn new(tag: u32, value: Value) -> Self {
        Self { tag, value }
    }
    pub fn structure(tag: u32, items: Vec<Ttlv>) -> Self {
        Self::new(tag, Value::Structure(items))
    }
    pub fn integer(tag: u32, v: i32) -> Self {
        Self::new(tag, Value::Integer(v))
    }
    pub fn enumeration(tag: u32, v: u32) -> Self {
        Self::new(tag, Value::Enumeration(v))
    }
    pub fn text(tag: u32, v: impl Into<String>) -> Self {
        Self::new(tag, Value::TextString(v.into()))
    }
    pub fn bytes(tag: u32, v: &[u8]) -> Self {
        Self::new(tag, Value::ByteString(Zeroizing::new(v.to_vec())))
    }
    pub fn boolean(tag: u32, v: bool) -> Self {
        Self::new(tag, Value::Boolean(v))
    }
    pub fn date_time(tag: u32, v: i64) -> Self {
        Self::new(tag, Value::DateTime(v))
    }

    /// The children of a structure (empty for any other type).
    pub fn children(&self) -> &[Ttlv] {
        match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        }
    }
    /// The first child with `tag`.
    pub fn child(&self, tag: u32) -> Option<&Ttlv> {
        self.children().iter().find(|c| c.tag == tag)
    }
    /// Every child with `tag`, in order.
    pub fn children_with(&self, tag: u32) -> impl Iterator<Item = &Ttlv> {
        self.children().iter().filter(move |c| c.tag == tag)
    }
    pub fn as_integer(&self) -> Option<i32> {
        match self.value {
            Value::Integer(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_enumeration(&self) -> Option<u32> {
        match self.value {
            Value::Enumeration(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::TextString(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::ByteString(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_date_time(&self) -> Option<i64> {
        match self.value {
            Value::DateTime(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_boolean(&self) -> Option<bool> {
        match self.value {
            Value::Boolean(v) => Some(v),
            _ => None,
        }
    }

    /// Encode this item (and its children). The buffer is wiped when dropped since it may
    /// hold key material.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.encoded_len()));
        self.encode_into(&mut out);
        out
    }

    /// Length of the encoding, header and padding included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + padded(self.value_len())
    }

    fn value_len(&self) -> usize {
        match &self.value {
            Value::Structure(items) => items.iter().map(Ttlv::encoded_len).sum(),
            Value::Integer(_) | Value::Enumeration(_) | Value::Interval(_) => 4,
            Value::LongInteger(_) | Value::Boolean(_) | Value::DateTime(_) => 8,
            Value::BigInteger(v) => v.len(),
            Value::TextString(v) => v.len(),
            Value::ByteString(v) => v.len(),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let (ty, len) = (type_code(&self.value), self.value_len());
        out.extend_from_slice(&self.tag.to_be_bytes()[1..]);
        out.push(ty);
        // Lengths beyond u32 cannot be expressed; messages are far below MAX_MESSAGE_LEN.
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        match &self.value {
            Value::Structure(items) => items.iter().for_each(|i| i.encode_into(out)),
            Value::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Enumeration(v) | Value::Interval(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::LongInteger(v) | Value::DateTime(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Boolean(v) => out.extend_from_slice(&u64::from(*v).to_be_bytes()),
            Value::BigInteger(v) => out.extend_from_slice(v),
            Value::TextString(v) => out.extend_from_slice(v.as_bytes()),
            Value::ByteString(v) => out.extend_from_slice(v),
        }
        out.resize(out.len() + padded(len) - len, 0);
    }
}

fn type_code(v: &Value) -> u8 {
    match v {
        Value::Structure(_) => TYPE_STRUCTURE,
        Value::Integer(_) => TYPE_INTEGER,
        Value::LongInteger(_) => TYPE_LONG_INTEGER,
        Value::BigInteger(_) => TYPE_BIG_INTEGER,
        Value::Enumeration(_) => TYPE_ENUMERATION,
        Value::Boolean(_) => TYPE_BOOLEAN,
        Value::TextString(_) => TYPE_TEXT_STRING,
        Value::ByteString(_) => TYPE_BYTE_STRING,
        Value::DateTime(_) => TYPE_DATE_TIME,
        Value::Interval(_) => TYPE_INTERVAL,
    }
}

/// `len` rounded up to a multiple of 8 (saturating: never overflows).
fn padded(len: usize) -> usize {
    len.saturating_add(7) & !7
}

/// Reads the 8-byte header of a message: its tag, type and the length of what follows.
/// Used by the transport to know how many bytes to read; checks the length bound.
pub fn message_len(header: &[u8; HEADER_LEN]) -> Result<(u32, u8, usize), DecodeError> {
    let tag = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_MESSAGE_LEN - HEADER_LEN {
        return Err(DecodeError::TooLong {
            len: len.saturating_add(HEADER_LEN),
        });
    }
    Ok((tag, header[3], len))
}

/// Decode exactly one TTLV item that spans all of `buf`.
pub fn decode(buf: &[u8]) -> Result<Ttlv, DecodeError> {
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLong { len: buf.len() });
    }
    let mut pos = 0;
    let item = decode_item(buf, &mut pos, 0)?;
    if pos != buf.len() {
        return Err(DecodeError::TrailingBytes {
            extra: buf.len() - pos,
        });
    }
    Ok(item)
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], DecodeError> {
    let available = buf.len().saturating_sub(*pos);
    if n > available {
        return Err(DecodeError::Truncated {
            offset: *pos,
            needed: n,
            available,
        });
    }
    let out = &buf[*pos..*pos + n];
    *pos += n;
    Ok(out)
}

fn fixed<const N: usize>(v: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&v[..N]);
    out
}

fn decode_item(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Ttlv, DecodeError> {
    let offset = *pos;
    let header = take(buf, pos, HEADER_LEN)?;
    let tag = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let item_type = header[3];
    let len32 = u32::from_be_bytes(fixed(&header[4..8]));
    let len = len32 as usize;
    let bad_len = || DecodeError::BadLength {
        offset,
        tag,
        len: len32,
    };
    let fixed_len = match item_type {
        TYPE_INTEGER | TYPE_ENUMERATION | TYPE_INTERVAL => Some(4),
        TYPE_LONG_INTEGER | TYPE_BOOLEAN | TYPE_DATE_TIME => Some(8),
        TYPE_STRUCTURE | TYPE_BIG_INTEGER | TYPE_TEXT_STRING | TYPE_BYTE_STRING => None,
        _ => {
            return Err(DecodeError::UnknownType {
                offset,
                tag,
                item_type,
            });
        }
    };
    if fixed_len.is_some_and(|n| n != len)
        || (item_type == TYPE_BIG_INTEGER && !len.is_multiple_of(8))
        || (item_type == TYPE_STRUCTURE && !len.is_multiple_of(8))
    {
        return Err(bad_len());
    }
    // Checked before any allocation: the value and its padding must be in the buffer.
    let body = take(buf, pos, padded(len))?;
    let v = &body[..len];
    let value = match item_type {
        TYPE_STRUCTURE => {
            if depth + 1 > MAX_DEPTH {
                return Err(DecodeError::TooDeep { offset });
            }
            let end = *pos;
            let mut inner = end - len;
            let mut items = Vec::new();
            while inner < end {
                items.push(decode_item(&buf[..end], &mut inner, depth + 1)?);
            }
            Value::Structure(items)
        }
        TYPE_INTEGER => Value::Integer(i32::from_be_bytes(fixed(v))),
        TYPE_ENUMERATION => Value::Enumeration(u32::from_be_bytes(fixed(v))),
        TYPE_INTERVAL => Value::Interval(u32::from_be_bytes(fixed(v))),
        TYPE_LONG_INTEGER => Value::LongInteger(i64::from_be_bytes(fixed(v))),
        TYPE_DATE_TIME => Value::DateTime(i64::from_be_bytes(fixed(v))),
        TYPE_BOOLEAN => match u64::from_be_bytes(fixed(v)) {
            0 => Value::Boolean(false),
            1 => Value::Boolean(true),
            _ => return Err(DecodeError::BadBoolean { offset, tag }),
        },
        TYPE_BIG_INTEGER => Value::BigInteger(v.to_vec()),
        TYPE_TEXT_STRING => match std::str::from_utf8(v) {
            Ok(s) => Value::TextString(s.to_owned()),
            Err(_) => return Err(DecodeError::BadUtf8 { offset, tag }),
        },
        _ => Value::ByteString(Zeroizing::new(v.to_vec())),
    };
    Ok(Ttlv { tag, value })
}

#[cfg(test)]
#[path = "ttlv_tests.rs"]
pub(crate) mod tests;
