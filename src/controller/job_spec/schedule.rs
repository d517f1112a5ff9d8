//! When a BackupJob runs: a standard 5-field cron expression read in an IANA time zone. Pure:
//! every function takes "now" as an argument.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A parsed, validated `spec.schedule`.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    tz: TimeZone,
}

/// A schedule that cannot be used, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("spec.schedule.cron {expr:?}: {reason}")]
    Cron { expr: String, reason: String },
    #[error(
        "spec.schedule.timeZone {tz:?}: not a known IANA time zone (for example UTC, Europe/Berlin, America/New_York)"
    )]
    TimeZone { tz: String },
}

/// Name, lowest and highest value of each of the five fields.
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

/// Check the five fields' numbers are in range, so the message can say which one is not
/// (the cron library's own messages do not name the field).
fn check_fields(expr: &str) -> Result<(), String> {
    let trimmed = expr.trim();
    if trimmed.starts_with('@') {
        return Ok(());
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "has {} fields; expected 5 (minute hour day-of-month month day-of-week)",
            fields.len()
        ));
    }
    for (field, (name, lo, hi)) in fields.iter().zip(FIELDS) {
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            if let Some(s) = step {
                match s.parse::<u32>() {
                    Ok(0) => return Err(format!("{name} step {s} must be at least 1")),
                    Ok(_) => {}
                    Err(_) => return Err(format!("{name} step {s:?} is not a number")),
                }
            }
            for bound in range.split('-') {
                // Names (MON, JAN), `*`, `?`, `L` and `#` forms are left to the parser.
                if let Ok(n) = bound.parse::<u32>()
                    && !(lo..=hi).contains(&n)
                {
                    return Err(format!("{name} {n} is out of range {lo}-{hi}"));
                }
            }
        }
    }
    Ok(())
}

impl CronSchedule {
    /// Parse `spec.schedule.cron` and `spec.schedule.timeZone`.
    pub fn parse(expr: &str, time_zone: &str) -> Result<Self, ScheduleError> {
        let bad = |reason: String| ScheduleError::Cron {
            expr: expr.to_string(),
            reason,
        };
        check_fields(expr).map_err(bad)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| bad(e.to_string()))?;
        let tz = TimeZone::get(time_zone).map_err(|_| ScheduleError::TimeZone {
            tz: time_zone.to_string(),
        })?;
        let s = CronSchedule { cron, tz };
        // An expression that parses but never fires (30 February) is as useless as one that
        // does not parse.
        if s.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(bad("never matches a real date".into()));
        }
        Ok(s)
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&t.to_zoned(self.tz.clone()), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last scheduled time at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&t.to_zoned(self.tz.clone()), true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The next `n` scheduled times strictly after `after`.
    pub fn next_runs(&self, after: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

/// What the schedule asks for at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// Start a run for this scheduled time now (the latest one missed, if several were).
    pub run: Option<Timestamp>,
    /// Scheduled times missed before `run` and not caught up (capped at [`MISSED_CAP`]).
    pub skipped: u32,
    /// The next scheduled time after now.
    pub next: Option<Timestamp>,
}

/// Counting missed runs stops here (a long outage of a per-minute job).
pub const MISSED_CAP: u32 = 1000;

/// Which run is due. `last_scheduled` is the scheduled time of the newest run already created
/// (None: none yet, and runs count from `created`, the job's creation). After downtime at most
/// one catch-up run is asked for: the latest missed time.
pub fn due(
    schedule: &CronSchedule,
    created: Timestamp,
    last_scheduled: Option<Timestamp>,
    now: Timestamp,
) -> Due {
    let since = last_scheduled.unwrap_or(created);
    let latest = schedule.last_at_or_before(now).filter(|t| *t > since);
    let skipped = match latest {
        Some(latest) => {
            let mut n = 0;
            let mut t = since;
            while n < MISSED_CAP {
                match schedule.next_after(t) {
                    Some(next) if next < latest => {
                        n += 1;
                        t = next;
                    }
                    _ => break,
                }
            }
            n
        }
        None => 0,
    };
    Due {
        run: latest,
        skipped,
        next: schedule.next_after(now),
    }
}

