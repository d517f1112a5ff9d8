//! Pure builders of what the BackupJob controller writes.

pub mod snapshot;
pub mod status;
