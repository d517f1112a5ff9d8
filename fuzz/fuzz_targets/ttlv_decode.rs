//! Fuzz the KMIP TTLV decoder and every response parser with arbitrary bytes, as a hostile
//! or broken KMIP server could send them. Run from the repository root:
//!
//!     cargo +nightly fuzz run ttlv_decode fuzz/corpus/ttlv_decode fuzz/seeds/ttlv_decode
//!
//! The seeds (fuzz/seeds/ttlv_decode/) are PyKMIP 0.11 captures.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    snapcrypt::kms::kmip::fuzz_response(data);
});
