//! `snapcrypt copy`: snapshots of one repository copied into another, whose own master key
//! (a key file or a KMIP server, the `--to-` flags) wraps the same data keys.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use super::keys::KeyArgs;
use super::kmip_args::KmipArgs;
use super::progress::ProgressReporter;
use super::repo_args::{RepoArgs, S3Args};
use crate::engine::copy::{CopySelection, copy};
use crate::engine::progress::{Progress, human_bytes};
use crate::engine::repo::{Repository, Selector, Which};
use crate::kms::kmip::DEFAULT_KEY_NAME;

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The repository to copy from (as --repo of the other commands, which it also takes; its
    /// key is --key-file or the --kmip flags).
    #[arg(
        long = "from",
        alias = "repo",
        env = "SNAPCRYPT_REPO",
        value_name = "REPO"
    )]
    pub from: String,

    #[command(flatten)]
    pub keys: KeyArgs,

    #[command(flatten)]
    pub to: TargetArgs,

    /// The source's S3 options, also the target's where no --to-s3-* is given (path style
    /// only when the target has no endpoint of its own).
    #[command(flatten)]
    pub s3: S3Args,

    /// Which snapshots: all (the default), latest, an id (or a unique prefix of one), or
    /// before:TIME (the newest taken at or before an RFC 3339 time).
    #[arg(long, value_name = "all|ID|latest|before:TIME", default_value = "all")]
    pub snapshot: String,

    /// Only snapshots carrying this tag (repeat for several; all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = super::backup::parse_tag)]
    pub tags: Vec<(String, String)>,

    /// The target's own retention, applied after the copy to the snapshots with the --tag
    /// tags (with --snapshot all only): snapshots it would forget are not copied, and what it
    /// forgets in the target is pruned there.
    #[command(flatten, next_help_heading = "Target retention")]
    pub retention: super::prune::RetentionArgs,

    /// With the target's retention: use it only to choose what to copy, and leave the
    /// target's pruning to a pass with delete credentials (a BackupJob copy's retention pod,
    /// with spec.copies[].retention.credentialsSecret): this run then deletes nothing there
    /// but its own lock.
    #[arg(long, help_heading = "Target retention")]
    pub no_prune: bool,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The target repository and its key.
#[derive(Args, Debug)]
#[command(next_help_heading = "Target repository")]
pub struct TargetArgs {
    /// The repository to copy into: a directory, s3://, gs:// or az:// (created on first use).
    #[arg(long = "to", value_name = "REPO")]
    pub to_repo: String,

    /// The target's master key file (created when the target is, if it does not exist). Never
    /// the source's: a copy that the source's key opens is not a second line of defence.
    #[arg(long = "to-key-file", value_name = "FILE")]
    pub to_key_file: Option<PathBuf>,

    /// The target's KMIP server, HOST:PORT (comma-separated for failover).
    #[arg(
        long = "to-kmip-endpoint",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub to_kmip_endpoints: Vec<String>,

    /// PEM CA of the target's KMIP server.
    #[arg(long = "to-kmip-ca", value_name = "FILE")]
    pub to_kmip_ca: Option<PathBuf>,

    /// PEM client certificate for the target's KMIP server.
    #[arg(long = "to-kmip-cert", value_name = "FILE")]
    pub to_kmip_cert: Option<PathBuf>,

    /// PEM private key of --to-kmip-cert.
    #[arg(long = "to-kmip-key", value_name = "FILE")]
    pub to_kmip_key: Option<PathBuf>,

    /// The target's master key id on its KMIP server.
    #[arg(long = "to-kmip-key-id", value_name = "ID")]
    pub to_kmip_key_id: Option<String>,

    /// The name of the target's master key to find or create when --to-kmip-key-id is not given.
    #[arg(long = "to-kmip-key-name", value_name = "NAME", default_value = DEFAULT_KEY_NAME)]
    pub to_kmip_key_name: String,

    /// Name the target KMIP server's certificate must carry, when not the endpoint's host.
    #[arg(long = "to-kmip-server-name", value_name = "NAME")]
    pub to_kmip_server_name: Option<String>,

