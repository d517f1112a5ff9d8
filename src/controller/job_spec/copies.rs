//! A job's copies (spec.copies[]) checked: what the schema says as CEL or list rules (which a
//! v1.20 API server drops), each destination and schedule, a copy that would be the job's own
//! repository or another copy's, and spec.verification.copy naming a copy. Pure. What a copy
//! references (its Secrets, claim, KmipServer) is checked per copy, not here: a copy whose
//! Secret is missing holds back that copy, never the job's backups.

use std::collections::BTreeSet;

use super::schedule::CronSchedule;
use super::validate::{Problem, Reference, check_destination, repository_references};
use crate::api::backup_job::BackupJobSpec;
use crate::api::copy::CopySpec;
use crate::api::destination::Destination;
use crate::controller::reason::Reason;

/// The field of copy `i`.
pub fn copy_field(i: usize) -> String {
    format!("spec.copies[{i}]")
}

/// What copy `i` references, with field paths under `spec.copies[i]`.
pub fn copy_references(i: usize, c: &CopySpec) -> Vec<Reference> {
    let mut refs = repository_references(&c.destination, &c.encryption, &copy_field(i));
    refs.extend(super::retention::retention_reference(
        &c.destination,
        super::retention::copy_retention_secret(c),
        &format!("{}.retention.credentialsSecret", copy_field(i)),
    ));
    refs
}

/// Where a destination's repository is, as one comparable string: two destinations with the
/// same one are the same repository (the same claim and directory, or the same endpoint,
/// account, bucket and prefix).
pub fn repository_place(d: &Destination) -> Option<String> {
    let trim = |p: &Option<String>| p.as_deref().unwrap_or("").trim_matches('/').to_string();
    if let Some(p) = &d.pvc {
        return Some(format!("pvc {}/{}", p.claim_name, p.path.trim_matches('/')));
    }
    if let Some(s) = &d.s3 {
        let ep = s.endpoint.as_deref().unwrap_or("aws").trim_end_matches('/');
        return Some(format!("s3 {ep} {}/{}", s.bucket, trim(&s.prefix)));
    }
    if let Some(g) = &d.gcs {
        let ep = g.endpoint.as_deref().unwrap_or("gcs").trim_end_matches('/');
        return Some(format!("gcs {ep} {}/{}", g.bucket, trim(&g.prefix)));
    }
    d.azure
        .as_ref()
        .map(|a| format!("azure {} {}/{}", a.account, a.container, trim(&a.prefix)))
}

/// Whether `name` is a DNS label (what a copy's name must be).
fn is_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 40
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Every copy's own problems, and spec.verification.copy's.
pub fn check_copies(spec: &BackupJobSpec, problems: &mut Vec<Problem>) {
    let invalid = |m: String| Problem::new(Reason::InvalidSpec, m);
    let mut names = BTreeSet::new();
    let mut places = vec![(
        "spec.destination".to_string(),
        repository_place(&spec.destination),
    )];
    for (i, c) in spec.copies.iter().enumerate() {
        let field = copy_field(i);
        if !is_label(&c.name) {
            problems.push(invalid(format!(
                "{field}.name {:?}: not a DNS label (1 to 40 lowercase letters, digits and '-', starting and ending with a letter or digit)",
                c.name
            )));
        } else if !names.insert(c.name.as_str()) {
            problems.push(invalid(format!(
                "{field}.name {:?}: another copy has this name; give each copy its own",
                c.name
            )));
        }
        check_destination(&c.destination, &format!("{field}.destination"), problems);
        let place = repository_place(&c.destination);
        if let Some((other, _)) = places.iter().find(|(_, p)| p.is_some() && *p == place) {
            problems.push(invalid(format!(
                "{field}.destination: the same repository as {other}; a copy must live in another store, bucket, prefix or claim directory"
            )));
        }
        places.push((format!("{field}.destination"), place));
        let e = &c.encryption;
        if e.kmip_server_ref.is_some() == e.local_key_secret.is_some() {
            problems.push(invalid(format!(
                "{field}.encryption: set exactly one of kmipServerRef or localKeySecret"
            )));
        }
        if let Some(s) = &c.schedule
            && let Err(e) = CronSchedule::parse(&s.cron, &s.time_zone)
        {
            problems.push(Problem::new(
                Reason::InvalidSchedule,
                format!("{field}.schedule: {e}"),
            ));
        }
        if let Some(age) = c.retention.as_ref().and_then(|r| r.max_age.as_deref())
            && let Err(e) = crate::api::common::parse_duration(age, &['h', 'd'])
        {
            problems.push(invalid(format!("{field}.retention.maxAge {age:?}: {e}")));
        }
    }
    if let Some(name) = spec.verification.as_ref().and_then(|v| v.copy.as_ref())
        && !spec.copies.iter().any(|c| &c.name == name)
    {
        let known: Vec<&str> = spec.copies.iter().map(|c| c.name.as_str()).collect();
        problems.push(invalid(format!(
            "spec.verification.copy {name:?}: no copy of that name in spec.copies (copies: {}); name one, or remove it to check the job's own repository",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> BackupJobSpec {
        let base = "source: {statefulSetName: rs0, dataVolumeName: data, syncSource: {mode: member, member: rs0-1}}\ndestination: {pvc: {claimName: backups, path: repo}}\nencryption: {localKeySecret: {name: k, key: key.json}}\n";
        serde_yaml::from_str(&format!("{base}{yaml}")).expect("spec")
    }

    fn problems(yaml: &str) -> Vec<String> {
        let mut out = Vec::new();
        check_copies(&spec(yaml), &mut out);
        out.into_iter().map(|p| p.message).collect()
    }

    #[test]
    fn a_valid_copy_has_no_problems() {
        assert_eq!(
            problems(
                "copies:\n- {name: offsite, destination: {s3: {bucket: b, region: r, credentialsSecret: s}}, encryption: {localKeySecret: {name: k2, key: key.json}}, retention: {keepLast: 3}, schedule: {cron: '0 3 * * *'}}\nverification: {copy: offsite}"
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_mistake_names_its_field() {
        let p = problems(
            "copies:\n- {name: a, destination: {pvc: {claimName: backups, path: repo}}, encryption: {localKeySecret: {name: k2, key: key.json}}}\n- {name: a, destination: {s3: {bucket: b, region: r, credentialsSecret: s, endpoint: 'http://x'}}, encryption: {}, schedule: {cron: 'nope'}}\n- {name: Bad_Name, destination: {s3: {bucket: b, region: r, credentialsSecret: s2, endpoint: 'http://x', insecure: true}}, encryption: {localKeySecret: {name: k, key: key.json}}, retention: {maxAge: 3w}}\nverification: {copy: elsewhere}",
        );
        let want = [
            "spec.copies[0].destination: the same repository as spec.destination",
            "spec.copies[1].name \"a\": another copy has this name",
            "spec.copies[1].destination.s3.endpoint \"http://x\": http:// sends",
            "spec.copies[1].encryption: set exactly one",
            "spec.copies[1].schedule:",
            "spec.copies[2].name \"Bad_Name\": not a DNS label",
            "spec.copies[2].destination: the same repository as spec.copies[1].destination",
            "spec.copies[2].retention.maxAge \"3w\":",
            "spec.verification.copy \"elsewhere\": no copy of that name in spec.copies (copies: a, a, Bad_Name)",
        ];
        for w in want {
            assert!(p.iter().any(|m| m.starts_with(w)), "{w:?} not in {p:#?}");
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
    }
}
