//! The scheduled checks of a job's spec (spec.verification): their schedules, and what is
//! wrong with them. Pure.

use super::consistency::parse_timeout;
use super::schedule::CronSchedule;
use super::validate::Problem;
use crate::api::backup_job::Schedule;
use crate::api::verification::{CheckContainer, Verification};
use crate::controller::reason::Reason;

/// The schedules of the data read and of the restore test, where given and valid.
pub fn check_schedules(v: Option<&Verification>) -> (Option<CronSchedule>, Option<CronSchedule>) {
    let parse = |s: &Schedule| CronSchedule::parse(&s.cron, &s.time_zone).ok();
    let Some(v) = v else {
        return (None, None);
    };
    (
        v.read_data.as_ref().and_then(|r| parse(&r.schedule)),
        v.restore_test.as_ref().and_then(|t| parse(&t.schedule)),
    )
}

/// What is wrong with spec.verification, each problem naming its field.
pub fn check_verification(v: Option<&Verification>, problems: &mut Vec<Problem>) {
    let Some(v) = v else { return };
    let mut schedules = Vec::new();
    if let Some(r) = &v.read_data {
        schedules.push(("spec.verification.readData.schedule", &r.schedule));
    }
    if let Some(t) = &v.restore_test {
        schedules.push(("spec.verification.restoreTest.schedule", &t.schedule));
        if let Some(message) = t
            .check
            .as_ref()
            .and_then(|c| check_env_problem("spec.verification.restoreTest.check", c))
        {
            problems.push(Problem::new(Reason::InvalidSpec, message));
        }
        if let Some(t) = t.check.as_ref().and_then(|c| c.timeout.as_deref())
            && let Err(e) = parse_timeout(t)
        {
            problems.push(Problem::new(
                Reason::InvalidSpec,
                format!("spec.verification.restoreTest.check.timeout {e}"),
            ));
        }
    }
    for (field, s) in schedules {
        if let Err(e) = CronSchedule::parse(&s.cron, &s.time_zone) {
            problems.push(Problem::new(
                Reason::InvalidSchedule,
                format!("{field}: {e}"),
            ));
        }
    }
}

/// A check container's env taking a value from elsewhere (`valueFrom`: a Secret, a
/// ConfigMap, the pod's fields), named by field: the operator would read them on behalf of
/// whoever writes the check (the schema refuses it too, where the API server runs CEL rules).
pub fn check_env_problem(field: &str, c: &CheckContainer) -> Option<String> {
    let (i, e) = c
        .env
        .iter()
        .enumerate()
        .find(|(_, e)| e.value_from.is_some())?;
    Some(format!(
        "{field}.env[{i}].valueFrom ({}): not allowed, the check pod must not read the namespace's Secrets or ConfigMaps through the operator; give the value inline",
        e.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::job;

    #[test]
    fn bad_check_schedules_name_their_field() {
        let j = job(
            "verification: {readData: {schedule: {cron: \"61 * * * *\"}}, restoreTest: {schedule: {cron: \"*/5 * * * *\"}, check: {image: x, timeout: 5x}}}",
        );
        let mut problems = Vec::new();
        check_verification(j.spec.verification.as_ref(), &mut problems);
        let text: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text.iter()
                .any(|m| m.starts_with("spec.verification.readData.schedule: ")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|m| m.starts_with("spec.verification.restoreTest.check.timeout ")),
            "{text:?}"
        );
        let (read, test) = check_schedules(j.spec.verification.as_ref());
        // env taking a value from a Secret: named by field and index.
        let j = job(
            "verification: {restoreTest: {schedule: {cron: \"0 6 * * 0\"}, check: {image: x, env: [{name: A, value: a}, {name: KEY, valueFrom: {secretKeyRef: {name: other-apps-secret, key: k}}}]}}}",
        );
        let mut problems = Vec::new();
        check_verification(j.spec.verification.as_ref(), &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.starts_with(
                "spec.verification.restoreTest.check.env[1].valueFrom (KEY): not allowed"
            ),
            "{}",
            problems[0].message
        );
        assert!(read.is_none() && test.is_some());
    }
}
