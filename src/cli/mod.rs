//! The `snapcrypt` command line: one binary for the operator, the snapshot agent and the
//! standalone CLI that works with no cluster.

mod crd;

use clap::{Parser, Subcommand};

/// Encrypted, deduplicated backup snapshots of MongoDB data volumes, with master keys you control.
#[derive(Parser, Debug)]
#[command(name = "snapcrypt", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every snapcrypt CustomResourceDefinition as multi-document YAML
    /// (apply with `snapcrypt crd | kubectl apply -f -`).
    Crd(crd::CrdArgs),
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Crd(args) => crd::run(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("snapcrypt: error: {e}");
            1
        }
    }
}

/// A CLI failure, printed as one line.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;
