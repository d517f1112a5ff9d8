//! TTLV codec tests: captures from PyKMIP 0.11 (testdata/, made by
//! tests/services/kmip/selfcheck.py --capture-dir) and a corpus of malformed messages.

use super::*;

/// A capture from testdata/, hex-decoded.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let hex = match name {
        "discover-versions.request" => include_str!("testdata/discover-versions.request.hex"),
        "discover-versions.response" => include_str!("testdata/discover-versions.response.hex"),
        "create-aes256.request" => include_str!("testdata/create-aes256.request.hex"),
        "create-aes256.response" => include_str!("testdata/create-aes256.response.hex"),
        "get-attributes.request" => include_str!("testdata/get-attributes.request.hex"),
        "get-attributes.response" => include_str!("testdata/get-attributes.response.hex"),
        "encrypt-preactive-error.response" => {
            include_str!("testdata/encrypt-preactive-error.response.hex")
        }
        "encrypt-aes-gcm.request" => include_str!("testdata/encrypt-aes-gcm.request.hex"),
        "encrypt-aes-gcm.response" => include_str!("testdata/encrypt-aes-gcm.response.hex"),
        "encrypt-aes-gcm-server-iv.response" => {
            include_str!("testdata/encrypt-aes-gcm-server-iv.response.hex")
        }
        "decrypt-aes-gcm.request" => include_str!("testdata/decrypt-aes-gcm.request.hex"),
        "decrypt-aes-gcm.response" => include_str!("testdata/decrypt-aes-gcm.response.hex"),
        "decrypt-bad-tag-error.response" => {
            include_str!("testdata/decrypt-bad-tag-error.response.hex")
        }
        "get-known-key.response" => include_str!("testdata/get-known-key.response.hex"),
        "locate-by-name.request" => include_str!("testdata/locate-by-name.request.hex"),
        "locate-by-name.response" => include_str!("testdata/locate-by-name.response.hex"),
        "destroy-active.response" => include_str!("testdata/destroy-active.response.hex"),
        "revoke.request" => include_str!("testdata/revoke.request.hex"),
        other => panic!("no fixture {other}"),
    };
    hex::decode(hex.trim()).expect("fixture is hex")
}

pub(crate) const FIXTURES: &[&str] = &[
    "discover-versions.request",
    "discover-versions.response",
    "create-aes256.request",
    "create-aes256.response",
    "get-attributes.request",
    "get-attributes.response",
    "encrypt-preactive-error.response",
    "encrypt-aes-gcm.request",
    "encrypt-aes-gcm.response",
    "encrypt-aes-gcm-server-iv.response",
    "decrypt-aes-gcm.request",
    "decrypt-aes-gcm.response",
    "decrypt-bad-tag-error.response",
    "get-known-key.response",
    "locate-by-name.request",
    "locate-by-name.response",
    "destroy-active.response",
    "revoke.request",
];

#[test]
fn every_capture_decodes_and_reencodes_byte_for_byte() {
    for name in FIXTURES {
        let bytes = fixture(name);
        let item = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&item.encode()[..], &bytes[..], "{name}");
        assert_eq!(item.encoded_len(), bytes.len(), "{name}");
    }
}

#[test]
fn every_type_round_trips_with_padding() {
    let item = Ttlv::structure(
        0x420001,
        vec![
            Ttlv::integer(0x420002, -5),
            Ttlv::new(0x420003, Value::LongInteger(-1 << 40)),
            Ttlv::new(0x420004, Value::BigInteger(vec![0xff; 16])),
            Ttlv::enumeration(0x420005, 0xdead_beef),
            Ttlv::boolean(0x420006, true),
            Ttlv::text(0x420007, "héllo"),
            Ttlv::bytes(0x420008, &[1, 2, 3]),
            Ttlv::date_time(0x420009, 1_795_814_468),
            Ttlv::new(0x42000A, Value::Interval(86_400)),
            Ttlv::structure(0x42000B, vec![]),
        ],
    );
    let bytes = item.encode();
    assert_eq!(bytes.len() % 8, 0);
    assert_eq!(decode(&bytes).unwrap(), item);
    // "héllo" is 6 bytes: value then 2 bytes of zero padding.
    let text_at = bytes
        .windows(6)
        .position(|w| w == "héllo".as_bytes())
        .unwrap();
    assert_eq!(&bytes[text_at + 6..text_at + 8], &[0, 0]);
}

#[test]
fn debug_output_hides_byte_strings() {
    let s = format!("{:?}", Ttlv::bytes(0x420043, b"secret key material"));
    assert!(s.contains("19 bytes") && !s.contains("secret"), "{s}");
}

