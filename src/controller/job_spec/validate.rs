//! A BackupJob checked before anything is scheduled or started: the rules the schema states as
//! CEL (which a v1.20 API server silently drops), the cron schedule, and the objects the spec
//! refers to. Pure: the references are looked up by the controller and passed in. Each problem
//! names the field, so the condition tells the user what to fix.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::backup_job::{
    AuthMechanism, BackupJobSpec, Encryption, MongoSource, SyncSourceMode,
};

use super::consistency::{Capture, capture, parse_timeout};
use super::schedule::CronSchedule;
use crate::api::destination::Destination;
use crate::controller::names::GCS_CREDENTIALS_FILE;
use crate::controller::reason::Reason;

/// One thing wrong with a BackupJob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    /// What is wrong, starting with the field.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }

    /// Whether the problem is a referenced object (or a Secret's key) that does not exist yet:
    /// one that may go away without a change of the job.
    pub fn is_missing_reference(&self) -> bool {
        self.reason.is_missing_reference()
    }
}

/// Kinds of objects a BackupJob refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefKind {
    Secret,
    PersistentVolumeClaim,
    KmipServer,
    StatefulSet,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Secret => "Secret",
            RefKind::PersistentVolumeClaim => "PersistentVolumeClaim",
            RefKind::KmipServer => "KmipServer",
            RefKind::StatefulSet => "StatefulSet",
        }
    }
}

/// An object the spec names, with the field naming it and, for Secrets, the keys it must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub field: String,
    pub kind: RefKind,
    pub name: String,
    /// Secret keys that must be present (any one of each inner list).
    pub keys: Vec<Vec<String>>,
}

/// A reference at `field` to `kind` `name`, needing `keys` (any one of each inner list).
fn reference(field: String, kind: RefKind, name: &str, keys: Vec<Vec<&str>>) -> Reference {
    Reference {
        field,
        kind,
        name: name.into(),
        keys: keys
            .into_iter()
            .map(|alts| alts.into_iter().map(String::from).collect())
            .collect(),
    }
}

/// The objects the spec refers to, in a stable order.
pub fn references(spec: &BackupJobSpec) -> Vec<Reference> {
    let mut out = Vec::new();
    let r = |field: &str, kind, name: &str, keys| reference(field.into(), kind, name, keys);
    if let Some(sts) = &spec.source.stateful_set_name {
        out.push(r(
            "spec.source.statefulSetName",
            RefKind::StatefulSet,
            sts,
            vec![],
        ));
    }
    if let Some(c) = &spec.source.connection {
        if let Some(s) = &c.credentials_secret {
            let keys = match c.auth_mechanism {
                AuthMechanism::X509 => vec![vec!["tls.crt"], vec!["tls.key"]],
                AuthMechanism::None => vec![],
                _ => vec![vec!["username"], vec!["password"]],
            };
            out.push(r(
                "spec.source.connection.credentialsSecret",
                RefKind::Secret,
                s,
                keys,
            ));
        }
        if let Some(ca) = c.tls.as_ref().and_then(|t| t.ca_secret.as_ref()) {
            out.push(r(
                "spec.source.connection.tls.caSecret",
                RefKind::Secret,
                ca,
                vec![vec!["ca.crt"]],
            ));
        }
    }
    out.extend(repository_references(
        &spec.destination,
        &spec.encryption,
        "spec",
    ));
    out.extend(super::retention::retention_references(spec));
    out
}

