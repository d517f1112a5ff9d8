//! Least privilege (issue 32): the credentials that write backups cannot delete what a
//! snapshot needs; only a BackupJob's retention credentials (spec.retention.
//! credentialsSecret, and a copy's spec.copies[].retention.credentialsSecret), given to its
//! retention pods alone, prune.
//!
//! Both tests run against moto's S3 server with IAM enforced (tests/services/s3/lock-admin.py
//! `iam-users`): two IAM users with the policies docs/OPERATIONS.md gives, "writer" (get, put,
//! list; delete only under locks/ and unfinished/) and "pruner" (delete too), and every
//! request signed and judged by its user's policy (moto checks signatures and the policy's
//! actions and resources once enforcement is on: an unknown key is InvalidAccessKeyId).
//!
//! DOUBLES (tests/README.md), in the operator test only: mongod cannot run here (the member
//! is a pause pod whose volume holds a test tree). Everything else is real: the API server,
//! kubelets, containerd, the operator, the agent image, the S3 server and its IAM.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use snapcrypt::api::retention::RetentionRun;
use snapcrypt::api::verification::CheckResult;
use snapcrypt::api::{BackupJob, Snapshot};
use support::cluster::{cluster_or_skip, wait_for};
use support::moto::{IamKeys, Moto};
use support::operator::{Operator, create, key_secret, member, member_source};
use support::real_nodes::{HOST_ALIAS, IMAGE, RealNodes};

/// Two scheduled runs a minute apart and their retention pods: within this.
const RUNS: Duration = Duration::from_secs(300);

