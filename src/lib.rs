pub mod api;
pub mod cli;
pub mod kms;
