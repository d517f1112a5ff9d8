//! A retention policy (the job's spec.retention, or a copy's) as agent arguments. Pure.

use crate::api::backup_job::Retention;

/// The rules of `r` as `--keep-*` and `--max-age` flags (none for an empty policy).
pub fn retention_flags(r: &Retention) -> Vec<String> {
    let rules = [
        ("--keep-last", r.keep_last.map(|n| n.to_string())),
        ("--keep-daily", r.keep_daily.map(|n| n.to_string())),
        ("--keep-weekly", r.keep_weekly.map(|n| n.to_string())),
        ("--keep-monthly", r.keep_monthly.map(|n| n.to_string())),
        ("--max-age", r.max_age.clone()),
    ];
    rules
        .into_iter()
        .filter_map(|(flag, value)| Some([flag.to_string(), value?]))
        .flatten()
        .collect()
}