fn header(tag: u32, ty: u8, len: u32) -> Vec<u8> {
    let mut v = tag.to_be_bytes()[1..].to_vec();
    v.push(ty);
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn nested(depth: usize) -> Vec<u8> {
    let mut inner = Vec::new();
    for _ in 0..depth {
        let mut outer = header(0x420001, 0x01, inner.len() as u32);
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    inner
}

/// A malformed message's name, bytes, and a check of the error it must give.
type Case = (&'static str, Vec<u8>, fn(&DecodeError) -> bool);

/// Malformed messages: each is refused with the right error, none panics.
#[test]
fn malformed_corpus_is_refused() {
    let cat = |parts: &[&[u8]]| parts.concat();
    let corpus: Vec<Case> = vec![
        ("empty", vec![], |e| {
            matches!(e, DecodeError::Truncated { .. })
        }),
        ("7-byte header", vec![0x42, 0, 0x7b, 1, 0, 0, 0], |e| {
            matches!(e, DecodeError::Truncated { .. })
        }),
        (
            "structure longer than the buffer",
            header(0x42007B, 0x01, 16),
            |e| matches!(e, DecodeError::Truncated { needed: 16, .. }),
        ),
        ("length 0xFFFFFFFF", header(0x42007B, 0x08, u32::MAX), |e| {
            matches!(e, DecodeError::Truncated { .. })
        }),
        (
            "unknown type 0x00",
            cat(&[&header(0x420001, 0x00, 0)]),
            |e| matches!(e, DecodeError::UnknownType { item_type: 0, .. }),
        ),
        (
            "unknown type 0x0B",
            cat(&[&header(0x420001, 0x0B, 0)]),
            |e| {
                matches!(
                    e,
                    DecodeError::UnknownType {
                        item_type: 0x0B,
                        ..
                    }
                )
            },
        ),
        (
            "integer of length 8",
            cat(&[&header(0x420001, 0x02, 8), &[0; 8]]),
            |e| matches!(e, DecodeError::BadLength { len: 8, .. }),
        ),
        ("enumeration of length 0", header(0x420001, 0x05, 0), |e| {
            matches!(e, DecodeError::BadLength { len: 0, .. })
        }),
        (
            "boolean 2",
            cat(&[&header(0x420001, 0x06, 8), &[0, 0, 0, 0, 0, 0, 0, 2]]),
            |e| matches!(e, DecodeError::BadBoolean { .. }),
        ),
        (
            "text not UTF-8",
            cat(&[&header(0x420001, 0x07, 2), &[0xC3, 0x28, 0, 0, 0, 0, 0, 0]]),
            |e| matches!(e, DecodeError::BadUtf8 { .. }),
        ),
        (
            "text without its padding",
            cat(&[&header(0x420001, 0x07, 3), b"abc"]),
            |e| {
                matches!(
                    e,
                    DecodeError::Truncated {
                        needed: 8,
                        available: 3,
                        ..
                    }
                )
            },
        ),
        (
            "big integer of length 5",
            cat(&[&header(0x420001, 0x04, 5), &[0; 8]]),
            |e| matches!(e, DecodeError::BadLength { len: 5, .. }),
        ),
        (
            "structure length not a multiple of 8",
            cat(&[&header(0x420001, 0x01, 12), &[0; 16]]),
            |e| matches!(e, DecodeError::BadLength { len: 12, .. }),
        ),
        (
            "child overruns its structure",
            cat(&[
                &header(0x420001, 0x01, 16),
                &header(0x420002, 0x08, 16),
                &[0; 24],
            ]),
            |e| {
                matches!(
                    e,
                    DecodeError::Truncated {
                        offset: 16,
                        needed: 16,
                        available: 8
                    }
                )
            },
        ),
        (
            "child header cut by its structure",
            cat(&[
                &header(0x420001, 0x01, 8),
                &header(0x420002, 0x02, 4),
                &[0; 8],
            ]),
            |e| matches!(e, DecodeError::Truncated { offset: 16, .. }),
        ),
        (
            "trailing bytes",
            cat(&[&header(0x420001, 0x01, 0), &[0; 8]]),
            |e| matches!(e, DecodeError::TrailingBytes { extra: 8 }),
        ),
        ("nested 33 deep", nested(33), |e| {
            matches!(e, DecodeError::TooDeep { .. })
        }),
        ("too long", vec![0; MAX_MESSAGE_LEN + 1], |e| {
            matches!(e, DecodeError::TooLong { .. })
        }),
    ];
    for (name, bytes, expected) in corpus {
        match decode(&bytes) {
            Ok(v) => panic!("{name}: decoded as {v:?}"),
            Err(e) => assert!(expected(&e), "{name}: wrong error {e:?}"),
        }
    }
    assert!(decode(&nested(32)).is_ok(), "32 levels are allowed");
}

#[test]
fn message_len_bounds_the_read() {
    let h: [u8; 8] = header(0x42007B, 0x01, 64).try_into().unwrap();
    assert_eq!(message_len(&h).unwrap(), (0x42007B, 0x01, 64));
    let h: [u8; 8] = header(0x42007B, 0x01, u32::MAX).try_into().unwrap();
    assert!(matches!(message_len(&h), Err(DecodeError::TooLong { .. })));
}

#[test]
fn every_prefix_of_a_capture_is_refused_without_panic() {
    for name in FIXTURES {
        let bytes = fixture(name);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "{name} cut at {cut}");
        }
    }
}
