//! `snapcrypt crd`: the CRDs as YAML, printed or written one file per CRD.

use std::path::PathBuf;

use clap::Args;

use super::CliError;

#[derive(Args, Debug)]
pub struct CrdArgs {
    /// Write one file per CRD (`<name>.yaml`) into this directory instead of printing them all
    /// (`snapcrypt crd --out-dir crds` refreshes the repository's crds/).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

pub fn run(args: CrdArgs) -> Result<(), CliError> {
    match args.out_dir {
        None => print!("{}", crate::api::crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("--out-dir {}: {e}", dir.display()))?;
            for (name, yaml) in crate::api::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, yaml).map_err(|e| format!("{}: {e}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
