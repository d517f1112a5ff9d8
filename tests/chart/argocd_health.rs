//! Argo CD health checks (docs/argocd.md), each script run by lua5.1 against sample objects.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::repo_root;
use crate::tools::lua;

/// The `resource.customizations.health.snapcrypt.dev_<Kind>` scripts of the argocd-cm
/// ConfigMap shown in docs/argocd.md, by kind.
fn health_scripts() -> BTreeMap<String, String> {
    let doc = fs::read_to_string(repo_root().join("docs/argocd.md")).unwrap();
    let mut scripts = BTreeMap::new();
    let mut blocks = doc.split("```yaml\n").skip(1);
    for block in blocks.by_ref() {
        let yaml = block.split("\n```").next().unwrap();
        let value: Value = serde_yaml::from_str(yaml)
            .unwrap_or_else(|e| panic!("docs/argocd.md: a YAML block does not parse: {e}\n{yaml}"));
        if value["kind"] == "Application" {
            let path = value["spec"]["source"]["path"].as_str().unwrap_or_default();
            if path.starts_with("charts/") {
                assert!(
                    repo_root().join(path).join("Chart.yaml").is_file(),
                    "{path}"
                );
            }
        }
        if value["kind"] != "ConfigMap" {
            continue;
        }
        assert_eq!(value["metadata"]["name"], "argocd-cm");
        for (key, script) in value["data"].as_object().unwrap() {
            if let Some(kind) = key.strip_prefix("resource.customizations.health.snapcrypt.dev_") {
                scripts.insert(kind.to_string(), script.as_str().unwrap().to_string());
            }
        }
    }
    scripts
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `v` as a Lua table constructor, as Argo CD hands objects to health scripts.
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_value).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// Runs a health script on `obj` with lua5.1; returns (status, message).
fn health(lua: &Path, script: &str, obj: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal check = function()\n{script}\nend\nlocal hs = check()\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_value(obj)
    );
    let mut child = Command::new(lua)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lua5.1");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(program.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lua5.1 failed on {obj}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').expect("status and message");
    (status.to_string(), message.to_string())
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-27T03:00:00Z"})
}

/// An object of `kind` at generation 2 with `status` (None: no status yet).
fn sample(kind: &str, status: Option<Value>) -> Value {
    let mut o = json!({
        "apiVersion": "snapcrypt.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "rs0", "namespace": "mongodb", "generation": 2},
        "spec": {},
    });
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

/// A sample status and the health Argo CD must see in it: (kind, status, expected health,
/// words of the message).
type Case = (&'static str, Option<Value>, &'static str, &'static str);

#[test]
fn argocd_health_checks_follow_status() {
    let lua = lua();
    let scripts = health_scripts();
    assert_eq!(
        scripts.keys().collect::<Vec<_>>(),
        ["BackupJob", "KmipServer", "Restore", "Snapshot"],
        "docs/argocd.md has a health check per kind"
    );
    let cases = [
        backup_job_cases(),
        snapshot_and_restore_cases(),
        kmip_server_cases(),
    ]
    .concat();
    for (kind, status, want, words) in cases {
        let obj = sample(kind, status);
        let (got, message) = health(&lua, &scripts[kind], &obj);
        assert_eq!(got, want, "{kind} health of {}", obj["status"]);
        assert!(
            message.contains(words),
            "{kind} health message {message:?} lacks {words:?} (status {})",
            obj["status"]
        );
    }
}

fn backup_job_cases() -> Vec<Case> {
    let ready = |msg: &str| cond("Ready", "True", "Valid", msg);
    let not_degraded = cond("Degraded", "False", "AsExpected", "AsExpected");
    let not_suspended = cond("Suspended", "False", "NotSuspended", "NotSuspended");
    let idle = cond("Progressing", "False", "Idle", "no Snapshot is running");
    vec![
        (
            "BackupJob",
            None,
            "Progressing",
            "Waiting for the snapcrypt operator",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Ready", "observedGeneration": 1,
                        "conditions": [ready("next run at 03:00"), not_degraded]})),
            "Progressing",
            "latest spec",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Ready", "observedGeneration": 2,
                        "conditions": [ready("next run at 2026-11-28T03:00:00Z"), not_degraded, idle, not_suspended]})),
            "Healthy",
            "next run at 2026-11-28T03:00:00Z",
        ),
        (
            "BackupJob",
            Some(
                json!({"phase": "Running", "observedGeneration": 2, "runningSnapshot": "rs0-202611270300",
                        "conditions": [ready("next run at 04:00"), not_degraded,
                                       cond("Progressing", "True", "SnapshotRunning", "Snapshot rs0-202611270300 is running"),
                                       not_suspended]}),
            ),
            "Healthy",
            "Snapshot rs0-202611270300 is running",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Ready", "observedGeneration": 2,
                        "conditions": [ready("next run at 04:00"),
                                       cond("Degraded", "True", "LastSnapshotFailed", "Snapshot rs0-202611270300 failed: no secondary"),
                                       idle, not_suspended]})),
            "Degraded",
            "no secondary",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Waiting", "observedGeneration": 2,
                        "conditions": [cond("Ready", "False", "SecretNotFound", "Secret rs0-key not found"),
                                       cond("Degraded", "False", "SecretNotFound", "Secret rs0-key not found"),
                                       idle, not_suspended]})),
            "Progressing",
            "Secret rs0-key not found",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Failed", "observedGeneration": 2,
                        "conditions": [cond("Ready", "False", "SecretMissing", "Secret rs0-key not found"),
                                       cond("Degraded", "True", "SecretMissing", "Secret rs0-key not found"),
                                       idle, not_suspended]})),
            "Degraded",
            "Secret rs0-key not found",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Suspended", "observedGeneration": 2,
                        "conditions": [ready("suspended by spec.suspend"), not_degraded, idle,
                                       cond("Suspended", "True", "Suspended", "spec.suspend is true")]})),
            "Suspended",
            "spec.suspend",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Completed", "observedGeneration": 2,
                        "conditions": [ready("no schedule: one snapshot is taken"), not_degraded, idle, not_suspended]})),
            "Healthy",
            "one snapshot",
        ),
        (
            "BackupJob",
            Some(json!({"phase": "Pending", "observedGeneration": 2})),
            "Progressing",
            "Pending",
        ),
    ]
}