/// The references of a repository and its key (a BackupJob's spec.destination and
/// spec.encryption, or a Restore's spec.source), their fields named under `prefix`.
pub fn repository_references(dest: &Destination, enc: &Encryption, prefix: &str) -> Vec<Reference> {
    let mut out = Vec::new();
    let r = reference;
    if let Some(pvc) = &dest.pvc {
        out.push(r(
            format!("{prefix}.destination.pvc.claimName"),
            RefKind::PersistentVolumeClaim,
            &pvc.claim_name,
            vec![],
        ));
    }
    if let Some(s3) = &dest.s3 {
        out.push(r(
            format!("{prefix}.destination.s3.credentialsSecret"),
            RefKind::Secret,
            &s3.credentials_secret,
            vec![vec!["AWS_ACCESS_KEY_ID"], vec!["AWS_SECRET_ACCESS_KEY"]],
        ));
    }
    if let Some(secret) = dest
        .gcs
        .as_ref()
        .and_then(|g| g.credentials_secret.as_ref())
    {
        out.push(r(
            format!("{prefix}.destination.gcs.credentialsSecret"),
            RefKind::Secret,
            secret,
            vec![vec![GCS_CREDENTIALS_FILE]],
        ));
    }
    if let Some(secret) = dest
        .azure
        .as_ref()
        .and_then(|a| a.credentials_secret.as_ref())
    {
        out.push(r(
            format!("{prefix}.destination.azure.credentialsSecret"),
            RefKind::Secret,
            secret,
            vec![vec![
                "AZURE_STORAGE_ACCOUNT_KEY",
                "AZURE_STORAGE_SAS_TOKEN",
                "AZURE_CLIENT_SECRET",
            ]],
        ));
    }
    if let Some(k) = &enc.local_key_secret {
        out.push(Reference {
            field: format!("{prefix}.encryption.localKeySecret.name"),
            kind: RefKind::Secret,
            name: k.name.clone(),
            keys: vec![vec![k.key.clone()]],
        });
    }
    if let Some(k) = &enc.kmip_server_ref {
        out.push(r(
            format!("{prefix}.encryption.kmipServerRef.name"),
            RefKind::KmipServer,
            &k.name,
            vec![],
        ));
    }
    out
}

/// What the controller found for each reference: absent, or present with these keys
/// (Secrets) / no keys (other kinds).
pub type Found = BTreeMap<(RefKind, String), Option<BTreeSet<String>>>;