/// `30m`, `720h` or `90d` (or `30s`) as a duration; zero is refused.
pub fn parse_period(s: &str) -> Result<jiff::SignedDuration, String> {
    match crate::api::common::parse_duration(s, &['s', 'm', 'h', 'd'])? {
        0 => Err(format!("{s:?}: must be longer than zero")),
        secs => i64::try_from(secs)
            .map(jiff::SignedDuration::from_secs)
            .map_err(|_| format!("{s:?}: too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn sched(cron: &str, tz: &str) -> CronSchedule {
        CronSchedule::parse(cron, tz).expect("valid schedule")
    }

    #[test]
    fn bad_expressions_name_the_field() {
        let cases = [
            (
                "61 * * * *",
                "UTC",
                "spec.schedule.cron \"61 * * * *\": minute 61 is out of range 0-59",
            ),
            (
                "0 24 * * *",
                "UTC",
                "spec.schedule.cron \"0 24 * * *\": hour 24 is out of range 0-23",
            ),
            (
                "0 0 0 * *",
                "UTC",
                "spec.schedule.cron \"0 0 0 * *\": day of month 0 is out of range 1-31",
            ),
            (
                "0 0 1 13 *",
                "UTC",
                "spec.schedule.cron \"0 0 1 13 *\": month 13 is out of range 1-12",
            ),
            (
                "0 0 * * 1-9",
                "UTC",
                "spec.schedule.cron \"0 0 * * 1-9\": day of week 9 is out of range 0-7",
            ),
            (
                "*/0 * * * *",
                "UTC",
                "spec.schedule.cron \"*/0 * * * *\": minute step 0 must be at least 1",
            ),
            (
                "0 0 * *",
                "UTC",
                "spec.schedule.cron \"0 0 * *\": has 4 fields; expected 5 (minute hour day-of-month month day-of-week)",
            ),
            (
                "0 0 0 * * *",
                "UTC",
                "spec.schedule.cron \"0 0 0 * * *\": has 6 fields; expected 5 (minute hour day-of-month month day-of-week)",
            ),
            (
                "0 0 30 2 *",
                "UTC",
                "spec.schedule.cron \"0 0 30 2 *\": never matches a real date",
            ),
            (
                "0 0 * * *",
                "Mars/Olympus_Mons",
                "spec.schedule.timeZone \"Mars/Olympus_Mons\": not a known IANA time zone (for example UTC, Europe/Berlin, America/New_York)",
            ),
        ];
        for (cron, tz, want) in cases {
            let got = CronSchedule::parse(cron, tz)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_string()), "{cron} in {tz}");
        }
        assert!(CronSchedule::parse("x y z a b", "UTC").is_err());
    }

    #[test]
    fn next_runs_table() {
        let cases: &[(&str, &str, &str, &[&str])] = &[
            (
                "15 * * * *",
                "UTC",
                "2026-03-01T10:15:00Z",
                &["2026-03-01T11:15:00Z", "2026-03-01T12:15:00Z"],
            ),
            (
                "0 2 * * *",
                "Europe/Berlin",
                "2026-01-10T12:00:00Z",
                // 02:00 in Berlin is 01:00 UTC in winter.
                &["2026-01-11T01:00:00Z", "2026-01-12T01:00:00Z"],
            ),
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-03-28T12:00:00Z",
                // 29 March 2026: 02:00-03:00 does not exist in Berlin (spring forward); the
                // run is not lost, it happens at the first instant after the gap.
                &["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
            ),
            (
                "30 1 * * *",
                "America/New_York",
                "2026-11-01T00:00:00Z",
                // 1 November 2026: 01:30 happens twice in New York (fall back); one run.
                &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
            ),
            (
                "0 0 * * 0",
                "UTC",
                "2026-11-27T12:00:00Z",
                &["2026-11-29T00:00:00Z", "2026-12-06T00:00:00Z"],
            ),
            (
                "@daily",
                "Asia/Tokyo",
                "2026-11-27T12:00:00Z",
                &["2026-11-27T15:00:00Z", "2026-11-28T15:00:00Z"],
            ),
        ];
        for (cron, tz, after, want) in cases {
            let got: Vec<String> = sched(cron, tz)
                .next_runs(ts(after), want.len())
                .iter()
                .map(|t| t.to_string())
                .collect();
            assert_eq!(got, *want, "{cron} in {tz} after {after}");
        }
    }

    #[test]
    fn due_table() {
        let hourly = sched("0 * * * *", "UTC");
        let created = ts("2026-11-27T09:30:00Z");
        // (what, last scheduled, now, run, skipped, next)
        // (what, last scheduled, now, run, skipped, next)
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
            u32,
            &'a str,
        );
        let cases: &[Case] = &[
            (
                "just created: nothing due until the first tick",
                None,
                "2026-11-27T09:31:00Z",
                None,
                0,
                "2026-11-27T10:00:00Z",
            ),
            (
                "first tick reached",
                None,
                "2026-11-27T10:00:05Z",
                Some("2026-11-27T10:00:00Z"),
                0,
                "2026-11-27T11:00:00Z",
            ),
            (
                "tick already run",
                Some("2026-11-27T10:00:00Z"),
                "2026-11-27T10:20:00Z",
                None,
                0,
                "2026-11-27T11:00:00Z",
            ),
            (
                "after five hours down: one catch-up run, four skipped",
                Some("2026-11-27T10:00:00Z"),
                "2026-11-27T15:10:00Z",
                Some("2026-11-27T15:00:00Z"),
                4,
                "2026-11-27T16:00:00Z",
            ),
            (
                "exactly on the tick",
                Some("2026-11-27T10:00:00Z"),
                "2026-11-27T11:00:00Z",
                Some("2026-11-27T11:00:00Z"),
                0,
                "2026-11-27T12:00:00Z",
            ),
        ];
        for (what, last, now, run, skipped, next) in cases {
            let d = due(&hourly, created, last.map(ts), ts(now));
            assert_eq!(
                d,
                Due {
                    run: run.map(ts),
                    skipped: *skipped,
                    next: Some(ts(next)),
                },
                "{what}"
            );
        }
    }

    #[test]
    fn a_long_outage_of_a_per_minute_job_is_counted_up_to_the_cap() {
        let every_minute = sched("* * * * *", "UTC");
        let d = due(
            &every_minute,
            ts("2026-01-01T00:00:00Z"),
            Some(ts("2026-01-01T00:00:00Z")),
            ts("2026-02-01T00:00:30Z"),
        );
        assert_eq!(d.run, Some(ts("2026-02-01T00:00:00Z")));
        assert_eq!(d.skipped, MISSED_CAP);
    }
}
