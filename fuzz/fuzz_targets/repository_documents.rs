//! Fuzz every parser of a repository's plain documents and of a REPO argument: the config, key
//! records, snapshot manifests, file lists (as stored, zstd, and their JSON), unfinished
//! records, garbage marks, local key files and REPO URLs. Run from the repository root:
//!
//!     cargo +nightly fuzz run repository_documents fuzz/corpus/repository_documents fuzz/seeds/repository_documents
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    snapcrypt::engine::repo::fuzz_repository_documents(data);
});
