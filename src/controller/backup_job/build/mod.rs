//! Pure builders of what the BackupJob controller writes.

pub mod copy_pod;
pub mod restore_test;
pub mod retention_pod;
pub mod snapshot;
pub mod status;
pub mod verify_pod;
