//! `kubectl snapcrypt status JOB`: everything a person checks about a BackupJob on one
//! screen (or as JSON or YAML), and what to do about anything wrong.

use clap::Args;
use kube::ResourceExt;
use kube::api::Api;
use serde::Serialize;

use super::text::{age, condition};
use super::{Output, Target};
use crate::api::{BackupJob, KmipServer, Snapshot};
use crate::cli::CliError;
use crate::engine::progress::human_bytes;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The BackupJob.
    pub job: String,
    /// table (the screen), json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

/// One screen: each line a fact, and what needs doing.
#[derive(Serialize, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Screen {
    pub job: String,
    pub namespace: String,
    pub phase: String,
    /// (label, text), in order.
    pub lines: Vec<(String, String)>,
    /// One per condition that needs a person: what it says, and where to look.
    pub to_do: Vec<String>,
}

/// Conditions that are bad when False (the rest: Degraded, bad when True).
const GOOD_WHEN_TRUE: [&str; 6] = [
    "Ready",
    "DataVerified",
    "RestoreTested",
    "CopiesHealthy",
    "RetentionApplied",
    "KeyActive",
];

/// The screen of `job`, its newest Snapshots and its KmipServer, at `now`. Pure.
pub fn screen(
    job: &BackupJob,
    last: Option<&Snapshot>,
    kmip: Option<&KmipServer>,
    now: jiff::Timestamp,
) -> Screen {
    let st = job.status.clone().unwrap_or_default();
    let mut lines = Vec::new();
    let mut line = |k: &str, v: String| lines.push((k.to_string(), v));
    line(
        "Last good snapshot",
        match &st.last_successful_snapshot {
            Some(n) => format!("{n}, {} ago", age(st.last_successful_time.as_ref(), now)),
            None => "none yet".into(),
        },
    );
    line(
        "Next run",
        match &st.next_schedule_time {
            Some(t) => t.0.to_string(),
            None if job.spec.schedule.is_none() => "none (no schedule: one run at creation)".into(),
            None => "-".into(),
        },
    );
    line(
        "Running",
        match &st.running_snapshot {
            Some(n) => format!("{n} {}", st.progress_summary.clone().unwrap_or_default()),
            None => "nothing".into(),
        },
    );
    let mut warnings = Vec::new();
    if let Some((name, s)) = last.and_then(|s| Some((s.name_any(), s.status.as_ref()?))) {
        let capture = s.capture.as_ref();
        let held = capture
            .and_then(|c| c.lock.as_ref())
            .and_then(|l| l.held_seconds)
            .map(|h| format!(", member writes held {h:.1} s"))
            .unwrap_or_default();
        let consistent = condition(&s.conditions, "Consistent");
        if let Some(c) = consistent.filter(|c| c.status == "False") {
            warnings.push(format!(
                "Snapshot {name} is not consistent ({}): {}",
                c.reason, c.message
            ));
        }
        line(
            "Capture",
            match capture {
                Some(c) => format!(
                    "{} of {name}{held}{}",
                    super::snapshots::capture_name(&c.mode),
                    consistent
                        .map(|c| format!(", Consistent={}", c.status))
                        .unwrap_or_default()
                ),
                None => "-".into(),
            },
        );
    }
    line("Key", key_line(job, st.key_id.as_deref(), kmip, now));
    line(
        "Repository",
        format!(
            "{} snapshot(s) kept, {} stored",
            st.snapshot_count,
            human_bytes(st.stored_bytes)
        ),
    );
    line(
        "Data verification",
        match &st.last_verification {
            Some(v) => format!(
                "{:?} {} ago (packs group {}, {} problem(s))",
                v.result,
                age(v.time.as_ref(), now),
                v.subset,
                v.problem_count
            ),
            None => "none yet (spec.verification.readData)".into(),
        },
    );
    line(
        "Restore test",
        match &st.last_restore_test {
            Some(r) => format!(
                "{:?} {} ago (Snapshot {}{})",
                r.result,
                age(r.time.as_ref(), now),
                r.snapshot,
                r.duration_seconds
                    .map(|d| format!(", {d:.0} s"))
                    .unwrap_or_default()
            ),
            None => "none yet (spec.verification.restoreTest)".into(),
        },
    );
    for c in &st.copies {
        line(
            &format!("Copy {}", c.name),
            format!(
                "{:?}, holds {} ({} behind)",
                c.result,
                c.last_copied_snapshot.as_deref().unwrap_or("nothing yet"),
                c.lag
            ),
        );
    }
    if let Some(r) = condition(&st.conditions, "RetentionApplied") {
        line("Retention", r.message.clone());
    }
    Screen {
        job: job.name_any(),
        namespace: job.namespace().unwrap_or_default(),
        phase: format!("{:?}", st.phase),
        lines,
        to_do: to_do(&st.conditions).into_iter().chain(warnings).collect(),
    }
}

