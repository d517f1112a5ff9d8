//! `kubectl snapcrypt logs NAME` and `explain-failure NAME`: a run's agent log, and why a
//! Snapshot, Restore or BackupJob is not well in one view (its bad conditions, its Events,
//! the agent's last lines).

use clap::Args;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, LogParams};

use super::Target;
use crate::api::{BackupJob, Restore, Snapshot};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The Snapshot or Restore.
    pub name: String,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<i64>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The Snapshot, Restore or BackupJob.
    pub name: String,
}

/// What the verbs need of a run or job: its kind, phase, conditions, message and pod.
struct Found {
    kind: &'static str,
    phase: String,
    conditions: Vec<Condition>,
    message: Option<String>,
    pod: Option<String>,
}

async fn find(t: &Target, name: &str, jobs_too: bool) -> Result<Found, CliError> {
    let c = &t.client;
    if let Some(s) = Api::<Snapshot>::namespaced(c.clone(), &t.namespace)
        .get_opt(name)
        .await?
    {
        let st = s.status.unwrap_or_default();
        return Ok(Found {
            kind: "Snapshot",
            phase: format!("{:?}", st.phase),
            conditions: st.conditions,
            message: st.message,
            pod: st.pod_name,
        });
    }
    if let Some(r) = Api::<Restore>::namespaced(c.clone(), &t.namespace)
        .get_opt(name)
        .await?
    {
        let st = r.status.unwrap_or_default();
        return Ok(Found {
            kind: "Restore",
            phase: format!("{:?}", st.phase),
            conditions: st.conditions,
            message: st.message,
            pod: st.pod_name,
        });
    }
    if jobs_too
        && let Some(j) = Api::<BackupJob>::namespaced(c.clone(), &t.namespace)
            .get_opt(name)
            .await?
    {
        let st = j.status.unwrap_or_default();
        return Ok(Found {
            kind: "BackupJob",
            phase: format!("{:?}", st.phase),
            conditions: st.conditions,
            message: None,
            pod: None,
        });
    }
    let kinds = if jobs_too {
        "Snapshot, Restore or BackupJob"
    } else {
        "Snapshot or Restore"
    };
    Err(format!(
        "no {kinds} named {name} in namespace {} (-n NAMESPACE picks another)",
        t.namespace
    )
    .into())
}

/// The pod's log (its last `tail` lines), or None when the pod is gone.
async fn pod_log(t: &Target, pod: &str, tail: Option<i64>) -> Result<Option<String>, CliError> {
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
    let params = LogParams {
        tail_lines: tail,
        ..Default::default()
    };
    match pods.logs(pod, &params).await {
        Ok(text) => Ok(Some(text)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn logs(t: &Target, args: LogsArgs) -> Result<(), CliError> {
    let f = find(t, &args.name, false).await?;
    let Some(pod) = f.pod else {
        return Err(format!(
            "{} {} has no agent pod yet (phase {})",
            f.kind, args.name, f.phase
        )
        .into());
    };
    match pod_log(t, &pod, args.tail).await? {
        Some(text) => print!("{text}"),
        None => {
            eprintln!(
                "pod {pod} of {} {} no longer exists; what its status kept:",
                f.kind, args.name
            );
            println!("{}", f.message.unwrap_or_else(|| "(no message)".into()));
        }
    }
    Ok(())
}

/// Whether a condition is in a bad state.
fn bad(c: &Condition) -> bool {
    match c.type_.as_str() {
        "Failed" | "Degraded" | "Orphaned" => c.status == "True",
        "Progressing" | "Suspended" => false,
        _ => c.status == "False",
    }
}

pub async fn explain(t: &Target, args: ExplainArgs) -> Result<(), CliError> {
    let f = find(t, &args.name, true).await?;
    println!("{} {}/{}: {}", f.kind, t.namespace, args.name, f.phase);
    let wrong: Vec<&Condition> = f.conditions.iter().filter(|c| bad(c)).collect();
    if wrong.is_empty() {
        println!("Conditions: none in a bad state.");
    } else {
        println!("Conditions:");
        for c in wrong {
            println!("  {}={} ({}): {}", c.type_, c.status, c.reason, c.message);
        }
    }
    if let Some(m) = &f.message {
        println!("Message: {m}");
    }
    let events = Api::<Event>::namespaced(t.client.clone(), &t.namespace)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={},involvedObject.kind={}",
            args.name, f.kind
        )))
        .await?
        .items;
    let mut events: Vec<&Event> = events.iter().collect();
    // core/v1 Events carry lastTimestamp; those written through events.k8s.io, eventTime.
    let when = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
    };
    events.sort_by_key(|e| when(e));
    println!("Events:");
    if events.is_empty() {
        println!("  none");
    }
    for e in events.iter().rev().take(10).rev() {
        println!(
            "  {} {} {}: {}",
            e.type_.as_deref().unwrap_or("-"),
            e.reason.as_deref().unwrap_or("-"),
            when(e).map(|t| t.to_string()).unwrap_or_default(),
            e.message.as_deref().unwrap_or_default()
        );
    }
    if let Some(pod) = &f.pod {
        match pod_log(t, pod, Some(15)).await? {
            Some(text) => {
                println!("The agent's last lines (pod {pod}):");
                for l in text.lines() {
                    println!("  {l}");
                }
            }
            None => println!("The agent's pod {pod} no longer exists (its message is above)."),
        }
    }
    Ok(())
}
