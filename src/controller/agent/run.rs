//! A run of the agent as the controllers read it: the run's pod becomes one [`RunStep`], the
//! same mapping for every kind of run (snapshot, restore, and any new one). Pure.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::de::DeserializeOwned;

use super::pod::CONTAINER;
use crate::api::agent::parse_result_line;

/// The field that sets an agent pod's memory, as an OOM-killed run's message names it (the
/// check pod's reader says its own).
pub const OOM_FIELD: &str = "the BackupJob's spec.resources";

/// What an agent pod's state means for its run; `R` is the run's result line.
#[derive(Clone, Debug, PartialEq)]
pub enum RunStep<R> {
    /// Created, not running yet; the kubelet's reason, if any (ContainerCreating, ...).
    Pending { message: Option<String> },
    /// The agent is working.
    Running { started: Option<Time> },
    /// The agent finished and reported this result.
    Succeeded { result: R, finished: Option<Time> },
    /// The agent exited 0 without a readable result line: a mismatch between the operator and
    /// the agent image, which a retry does not fix.
    ResultUnreadable {
        message: String,
        finished: Option<Time>,
    },
    /// The agent failed: its own words, else what Kubernetes says.
    Failed {
        message: String,
        finished: Option<Time>,
    },
}

/// Read an agent pod of a `what` run ("snapshot", "restore") into its step.
///
/// An agent writes its result line only once its run is done, so a pod that failed after
/// writing one (a snapshot pod OOM-killed during retention, which runs after the backup is
/// complete, the line saying so) finished its run. A pod stopped at its deadline is not one:
/// the kubelet reports it Failed before its container has ended, with no message (seen on the
/// test cluster's kubelet), so such a run fails naming runTimeout.
pub fn run_step<R: DeserializeOwned>(pod: &Pod, what: &str) -> RunStep<R> {
    step_of(pod, what, CONTAINER, parse_result_line::<R>, true)
}

/// Read a pod whose `container` does the `what` run, its termination message on success read
/// by `parse`, into its step. A failed pod's message is its failure, whatever it says.
pub fn run_step_of<R>(
    pod: &Pod,
    what: &str,
    container: &str,
    parse: impl Fn(&str) -> Option<R>,
) -> RunStep<R> {
    step_of(pod, what, container, parse, false)
}