/// Problems with the references, given what was found.
pub fn check_references(refs: &[Reference], found: &Found, namespace: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    for r in refs {
        if !is_object_name(&r.name) {
            out.push(Problem::new(
                Reason::InvalidSpec,
                format!(
                    "{} {}: not a valid {} name (1 to 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)",
                    r.field,
                    shown(&r.name),
                    r.kind.as_str()
                ),
            ));
            continue;
        }
        match found.get(&(r.kind, r.name.clone())) {
            None | Some(None) => out.push(Problem::new(
                match r.kind {
                    RefKind::Secret => Reason::SecretNotFound,
                    RefKind::PersistentVolumeClaim => Reason::PersistentVolumeClaimNotFound,
                    RefKind::KmipServer => Reason::KmipServerNotFound,
                    RefKind::StatefulSet => Reason::StatefulSetNotFound,
                },
                format!(
                    "{} {:?}: {} not found in namespace {namespace}",
                    r.field,
                    r.name,
                    r.kind.as_str()
                ),
            )),
            Some(Some(keys)) => {
                for alts in &r.keys {
                    if !alts.iter().any(|k| keys.contains(k)) {
                        out.push(Problem::new(
                            Reason::SecretKeyNotFound,
                            // The Secret's other keys are not named: a condition is readable
                            // by whoever reads the BackupJob, the Secret may not be.
                            format!(
                                "{} {:?}: Secret has no key {}",
                                r.field,
                                r.name,
                                alts.join(" or "),
                            ),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Whether `name` can name a namespaced object (a DNS-1123 subdomain): anything else is
/// never looked up, as an empty name would turn a get into a list, and a huge one would fail
/// the request instead of saying what is wrong. Pure.
pub fn is_object_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (1..=253).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

/// A value from a spec as a message quotes it: in quotes, cut after 64 characters (a condition
/// message must stay readable, and within the API's limit on its length).
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
        None => format!("{value:?}"),
    }
}

/// Problems with the spec itself (the schedule, and the rules the schema states as CEL).
pub fn check_spec(spec: &BackupJobSpec) -> (Option<CronSchedule>, Vec<Problem>) {
    let mut problems = Vec::new();
    let schedule = match &spec.schedule {
        Some(s) => match CronSchedule::parse(&s.cron, &s.time_zone) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(Problem::new(Reason::InvalidSchedule, e.to_string()));
                None
            }
        },
        None => None,
    };
    check_source(&spec.source, &mut problems);
    check_destination(&spec.destination, "spec.destination", &mut problems);
    if let Some(p) = spec.placement.as_ref() {
        for (field, value) in [
            ("pendingTimeout", &p.pending_timeout),
            ("runTimeout", &p.run_timeout),
            ("nodeLostTimeout", &p.node_lost_timeout),
        ] {
            if let Some(t) = value.as_deref()
                && let Err(e) = parse_timeout(t)
            {
                problems.push(Problem::new(
                    Reason::InvalidSpec,
                    format!("spec.placement.{field} {e}"),
                ));
            }
        }
    }
    super::checks::check_verification(spec.verification.as_ref(), &mut problems);
    super::copies::check_copies(spec, &mut problems);
    super::retention::check_retention(spec, &mut problems);
    let e = &spec.encryption;
    if e.kmip_server_ref.is_some() == e.local_key_secret.is_some() {
        problems.push(Problem::new(
            Reason::InvalidSpec,
            "spec.encryption: set exactly one of kmipServerRef or localKeySecret",
        ));
    }
    (schedule, problems)
}

/// What is wrong with label selector `sel` (at `field`), if anything: a key or value the API
/// server would refuse when listing by it (which would fail every reconcile that lists). Pure.
pub fn label_selector_problem(field: &str, sel: &LabelSelector) -> Option<String> {
    if let Err(e) = kube::core::Selector::try_from(sel.clone()) {
        return Some(format!("{field}: {}", e.0));
    }
    let labels = sel.match_labels.iter().flatten();
    let expressions = sel.match_expressions.iter().flatten();
    let pairs = labels
        .map(|(k, v)| (format!("{field}.matchLabels"), k, Some(v)))
        .chain(expressions.flat_map(|e| {
            let at = format!("{field}.matchExpressions");
            let values = e.values.iter().flatten().map(Some).collect::<Vec<_>>();
            let values = if values.is_empty() {
                vec![None]
            } else {
                values
            };
            values.into_iter().map(move |v| (at.clone(), &e.key, v))
        }));
    for (at, key, value) in pairs {
        if !is_label_key(key) {
            return Some(format!(
                "{at}: key {} is not a label key (an optional DNS prefix and '/', then 1 to 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)",
                shown(key)
            ));
        }
        if let Some(v) = value.filter(|v| !is_label_value(v)) {
            return Some(format!(
                "{at}: value {} of key {key} is not a label value (at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)",
                shown(v)
            ));
        }
    }
    None
}

/// A label value: empty, or at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric.
fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_label_name(v)
}

/// The name part of a label key, or a non-empty label value.
fn is_label_name(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain.
fn is_label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => is_object_name(prefix) && is_label_name(name),
        None => is_label_name(k),
    }
}

fn check_source(s: &MongoSource, problems: &mut Vec<Problem>) {
    let mut bad = |m: String| problems.push(Problem::new(Reason::InvalidSpec, m));
    if s.stateful_set_name.is_some() == s.selector.is_some() {
        bad("spec.source: set exactly one of statefulSetName or selector to find the replica set's pods".into());
    }
    if let Some(problem) = s
        .selector
        .as_ref()
        .and_then(|sel| label_selector_problem("spec.source.selector", sel))
    {
        bad(problem);
    }
    let mode = s.sync_source.as_ref().map(|x| x.mode).unwrap_or_default();
    let member = s.sync_source.as_ref().and_then(|x| x.member.as_ref());
    if (mode == SyncSourceMode::Member) != member.is_some() {
        bad("spec.source.syncSource: member names a pod if and only if mode is member".into());
    }
    if s.connection.is_none() && mode != SyncSourceMode::Member {
        bad(format!(
            "spec.source.syncSource.mode {}: without spec.source.connection only mode member can be used (anySecondary and primary need a connection to ask MongoDB which member is which)",
            match mode {
                SyncSourceMode::AnySecondary => "anySecondary",
                SyncSourceMode::Primary => "primary",
                SyncSourceMode::Member => "member",
            }
        ));
    }
    if let Some(c) = &s.connection {
        if c.auth_mechanism == AuthMechanism::X509 && !c.tls.as_ref().is_some_and(|t| t.enabled) {
            bad("spec.source.connection.authMechanism MONGODB-X509 needs tls.enabled".into());
        }
        // PLAIN carries the password itself, to whichever pod the job's selector picks: never
        // without TLS (which also checks the server is who it says).
        if c.auth_mechanism == AuthMechanism::Plain && !c.tls.as_ref().is_some_and(|t| t.enabled) {
            bad("spec.source.connection.authMechanism PLAIN (LDAP) sends the password in clear without TLS: set spec.source.connection.tls.enabled: true".into());
        }
        if !matches!(c.auth_mechanism, AuthMechanism::None) && c.credentials_secret.is_none() {
            bad(format!(
                "spec.source.connection.credentialsSecret: required with authMechanism {:?} (or set authMechanism NONE)",
                c.auth_mechanism
            ));
        }
    }
    for (field, path) in [
        ("spec.source.dbPath", Some(&s.db_path)),
        ("spec.source.mountPath", s.mount_path.as_ref()),
    ] {
        if let Some(path) = path
            && !is_plain_absolute(path)
        {
            bad(format!(
                "{field} {path:?}: must be an absolute path of plain names (no \".\", \"..\" or empty segments, no trailing slash), like /data/db"
            ));
            return;
        }
    }
    if let Some(mp) = &s.mount_path
        && !path_within(&s.db_path, mp)
    {
        bad(format!(
            "spec.source.dbPath {:?} is not inside spec.source.mountPath {mp:?}",
            s.db_path
        ));
    }
    if let Some(t) = s
        .consistency
        .as_ref()
        .and_then(|c| c.volume_snapshot_timeout.as_deref())
        && let Err(e) = parse_timeout(t)
    {
        bad(format!("spec.source.consistency.volumeSnapshotTimeout {e}"));
    }
    let capture = capture(s);
    if let Some(lock) = capture.lock() {
        let field = match &capture {
            Capture::FsyncLock { .. } => "spec.source.consistency.mode fsyncLock",
            _ if s.consistency.as_ref().and_then(|c| c.quiesce).is_some() => {
                "spec.source.consistency.quiesce fsyncLock"
            }
            _ => "spec.source.consistency.quiesce fsyncLock (the default with source.connection)",
        };
        if s.connection.is_none() {
            bad(format!(
                "{field}: needs spec.source.connection (the operator locks the member through it)"
            ));
        }
        let sync = s.sync_source.clone().unwrap_or_default().mode;
        if sync == SyncSourceMode::Primary && !lock.allow_primary {
            bad(format!(
                "{field} with spec.source.syncSource.mode primary: locking the primary stops every write of the replica set; set spec.source.consistency.allowPrimary: true to allow it, or copy a secondary"
            ));
        }
    }
    match capture {
        Capture::VolumeSnapshot { class, .. } if class.is_empty() => bad(
            "spec.source.consistency.volumeSnapshotClassName: required with mode volumeSnapshot"
                .to_string(),
        ),
        _ => {}
    }
}

/// `/a/b`: absolute, every segment a plain name (what the CRD's pattern also says).
pub fn is_plain_absolute(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
    })
}

