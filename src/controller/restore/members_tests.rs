//! #31: a Restore from a repository alone (spec.source) and of several claims (spec.targets),
//! planned on fixtures: the pod of a source Restore runs as an identity of its own and chooses
//! the snapshot; the claims of a targets Restore all get the one snapshot the first chose.

use k8s_openapi::api::core::v1::Pod;

use super::build::{Outcome, Step};
use super::dereference::World;
use super::members::{MembersWorld, plan_members};
use super::plan::plan;
use crate::api::Restore;
use crate::api::restore::RestoreStatus;
use crate::api::snapshot::RunPhase;
use crate::controller::context::OperatorConfig;
use crate::controller::execute::Change;
use crate::controller::fixtures::claim;
use crate::controller::reason::Reason;

const NOW: &str = "2026-12-07T10:00:00Z";

fn now() -> jiff::Timestamp {
    NOW.parse().expect("time")
}

const SOURCE: &str = "source: {backupJob: rs0, snapshot: \"before:2026-12-01T00:00:00Z\", destination: {s3: {bucket: b, endpoint: \"https://s3.example\", credentialsSecret: s3}}, encryption: {kmipServerRef: {name: kmip}}}";

fn restore_of(spec: &str) -> Restore {
    serde_yaml::from_str(&format!(
        "apiVersion: snapcrypt.dev/v1alpha1
kind: Restore
metadata: {{name: dr, namespace: db, uid: dr-uid}}
spec: {{{spec}}}"
    ))
    .expect("Restore")
}

fn summaries(changes: &[Change]) -> Vec<String> {
    changes.iter().map(Change::summary).collect()
}

fn arg_after<'a>(pod: &'a Pod, flag: &str) -> Vec<&'a str> {
    let args = pod.spec.as_ref().expect("spec").containers[0]
        .args
        .as_ref()
        .expect("args");
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

/// A source Restore needs no Snapshot and no BackupJob: its pod runs as a ServiceAccount of
/// the Restore's own, reads the named repository, and chooses among the job's snapshots.
#[test]
fn a_source_restore_runs_as_its_own_identity_and_chooses_the_snapshot() {
    let r = restore_of(&format!(
        "{SOURCE}, target: {{claimName: data-rs0-0, force: true}}"
    ));
    let ks: crate::api::KmipServer = serde_yaml::from_str(
        "apiVersion: snapcrypt.dev/v1alpha1\nkind: KmipServer\nmetadata: {name: kmip, namespace: db}\nspec: {endpoints: [\"kmip.example:5696\"], tls: {secretName: kmip-tls}, masterKey: {create: {name: m}}}",
    )
    .expect("KmipServer");
    let w = World {
        kmip: Some(Ok(Some((ks, "key-1".into())))),
        target: Some(claim("data-rs0-0")),
        ..Default::default()
    };
    let o: Outcome = plan(
        &r,
        &RestoreStatus::default(),
        &w,
        &OperatorConfig::default(),
        now(),
    )
    .expect("plan");
    assert_eq!(
        summaries(&o.changes),
        [
            "apply ServiceAccount/snapcrypt-restore-dr",
            "apply Role/snapcrypt-agent-run-dr-uid",
            "apply RoleBinding/snapcrypt-agent-run-dr-uid",
            "apply Pod/dr-restore",
        ]
    );
    let Some(Change::Apply { body, .. }) = o.changes.last() else {
        panic!("the pod last");
    };
    let pod: Pod = serde_json::from_value(body.clone()).expect("pod");
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("snapcrypt-restore-dr")
    );
    assert_eq!(
        arg_after(&pod, "--snapshot"),
        ["before:2026-12-01T00:00:00Z"]
    );
    assert_eq!(arg_after(&pod, "--snapshot-tag"), ["backupjob=db/rs0"]);
    assert_eq!(arg_after(&pod, "--kmip-endpoint"), ["kmip.example:5696"]);
    assert_eq!(arg_after(&pod, "--repo"), ["s3://b"]);
    assert_eq!(arg_after(&pod, "--s3-endpoint"), ["https://s3.example"]);
}

/// A source Restore into the claim its repository is on is refused, naming the field.
#[test]
fn a_source_restore_into_its_repository_claim_is_refused() {
    let r = restore_of(
        "source: {backupJob: other/rs0, destination: {pvc: {claimName: backups}}, encryption: {localKeySecret: {name: k}}}, target: {claimName: backups}",
    );
    let w = World {
        kmip: Some(Ok(None)),
        target: Some(claim("backups")),
        ..Default::default()
    };
    let o = plan(
        &r,
        &RestoreStatus::default(),
        &w,
        &OperatorConfig::default(),
        now(),
    )
    .expect("plan");
    let Step::Failed {
        reason, message, ..
    } = &o.step
    else {
        panic!("{:?}", o.step);
    };
    assert_eq!(*reason, Reason::InvalidSpec);
    assert!(
        message.contains("holds the repository of spec.source"),
        "{message}"
    );
}