/// The master key line: the job's key, and for KMIP its server's rotation state.
fn key_line(
    job: &BackupJob,
    key: Option<&str>,
    kmip: Option<&KmipServer>,
    now: jiff::Timestamp,
) -> String {
    let key = key.unwrap_or("not known yet");
    let Some(r) = &job.spec.encryption.kmip_server_ref else {
        return format!("{key} (a local key file)");
    };
    let Some(ks) = kmip.and_then(|k| k.status.as_ref()) else {
        return format!("{key} (KmipServer {}: no status)", r.name);
    };
    let mut s = format!(
        "{key} (KmipServer {}; last rotation {} ago",
        r.name,
        age(ks.last_rotation_time.as_ref(), now)
    );
    if let Some(next) = &ks.next_rotation_time {
        s.push_str(&format!(", next {}", next.0));
    }
    if let Some(w) = ks.rewrap.as_ref().filter(|w| w.completed_at.is_none()) {
        s.push_str(&format!(
            ", rewrapping under {}: {}/{} repositories",
            w.target_key_id, w.repositories_done, w.repositories_total
        ));
    }
    s + ")"
}

/// What needs a person: every condition in a bad state, with its words.
fn to_do(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Vec<String> {
    conds
        .iter()
        .filter(|c| {
            let good_true = GOOD_WHEN_TRUE.contains(&c.type_.as_str());
            (good_true && c.status == "False") || (c.type_ == "Degraded" && c.status == "True")
        })
        .map(|c| format!("{} is {} ({}): {}", c.type_, c.status, c.reason, c.message))
        .collect()
}

/// The screen as text.
pub fn render(s: &Screen) -> String {
    let width = s.lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = format!("BackupJob {}/{}: {}\n", s.namespace, s.job, s.phase);
    for (k, v) in &s.lines {
        out.push_str(&format!("  {:<width$} {v}\n", format!("{k}:")));
    }
    if s.to_do.is_empty() {
        out.push_str("Nothing to do: no condition needs a look.\n");
    } else {
        out.push_str("To do:\n");
        for t in &s.to_do {
            out.push_str(&format!("  - {t}\n"));
        }
        out.push_str(&format!(
            "  (kubectl describe backupjob {} -n {} shows the Events)\n",
            s.job, s.namespace
        ));
    }
    out
}

pub async fn run(t: &Target, args: StatusArgs) -> Result<(), CliError> {
    let jobs: Api<BackupJob> = Api::namespaced(t.client.clone(), &t.namespace);
    let Some(job) = jobs.get_opt(&args.job).await? else {
        return Err(format!(
            "BackupJob {} not found in namespace {} (-n NAMESPACE picks another)",
            args.job, t.namespace
        )
        .into());
    };
    let snaps: Api<Snapshot> = Api::namespaced(t.client.clone(), &t.namespace);
    let last = match job.status.as_ref().and_then(|s| s.last_snapshot.clone()) {
        Some(n) => snaps.get_opt(&n).await?,
        None => None,
    };
    let kmip = match &job.spec.encryption.kmip_server_ref {
        Some(r) => {
            Api::<KmipServer>::namespaced(t.client.clone(), &t.namespace)
                .get_opt(&r.name)
                .await?
        }
        None => None,
    };
    let s = screen(&job, last.as_ref(), kmip.as_ref(), jiff::Timestamp::now());
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&s)?),
        Output::Table => print!("{}", render(&s)),
    }
    Ok(())
}
