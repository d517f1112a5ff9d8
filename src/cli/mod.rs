//! The `snapcrypt` command line: one binary for the operator, the snapshot agent and the
//! standalone CLI that works with no cluster.

mod agent;
mod backup;
mod catalog;
mod copy;
mod copy_agent;
mod crd;
mod key;
pub mod keys;
pub mod kmip_args;
pub mod kubectl;
mod operator;
mod progress;
mod prune;
mod prune_agent;
mod repair;
pub mod repo_args;
mod restore;
mod snapshots;
mod verify;

use clap::{Parser, Subcommand};

/// Encrypted, deduplicated backup snapshots of MongoDB data volumes, with master keys you control.
#[derive(Parser, Debug)]
#[command(name = "snapcrypt", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every snapcrypt CustomResourceDefinition as multi-document YAML
    /// (apply with `snapcrypt crd | kubectl apply -f -`).
    Crd(crd::CrdArgs),
    /// Back up a directory into a repository (created on first use) as a new encrypted snapshot.
    Backup(backup::BackupArgs),
    /// Restore a snapshot into a directory, bit-exact (contents, modes, mtimes), verifying as it goes.
    Restore(restore::RestoreArgs),
    /// Copy snapshots into a second repository (created on first use) under its own master
    /// key, sending only what it lacks: an off-site copy that restores with its own key alone.
    Copy(copy::CopyArgs),
    /// Check a repository: every object present, whole and authentic; exits non-zero naming
    /// each damaged or missing object.
    Verify(verify::VerifyArgs),
    /// List the snapshots in a repository.
    Snapshots(snapshots::SnapshotsArgs),
    /// Master keys: which ones the repository depends on.
    Key(key::KeyCommandArgs),
    /// Forget snapshots by a retention policy and remove the data no kept snapshot needs.
    Prune(prune::PruneArgs),
    /// Repair a repository: `repair index` rebuilds damaged or missing index objects from the
    /// packs.
    Repair(repair::RepairArgs),
    /// Run the Kubernetes operator: the BackupJob, Snapshot and KmipServer controllers, with /healthz and
    /// /metrics.
    Operator(operator::OperatorArgs),
    /// What the operator's pods run (`agent snapshot`).
    Agent(agent::AgentArgs),
    /// The kubectl plugin's verbs (`kubectl snapcrypt ...`, this binary installed as
    /// `kubectl-snapcrypt`): backup, snapshots, status.
    Kubectl(kubectl::KubectlArgs),
}

/// Two malloc arenas for the whole process, set before any thread starts. glibc otherwise
/// gives each busy thread an arena of its own (up to 8 per core) that keeps what it freed: a
/// 16 GiB incremental backup peaked at 61.6 MB with the default and 52.1 MB with two, at the
/// same speed. The bounded-memory design (docs/REPOSITORY.md, "Memory") is what this keeps.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread
    // exists, it races with nothing. Its result (0 on failure) only means the default stays.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("snapcrypt: error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Crd(args) => crd::run(args),
            Command::Backup(args) => backup::run(args).await,
            Command::Restore(args) => restore::run(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::Copy(args) => copy::run(args).await,
            Command::Snapshots(args) => snapshots::run(args).await,
            Command::Prune(args) => prune::run(args).await,
            Command::Repair(args) => repair::run(args).await,
            Command::Key(args) => key::run(args).await,
            Command::Operator(args) => operator::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Kubectl(args) => kubectl::run(args).await,
        }
    });
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's flags are consistent (clap checks names, ids and conflicts).
    #[test]
    fn command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
