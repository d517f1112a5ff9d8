//! End-to-end tests of the CRDs against a real API server (the v1.20 test ground that
//! `./tests/run` starts, or any cluster `KUBECONFIG` names): `crds/` is accepted and served,
//! every example of `deploy/examples/` is stored as written (plus the schema's defaults, which
//! must be the Rust types' defaults), status is written through the status subresource by
//! server-side apply, a watch sees changes, the OpenAPI schema rejects bad manifests naming
//! the field, and RBAC guards the kinds.
//!
//! CEL rules (`x-kubernetes-validations`: exactly one destination, exactly one key source,
//! immutable Snapshot and Restore specs, ...) are not enforced by a 1.20 API server, which
//! drops them; tests/api_schema.rs evaluates them with kube's CEL validator instead. Nothing
//! here depends on whether the server enforces them.

mod support;

use futures::TryStreamExt;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Resource;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use snapcrypt::api::backup_job::BackupJobPhase;
use snapcrypt::api::{BackupJob, KmipServer, Restore, Snapshot};
use support::cluster::{
    Cluster, DEADLINE, FIELD_MANAGER, TestNamespace, api_error_code, api_resource, cluster_or_skip,
    crd_condition, crd_manifests, eventually, manifests_in, wait_for_deletion,
};

const API_VERSION: &str = "snapcrypt.dev/v1alpha1";

/// The API resource of one of the four kinds.
fn dynamic_api(cluster: &Cluster, ns: &TestNamespace, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(cluster.client.clone(), ns.name(), &api_resource(kind))
}

/// Every example of `deploy/examples/`, moved into namespace `ns`: `(file, manifest)`.
fn examples_in(ns: &str) -> Vec<(String, Value)> {
    let dir = support::repo_root().join("deploy/examples");
    manifests_in(&dir)
        .into_iter()
        .map(|(file, _, mut obj)| {
            obj["metadata"]["namespace"] = json!(ns);
            (file, obj)
        })
        .collect()
}

/// The example of `kind`: `<kind>.yaml` if there is one, else the first that holds one.
fn example(ns: &str, kind: &str) -> Value {
    let all = examples_in(ns);
    let own = format!("{}.yaml", kind.to_lowercase());
    all.iter()
        .find(|(file, v)| *file == own && v["kind"] == kind)
        .or_else(|| all.iter().find(|(_, v)| v["kind"] == kind))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("deploy/examples has no {kind}"))
}

fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap().to_string()
}

/// Server-side apply of `obj` (field manager `snapcrypt-e2e`) into `ns`.
async fn apply(cluster: &Cluster, ns: &TestNamespace, obj: &Value) -> kube::Result<DynamicObject> {
    let api = dynamic_api(cluster, ns, obj["kind"].as_str().unwrap());
    api.patch(
        &name_of(obj),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(obj),
    )
    .await
}

/// The manifest read through the Rust type and written back: the spec with every serde default
/// filled in, which is what the server must store once its schema defaults are applied.
fn spec_with_rust_defaults(obj: &Value) -> Value {
    fn round_trip<K: serde::de::DeserializeOwned + serde::Serialize>(obj: &Value) -> Value {
        let typed: K = serde_json::from_value(obj.clone()).expect("the Rust type reads it");
        serde_json::to_value(typed).unwrap()
    }
    let full = match obj["kind"].as_str().unwrap() {
        "KmipServer" => round_trip::<KmipServer>(obj),
        "BackupJob" => round_trip::<BackupJob>(obj),
        "Snapshot" => round_trip::<Snapshot>(obj),
        "Restore" => round_trip::<Restore>(obj),
        other => panic!("not a snapcrypt kind: {other}"),
    };
    full["spec"].clone()
}

/// The first difference between two JSON values, as a path.
fn first_difference(path: &str, want: &Value, got: &Value) -> Option<String> {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let (x, y) = (a.get(k), b.get(k));
                match (x, y) {
                    (Some(x), Some(y)) => first_difference(&format!("{path}.{k}"), x, y),
                    _ => Some(format!("{path}.{k}: expected {x:?}, stored {y:?}")),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(&format!("{path}[{i}]"), x, y)),
        // 1 and 1.0 are the same number to the API server.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        _ if want == got => None,
        _ => Some(format!("{path}: expected {want}, stored {got}")),
    }
}