/// [`run_step_of`]; with `written_result_stands`, a failed pod whose termination message
/// `parse` reads is taken as succeeded with that result.
fn step_of<R>(
    pod: &Pod,
    what: &str,
    container: &str,
    parse: impl Fn(&str) -> Option<R>,
    written_result_stands: bool,
) -> RunStep<R> {
    let status = pod.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container));
    let state = container.and_then(|c| c.state.as_ref());
    let terminated = state.and_then(|s| s.terminated.as_ref());
    let termination = terminated
        .and_then(|t| t.message.clone())
        .filter(|m| !m.trim().is_empty());
    let finished = terminated.and_then(|t| t.finished_at.clone());
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => RunStep::Running {
            started: state
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.clone())
                .or_else(|| status.and_then(|s| s.start_time.clone())),
        },
        Some("Succeeded") => match termination.as_deref().and_then(&parse) {
            Some(result) => RunStep::Succeeded { result, finished },
            None => RunStep::ResultUnreadable {
                message: format!(
                    "{what} pod {} exited 0 but its termination message holds no result line: {:?}",
                    pod.name_any(),
                    termination.unwrap_or_default()
                ),
                finished,
            },
        },
        Some("Failed") => match termination
            .as_deref()
            .filter(|_| written_result_stands)
            .and_then(&parse)
        {
            // The agent wrote its result, then the pod was stopped: the run is done.
            Some(result) => RunStep::Succeeded { result, finished },
            // Stopped by the kubelet at the pod's activeDeadlineSeconds (placement.runTimeout).
            None if status.and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded") => {
                RunStep::Failed {
                    message: format!(
                        "the {what} pod was stopped after running longer than spec.placement.runTimeout allows ({})",
                        status
                            .and_then(|s| s.message.clone())
                            .unwrap_or_else(|| "DeadlineExceeded".into())
                    ),
                    finished,
                }
            }
            // Killed at its memory limit: what to change, then whatever it said last (with
            // FallbackToLogsOnError, the tail of its log).
            None if terminated.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") => {
                RunStep::Failed {
                    message: format!(
                        "the {what} pod was killed at its memory limit (OOMKilled): raise {OOM_FIELD}.limits.memory (docs/OPERATIONS.md, \"Sizing agent pods\"){}",
                        termination
                            .map(|t| format!("; its last output: {}", t.trim()))
                            .unwrap_or_default()
                    ),
                    finished,
                }
            }
            None => {
                let message = match termination {
                    Some(t) => t
                        .trim()
                        .trim_start_matches("snapcrypt: error: ")
                        .to_string(),
                    None => format!(
                        "the {what} pod failed{}{} without a message",
                        terminated
                            .map(|t| format!(" with exit code {}", t.exit_code))
                            .unwrap_or_default(),
                        terminated
                            .and_then(|t| t.reason.clone())
                            .or_else(|| status.and_then(|s| s.reason.clone()))
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ),
                };
                RunStep::Failed { message, finished }
            }
        },
        _ => {
            let waiting = state.and_then(|s| s.waiting.as_ref());
            // Not on a node yet: the scheduler's reason (Unschedulable: 0/3 nodes ...).
            let unscheduled = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                })
                .map(|c| (c.reason.clone(), c.message.clone()));
            let said = |reason: Option<String>, message: Option<String>| {
                format!(
                    "{}{}",
                    reason.unwrap_or_default(),
                    message.map(|m| format!(": {m}")).unwrap_or_default()
                )
            };
            RunStep::Pending {
                message: waiting
                    .map(|w| said(w.reason.clone(), w.message.clone()))
                    .or_else(|| unscheduled.map(|(r, m)| said(r, m))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agent::SnapshotResult;

    fn pod(status: &str) -> Pod {
        serde_yaml::from_str(&format!("metadata: {{name: p}}\nstatus:\n{status}")).expect("pod")
    }

    fn step(status: &str, what: &str) -> RunStep<SnapshotResult> {
        run_step(&pod(status), what)
    }

    #[test]
    fn every_pod_state_maps_to_one_step() {
        assert_eq!(
            step(
                "  phase: Pending\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: CreateContainerConfigError, message: secret \"k\" not found}}}",
                "snapshot"
            ),
            RunStep::Pending {
                message: Some("CreateContainerConfigError: secret \"k\" not found".into())
            }
        );
        assert_eq!(
            step(
                "  phase: Running\n  startTime: \"2026-11-27T03:00:01Z\"",
                "snapshot"
            ),
            RunStep::Running {
                started: Some(Time("2026-11-27T03:00:01Z".parse().expect("t")))
            }
        );
        assert_eq!(
            step(
                "  phase: Failed\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 1, reason: Error, message: \"snapcrypt: error: source /data/source holds 7 files, at or over the limit of --max-files 5\\n\"}}}",
                "snapshot"
            ),
            RunStep::Failed {
                message: "source /data/source holds 7 files, at or over the limit of --max-files 5"
                    .into(),
                finished: None
            }
        );
        let ok = step(
            "  phase: Succeeded\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 0, message: \"{\\\"id\\\":\\\"ab\\\",\\\"files\\\":1,\\\"logical_bytes\\\":2,\\\"stored_bytes\\\":3,\\\"key_id\\\":\\\"k\\\"}\"}}}",
            "snapshot",
        );
        assert!(
            matches!(&ok, RunStep::Succeeded { result, .. } if result.id == "ab"),
            "{ok:?}"
        );
    }

    #[test]
    fn a_pod_stopped_at_its_deadline_names_run_timeout() {
        let stopped = "  phase: Failed\n  reason: DeadlineExceeded\n  message: Pod was active on the node longer than the specified deadline\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 143, reason: Error}}}";
        match step(stopped, "snapshot") {
            RunStep::Failed { message, .. } => {
                assert!(
                    message.contains("spec.placement.runTimeout")
                        && message.contains("longer than the specified deadline"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pod_killed_after_writing_its_result_finished_its_run() {
        // A snapshot pod OOM-killed during retention: the backup had finished and its result
        // line says retention did not. Were a kubelet to report a deadline's stop with the
        // message, the same holds.
        let line = "{\\\"id\\\":\\\"ab\\\",\\\"files\\\":1,\\\"logical_bytes\\\":2,\\\"stored_bytes\\\":3,\\\"key_id\\\":\\\"k\\\",\\\"retention\\\":{\\\"kept\\\":0,\\\"forgotten\\\":[],\\\"forgotten_total\\\":0,\\\"bytes_freed\\\":0,\\\"error\\\":\\\"retention did not finish\\\"}}";
        for (reason, extra) in [("OOMKilled", ""), ("Error", "  reason: DeadlineExceeded\n")] {
            let killed = format!(
                "  phase: Failed\n{extra}  containerStatuses:\n  - {{name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: 137, reason: {reason}, message: \"{line}\\n\"}}}}}}"
            );
            match step(&killed, "snapshot") {
                RunStep::Succeeded { result, .. } => {
                    assert_eq!(result.id, "ab");
                    assert_eq!(
                        result.retention.and_then(|r| r.error).as_deref(),
                        Some("retention did not finish")
                    );
                }
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_oom_kill_names_the_memory_limit_to_raise() {
        let oom = |message: &str| {
            step(
                &format!(
                    "  phase: Failed\n  containerStatuses:\n  - {{name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: 137, reason: OOMKilled{message}}}}}}}"
                ),
                "verify",
            )
        };
        let said = |s: RunStep<SnapshotResult>| match s {
            RunStep::Failed { message, .. } => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            said(oom("")),
            "the verify pod was killed at its memory limit (OOMKilled): raise the BackupJob's spec.resources.limits.memory (docs/OPERATIONS.md, \"Sizing agent pods\")"
        );
        // The log's tail, which the kubelet gives for a pod that wrote no message.
        let tail = said(oom(", message: \"snapcrypt: reading 12 of 40 packs\\n\""));
        assert!(
            tail.starts_with("the verify pod was killed at its memory limit")
                && tail.ends_with("; its last output: snapcrypt: reading 12 of 40 packs"),
            "{tail}"
        );
    }

    #[test]
    fn a_silent_failure_names_the_kind_of_run() {
        let silent = "  phase: Failed\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 139, reason: Error}}}";
        for what in ["snapshot", "restore"] {
            assert_eq!(
                step(silent, what),
                RunStep::Failed {
                    message: format!(
                        "the {what} pod failed with exit code 139 (Error) without a message"
                    ),
                    finished: None
                }
            );
        }
        let garbled = step(
            "  phase: Succeeded\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 0, message: \"done\"}}}",
            "restore",
        );
        assert!(
            matches!(&garbled, RunStep::ResultUnreadable { message, .. } if message.starts_with("restore pod p exited 0")),
            "{garbled:?}"
        );
    }
}
