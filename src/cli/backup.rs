//! `snapcrypt backup`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::CliError;
use super::keys::KeyArgs;
use super::progress::ProgressReporter;
use super::repo_args::RepoArgs;
use crate::api::snapshot::JOB_TAG;
use crate::engine::backup::{BackupOptions, Compression, backup, scan};
use crate::engine::format::SnapshotManifest;
use crate::engine::progress::{Progress, human_bytes};
use crate::engine::repo::{DEFAULT_CHUNK_SIZE, Repository, owners};

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Directory to back up (a MongoDB dbPath, or any directory).
    #[arg(long, value_name = "DIR")]
    pub source: PathBuf,
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Refuse a source holding this many files or more, before writing anything (MongoDB Cloud
    /// Manager refuses 100,000 or more).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_files: u64,
    /// Per-chunk compression: auto keeps zstd only where it saves space.
    #[arg(long, value_enum, default_value_t = Compression::Auto)]
    pub compression: Compression,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Print one JSON object as the result, and progress as JSON lines on stderr.
    #[arg(long)]
    pub json: bool,
    /// Read every file even if it looks unchanged since the last snapshot of this source
    /// (chunks the last snapshot has at the same offsets are still not stored again).
    #[arg(long)]
    pub force_read: bool,
    /// First rewrap data keys still wrapped under an older master key of this key manager
    /// (after a KMIP rotation) under the active one. Metadata only.
    #[arg(long)]
    pub rewrap: bool,
    /// Write the snapshots tagged backupjob=… only as cluster NAME: the first cluster to write
    /// them claims them in the repository (owners/), and a backup from another cluster is
    /// refused before anything is written, naming the owner (the operator passes its cluster).
    #[arg(long, value_name = "NAME", requires = "tags")]
    pub cluster: Option<String>,
    /// With --cluster: take the job's snapshots over from cluster NAME, which is gone.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    pub take_over_from: Option<String>,
    /// Record the snapshot as taken on host NAME (default: this machine's hostname). The
    /// parent a backup continues from is the newest snapshot of the same source and host: a
    /// stable name keeps that chain across machines or pods (the operator passes
    /// backupjob:NAMESPACE/NAME).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Checkpoint the file list this often (e.g. 30s, 5m; `off`), and after every fiftieth of
    /// the source: a backup killed before it finishes leaves checkpoints, and the next backup
    /// of the same source and host continues from them instead of reading and storing
    /// everything again.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_checkpoint_every)]
    pub checkpoint_every: CheckpointEvery,
    /// Chunk size in bytes for a new repository (a power of two, 4 KiB to 1 MiB).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE, value_name = "BYTES", value_parser = parse_chunk_size, hide = true)]
    pub chunk_size: u32,
}

/// The job a --cluster claims: the snapshot's backupjob tag.
pub(crate) fn job_tag(args: &BackupArgs) -> Result<&str, CliError> {
    args.tags
        .iter()
        .find(|(k, _)| k == JOB_TAG)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            format!(
                "--cluster needs --tag {JOB_TAG}=NAMESPACE/NAME: it claims that job's snapshots"
            )
            .into()
        })
}

pub(crate) fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("--tag {s:?}: expected KEY=VALUE")),
    }
}

/// `--checkpoint-every`: None is `off`.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointEvery(pub Option<std::time::Duration>);

fn parse_checkpoint_every(s: &str) -> Result<CheckpointEvery, String> {
    if s == "off" {
        return Ok(CheckpointEvery(None));
    }
    crate::api::common::parse_duration(s, &['s', 'm', 'h'])
        .map(|secs| CheckpointEvery(Some(std::time::Duration::from_secs(secs))))
        .map_err(|e| format!("--checkpoint-every {e} (or off)"))
}

fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("--chunk-size {s:?}: not a number"))?;
    if !n.is_power_of_two() || !(4096..=1 << 20).contains(&n) {
        return Err(format!(
            "--chunk-size {n}: must be a power of two from 4096 to 1048576"
        ));
    }
    Ok(n)
}

