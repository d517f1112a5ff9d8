//! Pure builders of what the Snapshot controller writes.

pub mod pod;
pub mod status;
pub mod volume;
