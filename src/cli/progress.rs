//! Progress on the terminal (indicatif) or as JSON lines on stderr (`--json`): the same
//! readings the snapshot pod reports into status.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::progress::Progress;

/// Reports progress until dropped.
pub struct ProgressReporter {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressReporter {
    /// Start reporting `progress`: JSON lines every `json_every` if `json`, else a bar when
    /// stderr is a terminal, else nothing. The bar counts files.
    pub fn start(progress: Arc<Progress>, json: bool, what: &'static str) -> Self {
        Self::counting(progress, json, what, "files")
    }

    /// [`Self::start`], the bar counting `unit` (what the progress's "files" are).
    pub fn counting(
        progress: Arc<Progress>,
        json: bool,
        what: &'static str,
        unit: &'static str,
    ) -> Self {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let tty = std::io::stderr().is_terminal();
        if !json && !tty {
            return ProgressReporter {
                stop: None,
                task: None,
            };
        }
        let task = tokio::spawn(async move {
            let bar = (!json).then(|| {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} {bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_prefix(what);
                b
            });
            let every = if json {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(200)
            };
            loop {
                let r = progress.report();
                match &bar {
                    Some(b) => {
                        b.set_length(r.bytes_total);
                        b.set_position(r.bytes_done);
                        b.set_message(format!("{}/{} {unit}", r.files_done, r.files_total));
                    }
                    None => {
                        if let Ok(line) = serde_json::to_string(&serde_json::json!({"progress": r}))
                        {
                            eprintln!("{line}");
                        }
                    }
                }
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        ProgressReporter {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stop reporting and wait for the last line.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