pub async fn run(args: BackupArgs) -> Result<(), CliError> {
    let progress = Arc::new(Progress::default());
    let reporter = ProgressReporter::start(progress.clone(), args.json, "backup");
    let result = perform(
        &args,
        None,
        KeyFile::CreateIfMissing,
        progress.clone(),
        !args.json,
    )
    .await;
    reporter.finish().await;
    let m = result?;
    if args.json {
        let r = progress.report();
        println!(
            "{}",
            serde_json::json!({
                "id": m.id,
                "files": m.files,
                "dirs": m.dirs,
                "logical_bytes": m.logical_bytes,
                "stored_bytes": m.stored_bytes,
                "chunks_looked_up": progress.chunks_looked_up.load(std::sync::atomic::Ordering::Relaxed),
                "key_id": m.master_key_id,
                "time": m.time,
                "elapsed_seconds": r.elapsed_seconds,
            })
        );
    } else {
        eprintln!(
            "snapcrypt: snapshot {} of {}: {} files, {} read, {} added to the repository (key {})",
            m.id,
            m.source,
            m.files,
            human_bytes(m.logical_bytes),
            human_bytes(m.stored_bytes),
            m.master_key_id
        );
        println!("{}", m.id);
    }
    Ok(())
}

/// Whether a backup may create a missing local key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFile {
    /// `snapcrypt backup`: the first backup creates the key.
    CreateIfMissing,
    /// The snapshot agent: the key comes from a Secret and must exist.
    MustExist,
}

/// Scan the source, open (or create) the repository and back up, counting into `progress`.
/// `snapcrypt backup` and the snapshot agent (`snapcrypt agent snapshot`) share this.
pub async fn perform(
    args: &BackupArgs,
    source_within: Option<&std::path::Path>,
    key_file: KeyFile,
    progress: Arc<Progress>,
    chatty: bool,
) -> Result<SnapshotManifest, CliError> {
    // Everything about the source is checked before the repository is touched.
    let scan = tokio::task::spawn_blocking({
        let src = args.source.clone();
        let within = source_within.map(std::path::Path::to_path_buf);
        let max = args.max_files;
        move || scan(&src, within.as_deref(), max)
    })
    .await??;
    for s in &scan.skipped {
        eprintln!("snapcrypt: skipping {s}");
    }
    // An object store is opened (no request yet) before the key manager, so one refused for
    // want of credentials leaves no new key file behind; a directory is created only after.
    let remote = match args.repo.location()? {
        crate::engine::backend::Location::Remote { .. } => Some(args.repo.backend(true)?),
        crate::engine::backend::Location::Local(_) => None,
    };
    // Object lock on a bucket without it is refused before anything is written.
    if let Some(b) = &remote {
        b.check_object_lock()
            .await
            .map_err(crate::engine::EngineError::from)?;
    }
    let km = args
        .keys
        .key_manager(key_file == KeyFile::CreateIfMissing)
        .await?;
    let backend = match remote {
        Some(b) => b,
        None => args.repo.backend(true)?,
    };
    let (mut repo, created) =
        Repository::open_or_init(backend, km.as_ref(), args.chunk_size).await?;
    if created && chatty {
        eprintln!("snapcrypt: created repository {}", repo.backend.display());
    }
    if let Some(cluster) = &args.cluster {
        let job = job_tag(args)?;
        owners::claim(&repo.backend, job, cluster, args.take_over_from.as_deref()).await?;
    }
    if args.rewrap {
        let n = repo.rewrap_stale(km.as_ref()).await?;
        if n > 0 && chatty {
            eprintln!("snapcrypt: rewrapped {n} data key(s) under the active master key");
        }
    }
    let opts = BackupOptions {
        compression: args.compression,
        tags: args.tags.iter().cloned().collect::<BTreeMap<_, _>>(),
        reuse_unchanged: !args.force_read,
        host: args.host.clone(),
        checkpoint_every: args.checkpoint_every.0,
        ..Default::default()
    };
    Ok(backup(&mut repo, km.as_ref(), scan, opts, progress).await?)
}