    /// S3 endpoint URL of the target (default: --s3-endpoint).
    #[arg(long = "to-s3-endpoint", value_name = "URL")]
    pub to_s3_endpoint: Option<String>,

    /// S3 region of the target (default: --s3-region).
    #[arg(long = "to-s3-region", value_name = "REGION")]
    pub to_s3_region: Option<String>,

    /// Path-style S3 URLs for the target (default: --s3-path-style, when the target has no
    /// --to-s3-endpoint of its own).
    #[arg(long = "to-s3-path-style")]
    pub to_s3_path_style: bool,

    /// S3 Object Lock of the target (as --s3-object-lock; never the source's).
    #[arg(long = "to-s3-object-lock", value_name = "MODE:DAYSd", value_parser = crate::engine::backend::ObjectLock::parse)]
    pub to_s3_object_lock: Option<crate::engine::backend::ObjectLock>,

    /// KMIP protocol version of the target's server (default 1.4).
    #[arg(long = "to-kmip-version", value_name = "VERSION")]
    pub to_kmip_version: Option<crate::kms::kmip::ProtocolVersion>,

    /// Wrap the target's data keys locally under a key the target's KMIP server keeps (as
    /// --kmip-local-wrap).
    #[arg(long = "to-kmip-local-wrap")]
    pub to_kmip_local_wrap: bool,

    /// Seconds to wait for the target's KMIP server (default 10).
    #[arg(long = "to-kmip-timeout-secs", value_name = "SECONDS")]
    pub to_kmip_timeout_secs: Option<u64>,
}

pub use crate::engine::backend::TARGET_ENV;

impl CopyArgs {
    fn source(&self) -> RepoArgs {
        RepoArgs {
            repo: self.from.clone(),
            s3: self.s3.clone(),
            credentials_env: None,
        }
    }

    pub fn target(&self) -> RepoArgs {
        let own_endpoint = self.to.to_s3_endpoint.is_some();
        RepoArgs {
            repo: self.to.to_repo.clone(),
            s3: S3Args {
                s3_endpoint: self
                    .to
                    .to_s3_endpoint
                    .clone()
                    .or(self.s3.s3_endpoint.clone()),
                s3_region: self.to.to_s3_region.clone().or(self.s3.s3_region.clone()),
                s3_path_style: self.to.to_s3_path_style || (self.s3.s3_path_style && !own_endpoint),
                s3_object_lock: self.to.to_s3_object_lock,
            },
            credentials_env: Some(TARGET_ENV.into()),
        }
    }

    /// The target's key flags, as [`KeyArgs`]; one of --to-key-file and --to-kmip-endpoint
    /// must be given.
    fn target_keys(&self) -> Result<KeyArgs, CliError> {
        let t = &self.to;
        if t.to_key_file.is_none() && t.to_kmip_endpoints.is_empty() {
            return Err(
                "copy needs the target's own key: give --to-key-file FILE (created with the target) or --to-kmip-endpoint HOST:PORT with --to-kmip-ca, --to-kmip-cert and --to-kmip-key"
                    .into(),
            );
        }
        let base = KmipArgs::default_for_copy();
        Ok(KeyArgs {
            key_file: t.to_key_file.clone(),
            kmip: KmipArgs {
                endpoints: t.to_kmip_endpoints.clone(),
                ca: t.to_kmip_ca.clone(),
                cert: t.to_kmip_cert.clone(),
                key: t.to_kmip_key.clone(),
                key_id: t.to_kmip_key_id.clone(),
                key_name: t.to_kmip_key_name.clone(),
                server_name: t.to_kmip_server_name.clone(),
                version: t.to_kmip_version.unwrap_or(base.version),
                local_wrap: t.to_kmip_local_wrap,
                timeout_secs: t.to_kmip_timeout_secs.unwrap_or(base.timeout_secs),
            },
        })
    }

