//! Following a run (a Snapshot, a Restore) to its end: its progress line as it changes (a
//! spinner on a terminal, a line per change otherwise), by a watch, with an optional limit.

use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use crate::api::snapshot::RunPhase;
use crate::cli::CliError;

/// What a follower shows of a run: its phase, and its progress line (else its message).
pub fn progress(
    phase: RunPhase,
    summary: Option<String>,
    message: Option<String>,
) -> (RunPhase, String) {
    (phase, summary.or(message).unwrap_or_default())
}

/// Watch `name` until `view` says it Succeeded or Failed (its phase, and its progress line),
/// at most `timeout` seconds when given; the object as it ended.
pub async fn follow<K>(
    api: &Api<K>,
    name: &str,
    timeout: Option<u64>,
    view: impl Fn(&K) -> (RunPhase, String),
) -> Result<K, CliError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let watch = watch(api, name, view);
    match timeout {
        Some(secs) => tokio::time::timeout(Duration::from_secs(secs), watch)
            .await
            .map_err(|_| format!("{name} has not ended after {secs} s; it goes on"))?,
        None => watch.await,
    }
}

async fn watch<K>(
    api: &Api<K>,
    name: &str,
    view: impl Fn(&K) -> (RunPhase, String),
) -> Result<K, CliError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let bar = indicatif::ProgressBar::new_spinner();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api.clone(), config).applied_objects().boxed();
    let mut last = String::new();
    while let Some(obj) = stream.try_next().await? {
        let (phase, progress) = view(&obj);
        let line = format!("{phase:?} {progress}");
        if line != last {
            if tty {
                bar.set_message(line.clone());
            } else {
                eprintln!("{name}: {line}");
            }
            last = line;
        }
        if matches!(phase, RunPhase::Succeeded | RunPhase::Failed) {
            bar.finish_and_clear();
            return Ok(obj);
        }
    }
    Err(format!("the watch of {name} ended").into())
}
