//! `checkpoints/<run id>.<n>`: a backup's file list so far, written as it goes, for a retry
//! after the run is killed (what they hold and how a retry uses them: `backup::checkpoint` and
//! docs/REPOSITORY.md, "Checkpoints"). Here: naming, reading, deleting them, and prune's rule.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Repository;
use crate::engine::error::EngineError;
use crate::engine::format::{ObjectKind, TreeEntry};

/// Where checkpoints live.
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// What every checkpoint object of a run says about it.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct CheckpointHead {
    pub source: String,
    pub hostname: String,
    pub started: String,
    /// The data key (hex id) its chunks were stored under.
    pub data_key: String,
}

/// One checkpoint object: the head and the entries written since the run's previous one.
#[derive(serde::Deserialize)]
pub struct CheckpointSegment {
    #[serde(flatten)]
    pub head: CheckpointHead,
    pub entries: Vec<TreeEntry>,
}

/// The name of run `run`'s checkpoint number `seq`.
pub fn checkpoint_name(run: &str, seq: u32) -> String {
    format!("{CHECKPOINT_DIR}/{run}.{seq:06}")
}

impl Repository {
    /// The checkpoint objects of each run, by run id, in order.
    pub async fn checkpoint_runs(&self) -> Result<BTreeMap<String, Vec<String>>, EngineError> {
        let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, _) in self.backend.list(CHECKPOINT_DIR).await? {
            let Some((run, _)) = name
                .strip_prefix(&format!("{CHECKPOINT_DIR}/"))
                .and_then(|n| n.rsplit_once('.'))
            else {
                continue;
            };
            runs.entry(run.to_string()).or_default().push(name.clone());
        }
        for names in runs.values_mut() {
            names.sort();
        }
        Ok(runs)
    }

    /// Checkpoint object `name`, opened and parsed.
    pub async fn read_checkpoint(&self, name: &str) -> Result<CheckpointSegment, EngineError> {
        let sealed = self.get_sealed(ObjectKind::Checkpoint, name).await?;
        let corrupt = |reason: String| EngineError::Corrupt {
            object: name.into(),
            reason,
        };
        let json = zstd::stream::decode_all(&sealed[..]).map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
    }

    /// Delete the checkpoints of `runs` (a missing one is no error; one left is harmless:
    /// prune removes it, so a failure is only logged).
    pub async fn delete_checkpoints(&self, runs: &[&str]) {
        let mut all = match self.checkpoint_runs().await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the checkpoints to delete (the next prune removes them)");
                return;
            }
        };
        for name in runs.iter().flat_map(|r| all.remove(*r).unwrap_or_default()) {
            if let Err(e) = self.backend.delete(&name).await {
                tracing::warn!(object = %name, error = %e, "could not delete a checkpoint (the next prune removes it)");
                return;
            }
        }
    }

    /// Prune's rule: the checkpoints of runs started more than `grace` before `now` go (an
    /// unreadable one counts as old). The objects deleted (with `dry_run`, that would be).
    pub async fn prune_checkpoints(
        &self,
        now: jiff::Timestamp,
        grace: Duration,
        dry_run: bool,
    ) -> Result<usize, EngineError> {
        let mut deleted = 0;
        for (run, names) in self.checkpoint_runs().await? {
            let Some(first) = names.first() else { continue };
            let started = match self.read_checkpoint(first).await {
                Ok(s) => s.head.started.parse::<jiff::Timestamp>().ok(),
                Err(EngineError::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            };
            let young =
                started.is_some_and(|t| now.duration_since(t).as_secs_f64() < grace.as_secs_f64());
            if young {
                continue;
            }
            tracing::info!(%run, objects = names.len(), "deleting the checkpoints of a backup that never finished");
            for name in &names {
                if !dry_run {
                    self.backend.delete(name).await?;
                }
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