    fn selection(&self) -> Result<CopySelection, CliError> {
        let tags = self.tags.iter().cloned().collect();
        let retention = self.retention.policy();
        if self.snapshot.trim() == "all" {
            return Ok(CopySelection::All { tags, retention });
        }
        if !retention.is_empty() {
            return Err(format!(
                "--keep-*/--max-age apply to the target with --snapshot all, not with --snapshot {}: copy all of the tagged snapshots, or drop the retention flags",
                self.snapshot
            )
            .into());
        }
        let which = Which::parse(&self.snapshot).map_err(|e| format!("--snapshot {e}, or all"))?;
        Ok(CopySelection::One(Selector { which, tags }))
    }
}

/// What a copy run did: the copy, the target's retention pass (with retention flags), and
/// the master key the target's key records are wrapped under.
pub struct CopyOutcome {
    pub report: crate::engine::copy::CopyReport,
    pub retention: Option<crate::engine::prune::PruneReport>,
    pub target_key_id: String,
    pub target_key_kind: &'static str,
}

/// Copy as `args` say, then apply the target's retention (if given) to the copied tags'
/// snapshots there. `json`: progress as JSON lines.
pub async fn copy_and_keep(args: &CopyArgs, json: bool) -> Result<CopyOutcome, CliError> {
    let which = args.selection()?;
    let target_keys = args.target_keys()?;
    let km = args.keys.key_manager(false).await?;
    let source = Repository::open(args.source().backend(false)?, km.as_ref()).await?;
    let target = args.target().backend(true)?;
    target
        .check_object_lock()
        .await
        .map_err(|e| format!("--to {}: {e}", args.to.to_repo))?;
    // The target's store answers with its own credentials (SNAPCRYPT_TO_*, else the usual
    // ones): an error here is the target's, and says so.
    let exists = target
        .exists("config")
        .await
        .map_err(|e| format!("--to {}: {e}", args.to.to_repo))?;
    let target_km = target_keys.key_manager(!exists).await?;
    let progress = std::sync::Arc::new(Progress::default());
    let reporter = ProgressReporter::counting(progress.clone(), json, "copy", "packs");
    let report = copy(
        &source,
        target.clone(),
        target_km.as_ref(),
        &which,
        &progress,
    )
    .await;
    reporter.finish().await;
    let report = report?;
    let policy = args.retention.policy();
    let retention = if policy.is_empty() || args.no_prune {
        None
    } else {
        let mut repo = Repository::open(target, target_km.as_ref()).await?;
        let scope = crate::engine::prune::PruneScope {
            tags: args.tags.iter().cloned().collect(),
            protect: Default::default(),
        };
        Some(
            crate::engine::prune::prune(
                &mut repo,
                target_km.as_ref(),
                &policy,
                &scope,
                &args.retention.prune_options(false),
            )
            .await?,
        )
    };
    Ok(CopyOutcome {
        report,
        retention,
        target_key_id: target_km.active_key_id().await?,
        target_key_kind: target_km.kind(),
    })
}

pub async fn run(args: CopyArgs) -> Result<(), CliError> {
    let CopyOutcome {
        report,
        retention,
        target_key_kind,
        ..
    } = copy_and_keep(&args, args.json).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.created {
        eprintln!(
            "snapcrypt: created repository {} at {}, its data keys wrapped by {}",
            report.target_id, args.to.to_repo, target_key_kind
        );
    }
    eprintln!(
        "snapcrypt: copied {} snapshot(s) ({} already there, {} outside the target's retention): {} pack(s), {}, {} already there; {} key record(s) written",
        report.copied.len(),
        report.already_there,
        report.outside_retention,
        report.packs_copied,
        human_bytes(report.bytes_copied),
        report.packs_already_there,
        report.keys_written
    );
    if let Some(r) = &retention {
        eprintln!(
            "snapcrypt: target retention: kept {} snapshot(s), forgot {}, freed {}",
            r.kept.len(),
            r.forgotten.len(),
            human_bytes(r.bytes_freed)
        );
    }
    for id in &report.copied {
        println!("{id}");
    }
    Ok(())
}