fn env(keys: &IamKeys, moto: &Moto) -> Vec<(&'static str, String)> {
    keys.env(moto)
}

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The snapshot ids `snapshots --json` lists.
fn listed(repo: &str, key: &str, env: &[(&str, &str)]) -> Vec<String> {
    let out = support::ok(
        &[
            "snapshots",
            "--repo",
            repo,
            "--key-file",
            key,
            "--s3-path-style",
            "--json",
        ],
        env,
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("snapshots json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn the_writers_credentials_cannot_delete_and_the_retention_credentials_prune() {
    let work = tempfile::tempdir().expect("tempdir");
    let moto = Moto::start();
    moto.admin(&["mkbucket", "lpbucket"]);
    let (writer, pruner) = moto.iam_users("lpbucket", &["rs0"]).remove(0);
    let (w, p) = (env(&writer, &moto), env(&pruner, &moto));
    let (w, p) = (refs(&w), refs(&p));
    let key = work.path().join("key.json");
    let key = key.to_str().expect("utf-8");
    support::ok(&["key", "new", "--out", key], &[]);
    let src = work.path().join("src");
    support::make_source(&src);
    let repo = "s3://lpbucket/rs0";
    let backup = [
        "backup",
        "--repo",
        repo,
        "--key-file",
        key,
        "--s3-path-style",
    ];
    let source = src.to_str().expect("utf-8");

    // Enforcement is on: an unknown key is refused.
    let stranger = IamKeys {
        access_key: "AKIASTRANGER".into(),
        secret_key: "nope".into(),
    };
    let refused = support::fails(
        &[&backup[..], &["--source", source]].concat(),
        &refs(&env(&stranger, &moto)),
    );
    assert!(refused.contains("refused access"), "{refused}");

    // The writer backs up twice: its lock and unfinished record are the only deletes a backup
    // makes, and the policy allows exactly those.
    support::ok(&[&backup[..], &["--source", source]].concat(), &w);
    std::fs::write(src.join("collection-0-1.wt"), b"changed").expect("write");
    support::ok(&[&backup[..], &["--source", source]].concat(), &w);
    let ids = listed(repo, key, &w);
    assert_eq!(ids.len(), 2, "{ids:?}");

    // With the writer's credentials nothing a snapshot needs can be deleted.
    let packs = moto.admin_as(Some(&pruner), &["retention", "lpbucket", "rs0/data/"]);
    let pack = packs.split_whitespace().next().expect("a pack").to_string();
    for object in [pack.as_str(), &format!("rs0/snapshots/{}", ids[0])] {
        let said = moto.admin_as(Some(&writer), &["delete", "lpbucket", object]);
        assert_eq!(said.trim(), "denied AccessDenied", "{object}");
    }
    let prune = [
        "prune",
        "--repo",
        repo,
        "--key-file",
        key,
        "--s3-path-style",
        "--keep-last",
        "1",
        "--delete-after",
        "0s",
    ];
    let err = support::fails(&prune, &w);
    assert!(err.contains("AccessDenied"), "{err}");
    assert_eq!(listed(repo, key, &w).len(), 2, "the writer's prune deleted");

    // The retention credentials prune; what is kept restores and verifies with the writer's.
    let out = support::ok(&[&prune[..], &["--json"]].concat(), &p);
    let report: serde_json::Value = serde_json::from_str(&out).expect("report");
    assert_eq!(
        report["forgotten"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );
    let kept = listed(repo, key, &w);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let verify = [
        "verify",
        "--repo",
        repo,
        "--key-file",
        key,
        "--s3-path-style",
    ];
    support::ok(&[&verify[..], &["--read-data"]].concat(), &w);
    let target = work.path().join("restored");
    let target = target.to_str().expect("utf-8");
    support::ok(
        &[
            "restore",
            "--repo",
            repo,
            "--key-file",
            key,
            "--s3-path-style",
            "--snapshot",
            &kept[0],
            "--target",
            target,
        ],
        &w,
    );
    assert_eq!(
        std::fs::read(work.path().join("restored/collection-0-1.wt")).expect("restored"),
        b"changed"
    );
}

/// The Secret `name` with an IAM user's keys.
async fn keys_secret(ns: &support::cluster::TestNamespace, name: &str, k: &IamKeys) {
    create::<Secret>(
        &ns.api(),
        json!({"metadata": {"name": name}, "stringData": {
            "AWS_ACCESS_KEY_ID": k.access_key, "AWS_SECRET_ACCESS_KEY": k.secret_key}}),
    )
    .await;
}

/// The Secrets a pod's environment is read from.
fn secrets_of(pod: &Pod) -> Vec<String> {
    let mut out: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.env.iter().flatten())
        .filter_map(|e| {
            e.value_from
                .as_ref()?
                .secret_key_ref
                .as_ref()
                .map(|r| r.name.clone())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The ground: member rs0-1 (real-b) with a test tree, the job's key Secret, moto with IAM
/// enforced and Secrets for the job's and the copy's writer and pruner, the operator, and
/// BackupJob rs0 (every minute, keepLast 1, its copy `offsite` keepLast 1, both with retention
/// credentials).
struct Ground {
    ns: support::cluster::TestNamespace,
    moto: Moto,
    key: std::path::PathBuf,
    writer: IamKeys,
    copy_writer: IamKeys,
    op: Operator,
    _work: tempfile::TempDir,
}

impl Ground {
    async fn new() -> Option<Ground> {
        let cluster = cluster_or_skip().await?;
        let nodes = RealNodes::get()?;
        cluster.apply_crds().await;
        let ns = cluster.namespace("least-privilege").await;
        let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let data = member(&ns, "rs0-1", "real-b").await;
        support::make_source(&data);
        support::chown_mongodb(&data);
        let key = key_secret(&ns, work.path()).await;
        let moto = Moto::start();
        nodes.expose(moto.port);
        moto.admin(&["mkbucket", "lpbucket"]);
        let mut users = moto.iam_users("lpbucket", &["rs0", "offsite"]).into_iter();
        let (writer, pruner) = users.next().expect("rs0's users");
        let (copy_writer, copy_pruner) = users.next().expect("offsite's users");
        keys_secret(&ns, "writer-creds", &writer).await;
        keys_secret(&ns, "pruner-creds", &pruner).await;
        keys_secret(&ns, "offsite-writer", &copy_writer).await;
        keys_secret(&ns, "offsite-pruner", &copy_pruner).await;
        let op = Operator::start_with_image(cluster.kubeconfig(), ns.name(), IMAGE, &[]);
        let s3 = |prefix: &str, secret: &str| {
            json!({"s3": {"bucket": "lpbucket", "prefix": prefix, "region": "us-east-1",
                "endpoint": format!("http://{HOST_ALIAS}:{}", moto.port), "pathStyle": true,
                "insecure": true, "credentialsSecret": secret}})
        };
        create::<BackupJob>(
            &ns.api(),
            json!({"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": "rs0"},
                "spec": {
                    "source": member_source("rs0-1"),
                    "destination": s3("rs0", "writer-creds"),
                    "encryption": {"localKeySecret": {"name": "rs0-key"}},
                    "schedule": {"cron": "* * * * *"},
                    "retention": {"keepLast": 1, "credentialsSecret": "pruner-creds"},
                    "copies": [{"name": "offsite", "destination": s3("offsite", "offsite-writer"),
                        "encryption": {"localKeySecret": {"name": "rs0-key"}},
                        "retention": {"keepLast": 1, "credentialsSecret": "offsite-pruner"}}]}}),
        )
        .await;
        Some(Ground {
            ns,
            moto,
            key,
            writer,
            copy_writer,
            op,
            _work: work,
        })
    }

    /// The snapshot ids repository `prefix` holds, read with `keys`.
    fn held(&self, prefix: &str, keys: &IamKeys) -> Vec<String> {
        let env = env(keys, &self.moto);
        let key = self.key.to_str().expect("utf-8");
        listed(&format!("s3://lpbucket/{prefix}"), key, &refs(&env))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_job_prunes_only_in_its_retention_pods() {
    let Some(g) = Ground::new().await else {
        return;
    };
    let jobs: Api<BackupJob> = g.ns.api();
    // Two scheduled runs: the retention pods after the second forget the first, in the job's
    // repository and in the copy.
    let forgot = |r: Option<&RetentionRun>| {
        r.is_some_and(|r| r.result == CheckResult::Succeeded && r.forgotten >= 1)
    };
    let job = wait_for(
        &jobs,
        "rs0",
        "both retention pods to forget a snapshot",
        RUNS,
        |j| {
            j.status.as_ref().is_some_and(|s| {
                forgot(s.retention.as_ref())
                    && forgot(s.copies.first().and_then(|c| c.retention.as_ref()))
            })
        },
    )
    .await;
    jobs.patch(
        "rs0",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspend");
    let status = job.status.clone().expect("status");
    let retention = status.retention.clone().expect("retention");
    the_retention_pod_alone_held_the_retention_secret(&g.ns, &retention, "pruner-creds").await;
    let copy = status.copies[0]
        .retention
        .clone()
        .expect("the copy's retention");
    the_retention_pod_alone_held_the_retention_secret(&g.ns, &copy, "offsite-pruner").await;
    let cond = status
        .conditions
        .iter()
        .find(|c| c.type_ == "RetentionApplied")
        .expect("RetentionApplied");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "Pruned"),
        "{}",
        cond.message
    );
    assert!(
        cond.message.contains("copy offsite: retention pod"),
        "{}",
        cond.message
    );
    the_metrics_say_so_and_the_alert_is_silent(&g).await;
    // The copy holds only what its retention keeps, read with its writer's keys.
    let copied = g.held("offsite", &g.copy_writer);
    assert_eq!(copied.len(), 1, "{copied:?}");
    the_forgotten_snapshot_objects_are_deleted(&g).await;
}

/// The forgotten run's Snapshot object is deleted, the repository holds what the Snapshots
/// say, and no Snapshot says a snapshot pod applied retention.
async fn the_forgotten_snapshot_objects_are_deleted(g: &Ground) {
    let snaps: Api<Snapshot> = g.ns.api();
    support::cluster::eventually("the forgotten Snapshot to be deleted", RUNS, || async {
        let held = g.held("rs0", &g.writer);
        let objects: Vec<String> = snaps
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|s| s.status?.repository_snapshot_id)
            .collect();
        // Suspended, a run may still be finishing: every Snapshot object's snapshot is held.
        if objects.iter().all(|id| held.contains(id)) && objects.len() == held.len() {
            Ok(())
        } else {
            Err(format!("Snapshots {objects:?}, repository {held:?}"))
        }
    })
    .await;
    for s in snaps.list(&Default::default()).await.expect("list").items {
        let conds = s.status.map(|st| st.conditions).unwrap_or_default();
        assert!(
            conds.iter().all(|c| c.type_ != "RetentionApplied"),
            "a snapshot pod applied retention: {conds:?}"
        );
    }
}

/// The retention pod read its environment from its retention Secret only, and the job's
/// snapshot and copy pods (those still there) never from it.
async fn the_retention_pod_alone_held_the_retention_secret(
    ns: &support::cluster::TestNamespace,
    retention: &RetentionRun,
    secret: &str,
) {
    let pods: Api<Pod> = ns.api();
    let name = retention.last_run_pod.as_deref().expect("last run pod");
    let pod = pods.get(name).await.expect("retention pod");
    assert_eq!(secrets_of(&pod), vec![secret.to_string()], "{name}");
    let args = pod
        .spec
        .as_ref()
        .map(|s| s.containers[0].args.clone().unwrap_or_default());
    assert!(
        args.as_ref().is_some_and(|a| a[..2] == ["agent", "prune"]),
        "{args:?}"
    );
    for component in ["snapshot", "copy"] {
        let listed = pods
            .list(
                &kube::api::ListParams::default()
                    .labels(&format!("app.kubernetes.io/component={component}")),
            )
            .await
            .expect("pods");
        for p in listed.items {
            assert!(
                !secrets_of(&p).contains(&secret.to_string()),
                "{component} pod {:?} reads the retention Secret {secret}",
                p.metadata.name
            );
        }
    }
}

/// /metrics: each repository's last retention run succeeded (the job's, and copy offsite's),
/// and the chart's SnapcryptRetentionFailed, evaluated on the scrape, is silent.
async fn the_metrics_say_so_and_the_alert_is_silent(g: &Ground) {
    let sample = |m: &support::operator::Samples, copy: Option<&str>| {
        let mut labels = std::collections::BTreeMap::from([
            ("namespace".to_string(), g.ns.name().to_string()),
            ("job".to_string(), "rs0".to_string()),
        ]);
        if let Some(c) = copy {
            labels.insert("copy".into(), c.into());
        }
        m.get(&(
            "snapcrypt_backupjob_retention_last_run_success".to_string(),
            labels,
        ))
        .copied()
    };
    let m = support::cluster::eventually(
        "both retention samples at 1",
        std::time::Duration::from_secs(60),
        || async {
            let m = support::operator::parse_metrics(&g.op.metrics());
            if sample(&m, None) == Some(1.0) && sample(&m, Some("offsite")) == Some(1.0) {
                Ok(m)
            } else {
                Err("not yet")
            }
        },
    )
    .await;
    let expr = support::alerts::chart_expr("SnapcryptRetentionFailed");
    let firing = support::alerts::eval(&expr, &m);
    assert!(
        firing.is_empty(),
        "SnapcryptRetentionFailed fires: {firing:?}"
    );
    // The same scrape with the copy's run failed: the alert names that copy.
    let mut failed = m.clone();
    for ((name, labels), v) in failed.iter_mut() {
        if name == "snapcrypt_backupjob_retention_last_run_success"
            && labels.get("copy").map(String::as_str) == Some("offsite")
        {
            *v = 0.0;
        }
    }
    let firing = support::alerts::eval(&expr, &failed);
    assert!(
        format!("{firing:?}").contains("offsite") && !firing.is_empty(),
        "{firing:?}"
    );
}