#[tokio::test]
async fn crds_are_established_and_served_as_generated() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    cluster.apply_crds().await;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    for (file, generated) in crd_manifests() {
        let name = name_of(&generated);
        let stored = crds.get(&name).await.unwrap();
        assert_eq!(
            crd_condition(&stored, "Established"),
            Some("True"),
            "{file}"
        );
        assert_eq!(
            crd_condition(&stored, "NamesAccepted"),
            Some("True"),
            "{file}"
        );
        assert_ne!(
            crd_condition(&stored, "NonStructuralSchema"),
            Some("True"),
            "{file}: the API server finds the schema non-structural: {:?}",
            stored.status
        );
        let stored_json = serde_json::to_value(&stored).unwrap();
        // As generated (the server adds spec.names.listKind).
        for pointer in ["/spec/group", "/spec/scope"]
            .into_iter()
            .map(String::from)
            .chain(
                generated["spec"]["names"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| format!("/spec/names/{k}")),
            )
        {
            assert_eq!(
                stored_json.pointer(&pointer),
                generated.pointer(&pointer),
                "{file}: {pointer}"
            );
        }
        let version = &stored.spec.versions[0];
        assert!(version.served && version.storage, "{file}: not served");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{file}: no status subresource"
        );
        assert_eq!(
            serde_json::to_value(&version.additional_printer_columns).unwrap(),
            generated["spec"]["versions"][0]["additionalPrinterColumns"],
            "{file}: printer columns"
        );

        // The generated file as it is (CEL rules included) passes the server's validation of
        // an update: a dry run, so nothing changes. Servers before 1.23 drop the rules there.
        let mut unmodified: CustomResourceDefinition =
            serde_json::from_value(generated.clone()).unwrap();
        unmodified.metadata.resource_version = stored.metadata.resource_version.clone();
        let dry_run = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.to_string()),
        };
        crds.replace(&name, &dry_run, &unmodified)
            .await
            .unwrap_or_else(|e| panic!("the API server refuses crds/{file} as generated: {e}"));
    }

    // Discovery lists the kinds with their short names, as `kubectl get bj` needs.
    let resources: Value = cluster
        .client
        .request(
            http::Request::get(format!("/apis/{API_VERSION}"))
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    for (kind, short) in [
        ("KmipServer", "kmip"),
        ("BackupJob", "bj"),
        ("Snapshot", "snap"),
        ("Restore", "rst"),
    ] {
        let found = resources["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == kind && !r["name"].as_str().unwrap().contains('/'))
            .unwrap_or_else(|| panic!("discovery does not list {kind}: {resources}"));
        assert_eq!(found["namespaced"], true, "{kind}");
        assert_eq!(found["shortNames"], json!([short]), "{kind}");
        assert_eq!(found["categories"], json!(["snapcrypt"]), "{kind}");
    }
}

#[tokio::test]
async fn every_example_is_stored_as_written_with_the_rust_defaults() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    cluster.apply_crds().await;
    let ns = cluster.namespace("examples").await;
    let examples = examples_in(ns.name());
    assert!(
        examples.len() >= 4,
        "deploy/examples has {} manifests",
        examples.len()
    );
    for (file, manifest) in &examples {
        let applied = apply(&cluster, &ns, manifest)
            .await
            .unwrap_or_else(|e| panic!("the API server refuses deploy/examples/{file}: {e}"));
        assert_eq!(applied.metadata.namespace.as_deref(), Some(ns.name()));

        let kind = manifest["kind"].as_str().unwrap();
        let stored = dynamic_api(&cluster, &ns, kind)
            .get(&name_of(manifest))
            .await
            .unwrap();
        let stored = serde_json::to_value(&stored).unwrap();
        // Every field as written, and every field the schema defaults, defaulted as the
        // operator's Rust types default it: one truth, whether a value came from the user,
        // the API server or serde.
        let want = spec_with_rust_defaults(manifest);
        if let Some(diff) = first_difference("spec", &want, &stored["spec"]) {
            panic!("deploy/examples/{file}: {diff}\nstored: {}", stored["spec"]);
        }
        let managers: Vec<&str> = stored["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, [FIELD_MANAGER], "{file}");
        assert!(
            stored.get("status").is_none(),
            "{file}: status without a writer"
        );
    }

    // The typed API reads all of them back.
    let jobs: Vec<BackupJob> = ns
        .api::<BackupJob>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut names: Vec<String> = jobs
        .iter()
        .map(|j| j.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["rs0-nightly", "rs1-hourly"]);
    let rs1 = jobs
        .iter()
        .find(|j| j.metadata.name.as_deref() == Some("rs1-hourly"))
        .unwrap();
    assert_eq!(rs1.spec.max_files, 100_000, "the schema's default");
    assert_eq!(
        ns.api::<KmipServer>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        ns.api::<Snapshot>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // One Restore of a Snapshot, one of a replica set from its repository (#31).
    let restores = ns
        .api::<Restore>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(restores.len(), 2);
    assert!(
        restores
            .iter()
            .any(|r| r.spec.source.is_some() && r.spec.targets.is_some())
    );
}

/// A BackupJob status as the operator would write it.
fn backup_job_status(phase: &str, generation: i64) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "BackupJob",
        "status": {
            "phase": phase,
            "observedGeneration": generation,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "Validated",
                "message": "the source, destination and key were found",
                "lastTransitionTime": "2026-11-27T10:00:00Z",
                "observedGeneration": generation,
            }],
            "lastSnapshot": "rs0-nightly-20261127-0200",
            "progressSummary": "42% 1.2 GiB/2.9 GiB ETA 3m",
            "snapshotCount": 3,
            "storedBytes": 123456789,
            "keyId": "kmip:17",
        },
    })
}

