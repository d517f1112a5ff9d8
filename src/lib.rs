pub mod api;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod kms;
pub mod mongo;
