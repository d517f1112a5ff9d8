//! The data path: a source directory is scanned, cut into chunks, deduplicated, compressed,
//! encrypted and packed into a repository; and restored, verified, listed and pruned.
//! The repository format is described in docs/REPOSITORY.md.

pub mod backend;
pub mod backup;
pub mod beneath;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod format;
pub mod keys;
pub mod lock;
pub mod pack;
pub mod progress;
pub mod prune;
mod reach;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod spill;
pub mod verify;

pub use self::error::EngineError;