async fn apply_status(api: &Api<BackupJob>, name: &str, status: &Value) -> BackupJob {
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(status),
    )
    .await
    .unwrap_or_else(|e| panic!("status of BackupJob {name}: {e}"))
}

#[tokio::test]
async fn status_is_written_through_the_status_subresource_by_server_side_apply() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    cluster.apply_crds().await;
    let ns = cluster.namespace("status").await;
    let manifest = example(ns.name(), "BackupJob");
    let name = name_of(&manifest);
    apply(&cluster, &ns, &manifest).await.unwrap();
    let jobs: Api<BackupJob> = ns.api();

    let written = apply_status(&jobs, &name, &backup_job_status("Ready", 1)).await;
    let read = jobs.get_status(&name).await.unwrap();
    for job in [&written, &read] {
        let status = job.status.as_ref().expect("status stored");
        assert_eq!(status.phase, BackupJobPhase::Ready);
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.conditions[0].type_, "Ready");
        assert_eq!(status.snapshot_count, 3);
        assert_eq!(status.stored_bytes, 123_456_789);
        assert_eq!(status.key_id.as_deref(), Some("kmip:17"));
    }
    assert_eq!(
        read.metadata.generation,
        Some(1),
        "a status write is no spec change"
    );

    // The printer columns (`kubectl get bj`) read the status fields they name.
    let table: Value = cluster
        .client
        .request(
            http::Request::get(format!("{}/{name}", jobs.resource_url()))
                .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let cells = &table["rows"][0]["cells"];
    let cell = |column: &str| &cells[columns.iter().position(|c| *c == column).unwrap()];
    assert_eq!(cell("Phase"), "Ready", "{table}");
    assert_eq!(cell("Progress"), "42% 1.2 GiB/2.9 GiB ETA 3m");
    assert_eq!(cell("Last Snapshot"), "rs0-nightly-20261127-0200");
    assert_eq!(cell("Key"), "kmip:17");

    // A spec change leaves the status alone and bumps the generation; the next status names it.
    let suspend = json!({"spec": {"suspend": true}});
    let changed = jobs
        .patch(&name, &PatchParams::default(), &Patch::Merge(&suspend))
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    assert_eq!(changed.status, read.status);
    let suspended = apply_status(&jobs, &name, &backup_job_status("Suspended", 2)).await;
    let status = suspended.status.unwrap();
    assert_eq!(status.phase, BackupJobPhase::Suspended);
    assert_eq!(status.observed_generation, Some(2));
    assert!(suspended.spec.suspend);

    // Status sent to the main resource is ignored: only the subresource writes it.
    let mut sneaky = manifest.clone();
    sneaky["status"] = backup_job_status("Failed", 2)["status"].clone();
    sneaky["spec"]["suspend"] = json!(true);
    apply(&cluster, &ns, &sneaky).await.unwrap();
    let after = jobs.get(&name).await.unwrap();
    assert_eq!(after.status.unwrap().phase, BackupJobPhase::Suspended);
}

