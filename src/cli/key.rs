//! `snapcrypt key`: the master keys a repository depends on; rotation and migration, which
//! rewrap data keys (metadata only: no data is rewritten).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliError;
use super::keys::KeyArgs;
use super::kmip_args::KmipArgs;
use super::repo_args::RepoArgs;
use crate::engine::keys::master_key_uses;
use crate::engine::repo::Repository;
use crate::kms::KeyManager;
use crate::kms::local::LocalKeyManager;

#[derive(Args, Debug)]
pub struct KeyCommandArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a new local master key file (mode 0600), for example to store in a Kubernetes
    /// Secret for a BackupJob's `encryption.localKeySecret`. Refuses to overwrite a file.
    New(NewArgs),
    /// List every master key the repository's data keys are (or were) wrapped under, its state,
    /// and the snapshots that depend on it (a key with dependants must stay in its key store).
    Status(StatusArgs),
    /// Rotate the KMIP master key: create and activate a new one (ReKey where the server has
    /// it) and rewrap every data key under it. No data is rewritten; the old key is left on the
    /// server, never revoked or destroyed.
    Rotate(RotateArgs),
    /// Move a repository from a local key file to a KMIP master key: rewrap every data key
    /// under the KMIP key. Afterwards the local key file is no longer needed.
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// Where to write the key file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub kmip: KmipArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The local key file the repository is encrypted under now.
    #[arg(long, value_name = "FILE")]
    pub from_key_file: PathBuf,
    #[command(flatten)]
    pub kmip: KmipArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: KeyCommandArgs) -> Result<(), CliError> {
    match args.command {
        KeyCommand::New(a) => {
            let km = LocalKeyManager::create(&a.out)?;
            eprintln!(
                "snapcrypt: wrote master key {} to {} (mode 0600); keep a copy somewhere safe",
                km.key_id(),
                a.out.display()
            );
            println!("{}", km.key_id());
            Ok(())
        }
        KeyCommand::Status(a) => status(a).await,
        KeyCommand::Rotate(a) => rotate(a).await,
        KeyCommand::Migrate(a) => migrate(a).await,
    }
}

async fn status(args: StatusArgs) -> Result<(), CliError> {
    let km = args.keys.key_manager(false).await?;
    let repo = Repository::open(args.repo.backend(false)?, km.as_ref()).await?;
    let snaps = repo.snapshots().await?;
    let active = km.active_key_id().await.ok();
    let mut rows = Vec::new();
    for u in master_key_uses(repo.key_records(), &snaps) {
        let state = if u.kms != km.kind() {
            format!("unknown (a {} key)", u.kms)
        } else {
            let s = km.master_key_state(&u.master_key_id).await;
            if active.as_deref() == Some(u.master_key_id.as_str()) {
                format!("{s}, in use")
            } else if u.data_keys.is_empty() {
                format!("{s}, superseded")
            } else {
                s
            }
        };
        rows.push((u, state));
    }
    if args.json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(u, state)| {
                let mut v = serde_json::to_value(u).unwrap_or_default();
                v["state"] = serde_json::Value::String(state.clone());
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<6}  {:<24}  {:<22}  {:>9}  {:>10}  SNAPSHOTS",
        "KMS", "MASTER KEY", "STATE", "DATA KEYS", "DEPENDANTS"
    );
    for (u, state) in rows {
        println!(
            "{:<6}  {:<24}  {:<22}  {:>9}  {:>10}  {}",
            u.kms,
            u.master_key_id,
            state,
            u.data_keys.len(),
            u.snapshots.len(),
            u.snapshots.join(",")
        );
    }
    Ok(())
}

/// Rewrap and report.
async fn rewrap(
    repo: &mut Repository,
    from: &dyn KeyManager,
    to: &dyn KeyManager,
    json: bool,
    what: &str,
) -> Result<(), CliError> {
    let old = from.active_key_id().await.unwrap_or_default();
    let new = to.active_key_id().await?;
    let n = repo
        .rewrap_locked(
            &[from, to],
            to,
            crate::engine::repo::rewrap_wait(),
            |_, _| {},
        )
        .await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"from_kms": from.kind(), "from_key_id": old, "to_kms": to.kind(), "to_key_id": new, "data_keys_rewrapped": n})
        );
    } else {
        eprintln!(
            "snapcrypt: {what}: {n} data key(s) rewrapped from {} key {old} to {} key {new}; no data was rewritten",
            from.kind(),
            to.kind()
        );
        println!("{new}");
    }
    Ok(())
}

async fn rotate(args: RotateArgs) -> Result<(), CliError> {
    if !args.kmip.configured() {
        return Err(
            "key rotate needs the KMIP server: pass --kmip-endpoint and the --kmip-* TLS files"
                .into(),
        );
    }
    let km = args.kmip.key_manager().await?;
    let mut repo = Repository::open(args.repo.backend(false)?, &km).await?;
    let current = km.active_key_id().await?;
    // ReKey where the server has it; otherwise Create + Activate a key of the same name.
    let new_id = match km.client().rekey(&current).await {
        Ok(id) => {
            km.client().activate(&id).await.ok();
            id
        }
        Err(e) if e.is_not_supported() => km.create_master_key(&args.kmip.key_name).await?,
        Err(e) => return Err(e.into()),
    };
    let new_km = km.with_key(new_id);
    rewrap(&mut repo, &km, &new_km, args.json, "rotated").await
}

async fn migrate(args: MigrateArgs) -> Result<(), CliError> {
    if !args.kmip.configured() {
        return Err("key migrate needs the KMIP server to migrate to: pass --kmip-endpoint and the --kmip-* TLS files".into());
    }
    let from = LocalKeyManager::load(&args.from_key_file)?;
    let to = args.kmip.key_manager().await?;
    // Both key managers: a migration that stopped half-way is resumed.
    let mut repo = Repository::open_any(args.repo.backend(false)?, &[&from, &to]).await?;
    rewrap(&mut repo, &from, &to, args.json, "migrated").await
}