fn path_within(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || dir.is_empty() || path.starts_with(&format!("{dir}/"))
}

/// Where dbPath is relative to the data volume's root: "" or "sub/dir".
pub fn db_path_in_volume(source: &MongoSource) -> String {
    let mount = source
        .mount_path
        .as_deref()
        .unwrap_or(&source.db_path)
        .trim_end_matches('/');
    source
        .db_path
        .strip_prefix(mount)
        .unwrap_or("")
        .trim_matches('/')
        .to_string()
}

/// An object-store destination takes its credentials from a Secret or from the pod's workload
/// identity, not both (the schema says so too; this names the field where it was not applied).
/// A destination (the job's, or a copy's at `field`): exactly one store, a safe PVC path, one
/// credential source, endpoints that keep credentials safe.
pub fn check_destination(d: &Destination, field: &str, problems: &mut Vec<Problem>) {
    if d.count() != 1 {
        problems.push(Problem::new(
            Reason::InvalidSpec,
            format!(
                "{field}: set exactly one of pvc, s3, gcs or azure ({} set)",
                d.count()
            ),
        ));
    }
    check_workload_identity(d, field, problems);
    super::transport::check_endpoints(d, field, problems);
    if let Some(pvc) = &d.pvc
        && pvc
            .path
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        problems.push(Problem::new(
            Reason::InvalidSpec,
            format!(
                "{field}.pvc.path {:?}: must be a relative path without empty, . or .. segments",
                pvc.path
            ),
        ));
    }
}