fn targets(claims: &str, parallelism: u32) -> Restore {
    restore_of(&format!(
        "{SOURCE}, targets: {{claimNames: [{claims}], parallelism: {parallelism}, force: true, deleteExtra: true}}"
    ))
}

/// A member Restore as the API would hold it, in `phase`, having chosen `chosen`.
fn member(parent: &Restore, claim: &str, phase: RunPhase, chosen: Option<&str>) -> Restore {
    let mut r = super::members::member_restore(parent, claim, None).expect("member");
    r.status = Some(RestoreStatus {
        phase,
        snapshot_id: chosen.map(str::to_string),
        message: Some(format!("{phase:?}")),
        ..Default::default()
    });
    r
}

fn created(changes: &[Change]) -> Vec<(String, String, String)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Create { body, .. } => {
                let r: Restore = serde_json::from_value(body.clone()).ok()?;
                let snapshot = r.spec.source.as_ref()?.snapshot.clone();
                Some((
                    r.metadata.name?,
                    r.spec.one_target().claim_name.clone(),
                    snapshot,
                ))
            }
            _ => None,
        })
        .collect()
}

/// The first claim's Restore goes alone; once its pod has chosen the snapshot, the others
/// go with that id, up to the parallelism; all restored, the Restore succeeds naming them.
#[test]
fn the_claims_follow_the_first_on_the_snapshot_it_chose() {
    let r = targets("data-rs0-0, data-rs0-1, data-rs0-2", 3);
    let claims: Vec<String> = ["data-rs0-0", "data-rs0-1", "data-rs0-2"]
        .map(String::from)
        .into();
    let mut w = MembersWorld {
        claims: claims.clone(),
        ..Default::default()
    };
    let (status, changes, _) = plan_members(&r, &RestoreStatus::default(), &w, now());
    assert_eq!(
        created(&changes),
        [(
            "dr-data-rs0-0".to_string(),
            "data-rs0-0".to_string(),
            "before:2026-12-01T00:00:00Z".to_string()
        )]
    );
    assert_eq!(status.members.len(), 3);

    w.children = vec![member(&r, "data-rs0-0", RunPhase::Running, Some("abc123"))];
    let (status, changes, _) = plan_members(&r, &status, &w, now());
    let rest = created(&changes);
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert!(rest.iter().all(|(_, _, snap)| snap == "abc123"), "{rest:?}");
    assert_eq!(status.snapshot_id.as_deref(), Some("abc123"));
    assert_eq!(status.phase, RunPhase::Running);

    w.children = claims
        .iter()
        .map(|c| member(&r, c, RunPhase::Succeeded, Some("abc123")))
        .collect();
    let (status, changes, _) = plan_members(&r, &status, &w, now());
    assert!(changes.is_empty(), "{:?}", summaries(&changes));
    assert_eq!(status.phase, RunPhase::Succeeded);
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("restored snapshot abc123 into 3 claims")
            && message.contains("data-rs0-0, data-rs0-1, data-rs0-2"),
        "{message}"
    );
    assert_eq!(
        status.progress_summary.as_deref(),
        Some("3/3 claims restored")
    );
}

/// No more Restores run at once than spec.targets.parallelism.
#[test]
fn parallelism_limits_the_claims_restored_at_once() {
    let r = targets("a, b, c", 2);
    let w = MembersWorld {
        claims: ["a", "b", "c"].map(String::from).into(),
        children: vec![member(&r, "a", RunPhase::Running, Some("abc123"))],
        ..Default::default()
    };
    let (_, changes, _) = plan_members(&r, &RestoreStatus::default(), &w, now());
    assert_eq!(created(&changes).len(), 1, "{:?}", summaries(&changes));
}

/// Before anything starts, a claim a running pod mounts holds every claim back, naming the
/// pods; nothing is created.
#[test]
fn a_claim_in_use_holds_every_claim_back_naming_the_pod() {
    let r = targets("data-rs0-0, data-rs0-1", 2);
    let mongod: Pod = serde_yaml::from_str(
        "metadata: {name: rs0-1}\nspec:\n  containers: [{name: mongod, image: mongo}]\n  volumes: [{name: data, persistentVolumeClaim: {claimName: data-rs0-1}}]\nstatus: {phase: Running}",
    )
    .expect("pod");
    let w = MembersWorld {
        claims: ["data-rs0-0", "data-rs0-1"].map(String::from).into(),
        pods: vec![mongod],
        ..Default::default()
    };
    let (status, changes, requeue) = plan_members(&r, &RestoreStatus::default(), &w, now());
    assert!(changes.is_empty(), "{:?}", summaries(&changes));
    assert!(requeue.is_some());
    assert_eq!(status.phase, RunPhase::Pending);
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("spec.targets: claims in use: data-rs0-1 by pod rs0-1;")
            && message.contains("scale its StatefulSet to 0"),
        "{message}"
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "TargetInUse");
}