fn snapshot_and_restore_cases() -> Vec<Case> {
    vec![
        ("Snapshot", None, "Progressing", "Waiting"),
        (
            "Snapshot",
            Some(
                json!({"phase": "Pending", "message": "pod rs0-1 is starting",
                        "conditions": [cond("Progressing", "True", "PodCreated", "pod rs0-1 is starting")]}),
            ),
            "Progressing",
            "pod rs0-1 is starting",
        ),
        (
            "Snapshot",
            Some(
                json!({"phase": "Running", "progressSummary": "41.5% 1.2 GiB/2.9 GiB, ETA 2m",
                        "message": "copying member rs0-1"}),
            ),
            "Progressing",
            "41.5%",
        ),
        (
            "Snapshot",
            Some(
                json!({"phase": "Succeeded", "message": "snapshot 3f2a in the repository: 12 files",
                        "conditions": [cond("Ready", "True", "Succeeded", "snapshot 3f2a"),
                                       cond("Failed", "False", "NotFailed", "NotFailed")]}),
            ),
            "Healthy",
            "snapshot 3f2a",
        ),
        (
            "Snapshot",
            Some(
                json!({"phase": "Failed", "message": "the master key 7 is not Active on the KMIP server",
                        "conditions": [cond("Failed", "True", "KeyNotActive", "the master key 7 is not Active")]}),
            ),
            "Degraded",
            "not Active",
        ),
        ("Restore", None, "Progressing", "Waiting"),
        (
            "Restore",
            Some(json!({"phase": "Running", "progressSummary": "10% 100 MiB/1 GiB"})),
            "Progressing",
            "10%",
        ),
        (
            "Restore",
            Some(json!({"phase": "Succeeded", "message": "restored and verified"})),
            "Healthy",
            "restored",
        ),
        (
            "Restore",
            Some(
                json!({"phase": "Failed", "conditions": [cond("Failed", "True", "TargetNotEmpty", "PVC data is not empty: set force")]}),
            ),
            "Degraded",
            "not empty",
        ),
    ]
}

fn kmip_server_cases() -> Vec<Case> {
    vec![
        ("KmipServer", None, "Progressing", "Waiting"),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2})),
            "Progressing",
            "Connecting",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2, "activeKeyId": "7",
                        "conditions": [cond("Ready", "True", "Connected", "PyKMIP at kmip-1:5696, KMIP 1.4")]})),
            "Healthy",
            "Active master key 7",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2,
                        "conditions": [cond("Ready", "False", "Unreachable", "kmip-1:5696: connection refused")]})),
            "Degraded",
            "connection refused",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2,
                        "conditions": [cond("Ready", "Unknown", "Checking", "checking kmip-1:5696")]})),
            "Progressing",
            "checking",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2, "activeKeyId": "8",
                        "rewrap": {"targetKeyId": "8", "repositoriesDone": 1, "repositoriesTotal": 3, "dataKeysDone": 4},
                        "conditions": [cond("Ready", "True", "Connected", "ok")]})),
            "Progressing",
            "1 of 3 repositories",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2, "activeKeyId": "8",
                        "rewrap": {"targetKeyId": "8", "repositoriesDone": 3, "repositoriesTotal": 3,
                                   "dataKeysDone": 9, "completedAt": "2026-11-27T04:00:00Z"},
                        "conditions": [cond("Ready", "True", "Connected", "ok"),
                                       cond("Degraded", "False", "AsExpected", "AsExpected")]})),
            "Healthy",
            "Active master key 8",
        ),
        (
            "KmipServer",
            Some(json!({"observedGeneration": 2,
                        "conditions": [cond("Ready", "True", "Connected", "ok"),
                                       cond("Degraded", "True", "KeyNotActive", "master key 7 is Deactivated")]})),
            "Degraded",
            "Deactivated",
        ),
    ]
}
