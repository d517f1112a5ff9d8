//! The Snapshot controller through its real reconcile, against the in-memory API
//! (`controller::memory_api`), without a cluster: the unit-level twin of tests/operator_e2e.rs
//! for a job without a MongoDB connection (no member is asked; mongod cannot run here, the
//! members are pod objects). The pure decisions have their own tests in plan.rs, start.rs,
//! locking.rs and build/.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::api::snapshot::RunPhase;
use crate::controller::fixtures::{
    claim, job, member_pod, secret, snapshot, stateful_set, terminated,
};
use crate::controller::memory_api::MemoryApi;

const SNAP: &str = "rs0-202611271000";

/// A replica set of two members on node n1, labelled as StatefulSet rs0 selects them.
fn cluster() -> MemoryApi {
    let mem = MemoryApi::new();
    mem.put(&job(""));
    mem.put(&stateful_set("rs0"));
    mem.put(&secret("k", "key"));
    mem.put(&claim("backups"));
    for name in ["rs0-0", "rs0-1"] {
        let mut pod = member_pod(name, Some("n1"), Some(&format!("data-{name}")));
        pod.metadata.labels = Some([("app".to_string(), "rs0".to_string())].into());
        mem.put(&pod);
    }
    mem.put(&snapshot(SNAP, "2026-11-27T10:00:00Z"));
    mem
}

async fn reconcile_once(mem: &MemoryApi, ctx: &Arc<Context>) -> Action {
    let s: Snapshot = mem.get("db", SNAP).expect("the Snapshot");
    reconcile(Arc::new(s), ctx.clone())
        .await
        .expect("reconcile")
}

/// A Snapshot of member rs0-1 starts its pod on the member's node after the agent's
/// identity, then turns the pod's success into Succeeded with the agent's figures; the
/// stopped-member copy says Consistent=False (CopiedLive).
#[tokio::test]
async fn a_snapshot_starts_its_pod_and_reports_what_it_copied() {
    let mem = cluster();
    let ctx = mem.context();
    reconcile_once(&mem, &ctx).await;
    let writes = mem.take_writes();
    let pod_name = format!("{SNAP}-1");
    assert_eq!(
        writes,
        [
            "apply serviceaccounts/snapcrypt-agent-rs0".to_string(),
            "apply roles/snapcrypt-agent-rs0".into(),
            "apply rolebindings/snapcrypt-agent-rs0".into(),
            format!("apply roles/snapcrypt-agent-run-uid-{SNAP}"),
            format!("apply rolebindings/snapcrypt-agent-run-uid-{SNAP}"),
            format!("apply pods/{pod_name}"),
            format!("status snapshots/{SNAP}"),
        ]
    );
    let mut pod: Pod = mem.get("db", &pod_name).expect("snapshot pod");
    // Pinned to the member's node (its volume is read there).
    let pinned = serde_json::to_value(&pod.spec).expect("json");
    let terms =
        &pinned["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(
        terms["nodeSelectorTerms"][0]["matchFields"][0]["values"][0],
        "n1"
    );
    let s: Snapshot = mem.get("db", SNAP).expect("Snapshot");
    let st = s.status.unwrap_or_default();
    assert_eq!(st.phase, RunPhase::Pending);
    assert_eq!(st.member.as_ref().map(|m| m.pod.as_str()), Some("rs0-1"));

    // The agent finishes: its result in the termination message.
    let done = crate::controller::fixtures::agent_pod(
        1,
        &terminated(
            "Succeeded",
            0,
            r#"{"id":"abc","files":3,"logical_bytes":30,"stored_bytes":10,"key_id":"local:k"}"#,
        ),
    );
    pod.status = done.status;
    mem.put(&pod);
    reconcile_once(&mem, &ctx).await;
    let s: Snapshot = mem.get("db", SNAP).expect("Snapshot");
    let st = s.status.unwrap_or_default();
    assert_eq!(st.phase, RunPhase::Succeeded, "{:?}", st.message);
    assert_eq!(st.repository_snapshot_id.as_deref(), Some("abc"));
    assert_eq!(st.key_id.as_deref(), Some("local:k"));
    let consistent = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Consistent")
        .expect("Consistent");
    assert_eq!(
        (consistent.status.as_str(), consistent.reason.as_str()),
        ("False", "CopiedLive")
    );
}
