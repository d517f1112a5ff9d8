//! Fuzz every parser of repository bytes (a pack or index object's header and blob entries, a
//! sealed object's envelope) with arbitrary bytes, as a hostile or damaged store could hold
//! them. Run from the repository root:
//!
//!     cargo +nightly fuzz run repository_objects fuzz/corpus/repository_objects
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    snapcrypt::engine::format::fuzz_repository_bytes(data);
});