#[tokio::test]
async fn a_watch_sees_spec_and_status_changes_and_the_deletion() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    cluster.apply_crds().await;
    let ns = cluster.namespace("watch").await;
    let manifest = example(ns.name(), "BackupJob");
    let name = name_of(&manifest);
    apply(&cluster, &ns, &manifest).await.unwrap();
    let jobs: Api<BackupJob> = ns.api();

    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(jobs.clone(), config));
    // Waits for the next event that matches, with a deadline.
    macro_rules! next_event {
        ($what:expr, $pattern:pat $(if $guard:expr)?) => {
            tokio::time::timeout(DEADLINE, async {
                loop {
                    match events.try_next().await {
                        Ok(Some($pattern)) $(if $guard)? => break,
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("the watch ended"),
                        Err(e) => panic!("watch error: {e}"),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the watch did not show {} within {DEADLINE:?}", $what))
        };
    }
    next_event!("the initial list", Event::InitDone);

    let suspend = json!({"spec": {"suspend": true}});
    jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&suspend))
        .await
        .unwrap();
    next_event!("spec.suspend", Event::Apply(job) if job.spec.suspend);

    apply_status(&jobs, &name, &backup_job_status("Suspended", 2)).await;
    next_event!(
        "status.phase Suspended",
        Event::Apply(job) if job.status.as_ref().is_some_and(|s| s.phase == BackupJobPhase::Suspended)
    );

    jobs.delete(&name, &Default::default()).await.unwrap();
    next_event!("the deletion", Event::Delete(_));
    wait_for_deletion(&jobs, &name, DEADLINE).await;
}

#[tokio::test]
async fn the_schema_rejects_bad_manifests_naming_the_field() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    cluster.apply_crds().await;
    let ns = cluster.namespace("invalid").await;
    let bj = example(ns.name(), "BackupJob");
    let kmip = example(ns.name(), "KmipServer");
    let snap = example(ns.name(), "Snapshot");
    let restore = example(ns.name(), "Restore");

    // (manifest, JSON pointer of the field to change, new value (null: removed), message part)
    #[rustfmt::skip]
    let cases: Vec<(&Value, &str, Value, &str)> = vec![
        (&bj, "/spec/compression", json!("lz4"), "Unsupported value"),
        (&bj, "/spec/maxFiles", json!(0), "greater than or equal to 1"),
        (&bj, "/spec/maxFiles", json!("many"), "must be of type integer"),
        (&bj, "/spec/backoffLimit", json!(11), "less than or equal to 10"),
        (&bj, "/spec/source/dataVolumeName", Value::Null, "Required value"),
        (&bj, "/spec/destination", Value::Null, "Required value"),
        (&bj, "/spec/destination/pvc/path", json!("../other"), "should match"),
        (&bj, "/spec/source/syncSource/mode", json!("secondary"), "Unsupported value"),
        (&bj, "/spec/source/dbPath", json!("data/db"), "should match"),
        (&bj, "/spec/schedule/cron", json!("@daily"), "at least 9 chars"),
        (&bj, "/spec/retention/maxAge", json!("4w"), "should match"),
        (&kmip, "/spec/endpoints", json!([]), "at least 1 items"),
        (&kmip, "/spec/endpoints", json!(["kmip.example"]), "should match"),
        (&kmip, "/spec/protocolVersion", json!("2.0"), "Unsupported value"),
        (&kmip, "/spec/connectTimeoutSeconds", json!(0), "greater than or equal to 1"),
        (&snap, "/spec/backupJobRef", Value::Null, "Required value"),
        (&restore, "/spec/target/claimName", json!(""), "at least 1 chars"),
    ];
    let mut failures = Vec::new();
    for (i, (base, pointer, value, message)) in cases.into_iter().enumerate() {
        let kind = base["kind"].as_str().unwrap().to_string();
        let what = format!("{kind} with {pointer} = {value}");
        // The API server names the field as a path: spec.source.dataVolumeName.
        let field = pointer.trim_start_matches('/').replace('/', ".");
        let mut bad = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = bad.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        if value.is_null() {
            target.remove(key);
        } else {
            target.insert(key.to_string(), value);
        }
        let name = format!("invalid-{i}");
        bad["metadata"]["name"] = json!(name);
        let api = dynamic_api(&cluster, &ns, &kind);
        let obj: DynamicObject = serde_json::from_value(bad).unwrap();
        match api.create(&PostParams::default(), &obj).await {
            Err(kube::Error::Api(status))
                if status.code == 422
                    && status.message.contains(&field)
                    && status.message.contains(message) => {}
            Err(e) => failures.push(format!(
                "{what}: expected 422 naming {field} with {message:?}, got: {e}"
            )),
            Ok(_) => failures.push(format!("{what}: accepted")),
        }
        let stored = api.get(&name).await;
        assert_eq!(api_error_code(&stored), Some(404), "{what}: stored anyway");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Server-side apply goes through the same validation.
    let mut bad = bj.clone();
    bad["spec"]["compression"] = json!("lz4");
    match apply(&cluster, &ns, &bad).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("spec.compression"), "{status:?}");
        }
        other => panic!("server-side apply of compression lz4: {other:?}"),
    }
}