/// The first claim failing before it chose a snapshot (none of the job's in the repository,
/// none before the time) fails the Restore with its words; a claim failing later fails it
/// naming that claim, once the others are done.
#[test]
fn failures_name_the_claim_and_say_why() {
    let r = targets("a, b", 2);
    let mut first = member(&r, "a", RunPhase::Failed, None);
    first.status.as_mut().expect("status").message = Some(
        "no snapshot to restore: no snapshot tagged backupjob=db/rs0 was taken at or before 2026-12-01T00:00:00Z".into(),
    );
    let w = MembersWorld {
        claims: ["a", "b"].map(String::from).into(),
        children: vec![first],
        ..Default::default()
    };
    let (status, changes, _) = plan_members(&r, &RestoreStatus::default(), &w, now());
    assert!(changes.is_empty(), "{:?}", summaries(&changes));
    assert_eq!(status.phase, RunPhase::Failed);
    assert!(
        status
            .message
            .unwrap_or_default()
            .starts_with("claim a: no snapshot to restore: no snapshot tagged backupjob=db/rs0"),
    );

    let w = MembersWorld {
        claims: ["a", "b"].map(String::from).into(),
        children: vec![
            member(&r, "a", RunPhase::Succeeded, Some("abc123")),
            member(&r, "b", RunPhase::Failed, Some("abc123")),
        ],
        ..Default::default()
    };
    let (status, _, _) = plan_members(&r, &RestoreStatus::default(), &w, now());
    assert_eq!(status.phase, RunPhase::Failed);
    assert_eq!(
        status.message.as_deref(),
        Some("1 of 2 claims failed (1 restored): claim b: Failed")
    );
}

/// A selector that matches no claim fails the Restore, naming the field.
#[test]
fn a_selector_matching_no_claim_fails_naming_the_field() {
    let r = restore_of(&format!(
        "{SOURCE}, targets: {{selector: {{matchLabels: {{app: rs0}}}}}}"
    ));
    let (status, changes, _) = plan_members(
        &r,
        &RestoreStatus::default(),
        &MembersWorld::default(),
        now(),
    );
    assert!(changes.is_empty());
    assert_eq!(status.phase, RunPhase::Failed);
    assert!(
        status
            .message
            .unwrap_or_default()
            .starts_with("spec.targets.selector: matches no PersistentVolumeClaim in namespace db")
    );
}

/// Where the API server does not run the CRD's rules, the operator refuses what they refuse,
/// naming the fields: both snapshotRef and source, neither target nor targets, a snapshot
/// spec.source cannot choose; nothing is written.
#[test]
fn the_operator_refuses_what_the_schema_refuses() {
    let cases = [
        (
            format!("{SOURCE}, snapshotRef: {{name: s}}, target: {{claimName: data}}"),
            "both spec.snapshotRef and spec.source are set: set exactly one",
        ),
        (
            "target: {claimName: data}".to_string(),
            "neither spec.snapshotRef nor spec.source is set",
        ),
        (
            SOURCE.to_string(),
            "neither spec.target nor spec.targets is set",
        ),
        (
            format!("{SOURCE}, target: {{claimName: data}}")
                .replace("before:2026-12-01T00:00:00Z", "yesterday"),
            "spec.source.snapshot: \"yesterday\" is not a snapshot: give latest",
        ),
    ];
    for (spec, words) in cases {
        let r = restore_of(&spec);
        let o = plan(
            &r,
            &RestoreStatus::default(),
            &World::default(),
            &OperatorConfig::default(),
            now(),
        )
        .expect("plan");
        assert!(o.changes.is_empty(), "{spec}");
        let Step::Failed {
            reason, message, ..
        } = &o.step
        else {
            panic!("{spec}: {:?}", o.step);
        };
        assert_eq!(*reason, Reason::InvalidSpec, "{spec}");
        assert!(message.starts_with(words), "{spec}: {message}");
    }
    let both = restore_of(&format!(
        "{SOURCE}, target: {{claimName: data}}, targets: {{claimNames: [a]}}"
    ));
    let (status, changes, _) = plan_members(
        &both,
        &RestoreStatus::default(),
        &MembersWorld::default(),
        now(),
    );
    assert!(changes.is_empty());
    assert_eq!(status.phase, RunPhase::Failed);
    assert!(
        status
            .message
            .unwrap_or_default()
            .starts_with("both spec.target and spec.targets are set: set exactly one")
    );
}

/// A selector the API server would refuse to list by (a value too long, or with a '/') fails
/// the Restore naming the field, instead of failing every reconcile's read (the hostile-values
/// test found it).
#[test]
fn a_selector_the_api_server_would_refuse_fails_naming_it() {
    for value in ["x".repeat(64), "../etc".to_string()] {
        let r = restore_of(&format!(
            "{SOURCE}, targets: {{selector: {{matchLabels: {{app: \"{value}\"}}}}}}"
        ));
        let (status, changes, _) = plan_members(
            &r,
            &RestoreStatus::default(),
            &MembersWorld::default(),
            now(),
        );
        assert!(changes.is_empty());
        assert_eq!(status.phase, RunPhase::Failed);
        let message = status.message.unwrap_or_default();
        assert!(
            message.starts_with("spec.targets.selector.matchLabels: value")
                && message.contains("is not a label value"),
            "{message}"
        );
    }
}