fn check_workload_identity(d: &Destination, field: &str, problems: &mut Vec<Problem>) {
    let both = [
        (
            "gcs",
            d.gcs
                .as_ref()
                .is_some_and(|g| g.credentials_secret.is_some() && g.workload_identity.is_some()),
        ),
        (
            "azure",
            d.azure
                .as_ref()
                .is_some_and(|a| a.credentials_secret.is_some() && a.workload_identity.is_some()),
        ),
    ];
    for (store, both) in both {
        if both {
            problems.push(Problem::new(
                Reason::InvalidSpec,
                format!(
                    "{field}.{store}: set at most one of credentialsSecret or workloadIdentity"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BackupJob;

    /// A spec exactly as written (no defaults filled in: absent fields are what is checked).
    fn spec(yaml_spec: &str) -> BackupJobSpec {
        let yaml = format!(
            "apiVersion: snapcrypt.dev/v1alpha1\nkind: BackupJob\nmetadata: {{name: rs0, namespace: db}}\nspec:\n{}",
            yaml_spec
                .lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        serde_yaml::from_str::<BackupJob>(&yaml)
            .expect("BackupJob yaml")
            .spec
    }

    const GOOD: &str = r#"
source:
  statefulSetName: rs0
  dataVolumeName: data
  syncSource: {mode: member, member: rs0-1}
destination:
  pvc: {claimName: backups}
encryption:
  localKeySecret: {name: rs0-key}
schedule: {cron: "0 3 * * *", timeZone: Europe/Berlin}
"#;

    fn messages(spec: &BackupJobSpec) -> Vec<String> {
        check_spec(spec).1.into_iter().map(|p| p.message).collect()
    }

    /// Found by tests/hostile_values.rs: a name no object can have is never looked up (an
    /// empty one made the get a list, a 100 kB one failed the request, and the job got no
    /// status); it is a problem naming the field, quoting at most 64 characters of it.
    #[test]
    fn names_no_object_can_have_are_problems_naming_the_field() {
        for good in ["a", "rs0-key", "a.b-1", &"a".repeat(253)] {
            assert!(is_object_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a/b", "..", &"a".repeat(254)] {
            assert!(!is_object_name(bad), "{bad}");
        }
        let refs = vec![Reference {
            field: "spec.source.connection.tls.caSecret".into(),
            kind: RefKind::Secret,
            name: "a".repeat(100_000),
            keys: vec![vec!["ca.crt".into()]],
        }];
        let problems = check_references(&refs, &Found::new(), "db");
        assert_eq!(problems.len(), 1);
        let m = &problems[0].message;
        assert!(
            m.starts_with("spec.source.connection.tls.caSecret \"aaaa")
                && m.contains("… (100000 bytes): not a valid Secret name")
                && m.len() < 300,
            "{m}"
        );
    }

    /// Data-safety items 1 and 8: a dbPath that climbs out of the volume, and LDAP (PLAIN)
    /// without TLS, are refused naming the field.
    #[test]
    fn climbing_paths_and_plain_without_tls_are_refused() {
        assert!(is_plain_absolute("/data/db") && is_plain_absolute("/var/lib/mongo/..x"));
        for bad in [
            "/data/db/../../etc",
            "/data/./db",
            "/data//db",
            "/",
            "data/db",
            "/data/db/",
        ] {
            assert!(!is_plain_absolute(bad), "{bad}");
        }
        let mut problems = Vec::new();
        let mut spec = spec(GOOD).source;
        spec.db_path = "/data/db/../../../etc/snapcrypt".into();
        check_source(&spec, &mut problems);
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("spec.source.dbPath")
                    && p.message.contains("plain names")),
            "{problems:?}"
        );
        problems.clear();
        spec.db_path = "/data/db".into();
        spec.connection = Some(crate::api::backup_job::MongoConnection {
            auth_mechanism: AuthMechanism::Plain,
            credentials_secret: Some("ldap".into()),
            ..Default::default()
        });
        spec.sync_source = None;
        check_source(&spec, &mut problems);
        assert!(
            problems.iter().any(|p| p
                .message
                .contains("PLAIN (LDAP) sends the password in clear")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_good_spec_has_no_problems() {
        let spec = spec(GOOD);
        let (sched, problems) = check_spec(&spec);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(sched.is_some());
    }

    #[test]
    fn bad_cron_is_named_with_the_field() {
        let spec = spec(&GOOD.replace("0 3 * * *", "61 * * * *"));
        assert_eq!(
            messages(&spec),
            vec!["spec.schedule.cron \"61 * * * *\": minute 61 is out of range 0-59"]
        );
        assert_eq!(check_spec(&spec).1[0].reason, Reason::InvalidSchedule);
    }

    #[test]
    fn cel_rules_are_checked_here_too() {
        let both = GOOD.replace(
            "  statefulSetName: rs0\n",
            "  statefulSetName: rs0\n  selector: {matchLabels: {app: rs0}}\n",
        );
        assert_eq!(
            messages(&spec(&both)),
            vec![
                "spec.source: set exactly one of statefulSetName or selector to find the replica set's pods"
            ]
        );
        let no_conn = GOOD.replace("{mode: member, member: rs0-1}", "{mode: anySecondary}");
        assert!(messages(&spec(&no_conn))[0].starts_with(
            "spec.source.syncSource.mode anySecondary: without spec.source.connection"
        ));
        let two_keys = GOOD.replace(
            "  localKeySecret: {name: rs0-key}",
            "  localKeySecret: {name: rs0-key}\n  kmipServerRef: {name: kmip}",
        );
        assert_eq!(
            messages(&spec(&two_keys)),
            vec!["spec.encryption: set exactly one of kmipServerRef or localKeySecret"]
        );
        let x509 = GOOD.replace(
            "  syncSource: {mode: member, member: rs0-1}",
            "  connection: {authMechanism: MONGODB-X509, credentialsSecret: c}",
        );
        assert_eq!(
            messages(&spec(&x509)),
            vec!["spec.source.connection.authMechanism MONGODB-X509 needs tls.enabled"]
        );
    }

    /// Issue 17: a lock needs a connection to lock through, and the primary is locked only
    /// when the spec allows it.
    #[test]
    fn locks_need_a_connection_and_spare_the_primary() {
        let copy = GOOD.replace(
            "  syncSource: {mode: member, member: rs0-1}",
            "  syncSource: {mode: member, member: rs0-1}\n  consistency: {mode: fsyncLock}",
        );
        assert_eq!(
            messages(&spec(&copy)),
            vec![
                "spec.source.consistency.mode fsyncLock: needs spec.source.connection (the operator locks the member through it)"
            ]
        );
        let primary = GOOD.replace(
            "  syncSource: {mode: member, member: rs0-1}",
            "  syncSource: {mode: primary}\n  connection: {authMechanism: NONE}\n  consistency: {mode: volumeSnapshot, volumeSnapshotClassName: csi}",
        );
        let m = messages(&spec(&primary));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("spec.source.consistency.quiesce fsyncLock (the default with source.connection) with spec.source.syncSource.mode primary"),
            "{m:?}"
        );
        assert!(m[0].contains("allowPrimary: true"), "{m:?}");
        let allowed = primary.replace(
            "volumeSnapshotClassName: csi}",
            "volumeSnapshotClassName: csi, allowPrimary: true}",
        );
        assert!(messages(&spec(&allowed)).is_empty());
        let unlocked_cut = primary.replace(
            "volumeSnapshotClassName: csi}",
            "volumeSnapshotClassName: csi, quiesce: none}",
        );
        assert!(messages(&spec(&unlocked_cut)).is_empty());
    }

    #[test]
    fn references_are_listed_and_checked() {
        let spec = spec(&GOOD.replace(
            "  syncSource: {mode: member, member: rs0-1}",
            "  connection: {credentialsSecret: mongo-creds, tls: {caSecret: mongo-ca}}",
        ));
        let refs = references(&spec);
        let names: Vec<String> = refs
            .iter()
            .map(|r| format!("{} {}", r.kind.as_str(), r.name))
            .collect();
        assert_eq!(
            names,
            vec![
                "StatefulSet rs0",
                "Secret mongo-creds",
                "Secret mongo-ca",
                "PersistentVolumeClaim backups",
                "Secret rs0-key"
            ]
        );
        let mut found = Found::new();
        found.insert((RefKind::StatefulSet, "rs0".into()), Some(BTreeSet::new()));
        found.insert(
            (RefKind::Secret, "mongo-creds".into()),
            Some(BTreeSet::from(["username".to_string()])),
        );
        found.insert((RefKind::Secret, "mongo-ca".into()), None);
        found.insert(
            (RefKind::PersistentVolumeClaim, "backups".into()),
            Some(BTreeSet::new()),
        );
        found.insert(
            (RefKind::Secret, "rs0-key".into()),
            Some(BTreeSet::from(["key".to_string()])),
        );
        let problems = check_references(&refs, &found, "db");
        let got: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.reason, p.message))
            .collect();
        assert_eq!(
            got,
            vec![
                "SecretKeyNotFound: spec.source.connection.credentialsSecret \"mongo-creds\": Secret has no key password",
                "SecretNotFound: spec.source.connection.tls.caSecret \"mongo-ca\": Secret not found in namespace db",
            ]
        );
    }

    #[test]
    fn object_store_credentials_are_checked_by_their_keys() {
        let gcs = spec(&GOOD.replace(
            "  pvc: {claimName: backups}",
            "  gcs: {bucket: backups, credentialsSecret: gcs-key}",
        ));
        let azure = spec(&GOOD.replace(
            "  pvc: {claimName: backups}",
            "  azure: {account: acct, container: backups, credentialsSecret: az}",
        ));
        let both = spec(&GOOD.replace(
            "  pvc: {claimName: backups}",
            "  gcs: {bucket: backups, credentialsSecret: g, workloadIdentity: {serviceAccount: a@b}}",
        ));
        let mut found = Found::new();
        found.insert(
            (RefKind::Secret, "gcs-key".into()),
            Some(BTreeSet::from(["key.json".to_string()])),
        );
        found.insert(
            (RefKind::Secret, "az".into()),
            Some(BTreeSet::from(["AZURE_CLIENT_ID".to_string()])),
        );
        let problems = |s: &BackupJobSpec| -> Vec<String> {
            check_references(&references(s), &found, "db")
                .iter()
                .filter(|p| p.message.starts_with("spec.destination"))
                .map(|p| format!("{}: {}", p.reason, p.message))
                .collect()
        };
        assert_eq!(
            problems(&gcs),
            [
                "SecretKeyNotFound: spec.destination.gcs.credentialsSecret \"gcs-key\": Secret has no key service-account.json"
            ]
        );
        let az = problems(&azure);
        assert_eq!(az.len(), 1, "{az:?}");
        assert!(
            az[0].contains("spec.destination.azure.credentialsSecret")
                && az[0].contains("AZURE_STORAGE_ACCOUNT_KEY"),
            "{az:?}"
        );
        assert!(
            messages(&both).iter().any(|m| m
                == "spec.destination.gcs: set at most one of credentialsSecret or workloadIdentity"),
            "{:?}",
            messages(&both)
        );
    }

    #[test]
    fn db_path_relative_to_the_volume() {
        let mut s = spec(GOOD).source;
        assert_eq!(db_path_in_volume(&s), "");
        s.mount_path = Some("/data".into());
        assert_eq!(db_path_in_volume(&s), "db");
        s.db_path = "/srv/db".into();
        assert!(
            messages(&BackupJobSpec {
                source: s,
                ..spec(GOOD)
            })[0]
                .contains("is not inside spec.source.mountPath")
        );
    }
}