/// A Role that may read BackupJobs, bound to ServiceAccount `sa`.
async fn grant_backup_job_reading(ns: &TestNamespace, sa: &str) {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "backupjob-reader"},
        "rules": [{
            "apiGroups": ["snapcrypt.dev"],
            "resources": ["backupjobs"],
            "verbs": ["get", "list", "watch"],
        }],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "backupjob-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "backupjob-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns.name()}],
    }))
    .unwrap();
    ns.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    ns.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

#[tokio::test]
async fn rbac_guards_backup_jobs_for_service_accounts() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    cluster.apply_crds().await;
    let ns = cluster.namespace("rbac").await;
    apply(&cluster, &ns, &example(ns.name(), "BackupJob"))
        .await
        .unwrap();
    let sa = "e2e-reader";
    let client = cluster.service_account_client(ns.name(), sa).await;
    let as_sa: Api<BackupJob> = Api::namespaced(client.clone(), ns.name());

    let denied = as_sa.list(&ListParams::default()).await;
    assert_eq!(api_error_code(&denied), Some(403), "{denied:?}");
    let message = denied.unwrap_err().to_string();
    assert!(
        message.contains("backupjobs.snapcrypt.dev")
            && message.contains(&format!("system:serviceaccount:{}:{sa}", ns.name())),
        "{message}"
    );

    grant_backup_job_reading(&ns, sa).await;
    // RBAC changes reach the authorizer through an informer: poll until they have.
    let jobs = eventually("the RoleBinding to allow listing", DEADLINE, || async {
        as_sa.list(&ListParams::default()).await
    })
    .await;
    assert_eq!(jobs.items.len(), 1);

    // Only what the Role grants: no writes, no other kinds, no other namespace.
    let mut job = example(ns.name(), "BackupJob");
    job["metadata"]["name"] = json!("not-allowed");
    let create = as_sa
        .create(
            &PostParams::default(),
            &serde_json::from_value(job).unwrap(),
        )
        .await;
    assert_eq!(api_error_code(&create), Some(403), "create: {create:?}");
    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), ns.name());
    let list = snapshots.list(&ListParams::default()).await;
    assert_eq!(api_error_code(&list), Some(403), "snapshots: {list:?}");
    let elsewhere: Api<BackupJob> = Api::namespaced(client, "default");
    let list = elsewhere.list(&ListParams::default()).await;
    assert_eq!(
        api_error_code(&list),
        Some(403),
        "other namespace: {list:?}"
    );
}

#[test]
fn examples_cover_every_crd() {
    let kinds: Vec<String> = crd_manifests()
        .iter()
        .map(|(_, crd)| crd["spec"]["names"]["kind"].as_str().unwrap().to_string())
        .collect();
    let examples = examples_in("x");
    for kind in &kinds {
        assert!(
            examples.iter().any(|(_, e)| e["kind"] == kind.as_str()),
            "deploy/examples has no {kind}"
        );
        assert_eq!(
            api_resource(kind).api_version,
            API_VERSION,
            "{kind}: the version the tests use"
        );
    }
    assert_eq!(BackupJob::api_version(&()), API_VERSION);
}
