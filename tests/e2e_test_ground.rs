//! End-to-end check of the test support that later e2e tests build on: the test node agent (a
//! test double of a kubelet, tests/README.md) started from a test runs the snapcrypt binary
//! under test as a pod, its logs are captured, and dropping it stops it cleanly.

mod support;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::cluster::{
    DEADLINE, NodeAgent, NodeAgentOptions, TestNamespace, cluster_or_skip, try_wait_for,
    unique_name, wait_for,
};

fn node_ready(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn pod_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A pod with one container of the snapcrypt image running `snapcrypt ARGS`, pinned to `node`.
fn snapcrypt_pod(name: &str, node: &str, args: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "containers": [{
                "name": "snapcrypt",
                "image": "snapcrypt:e2e",
                "args": args,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
        },
    }))
    .unwrap()
}

/// Runs `pod` to completion; returns it, finished. Failure messages carry the pod logs.
async fn run_to_completion(ns: &TestNamespace, agent: &NodeAgent, pod: Pod) -> Pod {
    let pods: Api<Pod> = ns.api();
    let name = pod.metadata.name.clone().unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    try_wait_for(&pods, &name, "the pod to finish", DEADLINE, pod_finished)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.diagnostics(ns.name())))
}

#[tokio::test]
async fn node_agent_runs_snapcrypt_pods_and_stops_on_drop() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    let node = unique_name("e2e", "node");
    let Some(agent) = cluster
        .start_node_agent(NodeAgentOptions::nodes(&[&node]))
        .await
    else {
        println!("skipped: the cluster's kubelets run pods (SNAPCRYPT_E2E_NODE_AGENT is not 1)");
        return;
    };
    let ns = cluster.namespace("node-agent").await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    wait_for(&nodes, &node, "the node to be Ready", DEADLINE, |n| {
        node_ready(n) == Some("True")
    })
    .await;

    // The snapcrypt image's entrypoint is the binary under test.
    let pod = run_to_completion(&ns, &agent, snapcrypt_pod("version", &node, &["--version"])).await;
    let status = pod.status.unwrap();
    assert_eq!(
        status.phase.as_deref(),
        Some("Succeeded"),
        "{:?}\n{}",
        status,
        agent.diagnostics(ns.name())
    );
    let log = agent.pod_log(ns.name(), "version", "snapcrypt");
    assert_eq!(
        log.trim(),
        format!("snapcrypt {}", env!("CARGO_PKG_VERSION")),
        "log of pod version"
    );

    // A failure shows in the pod status as on a real cluster: exit code and message.
    let pod = run_to_completion(
        &ns,
        &agent,
        snapcrypt_pod("bad", &node, &["no-such-command"]),
    )
    .await;
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let terminated = status.container_statuses.unwrap()[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated container");
    assert_eq!(terminated.exit_code, 2, "{terminated:?}");
    assert!(
        terminated
            .message
            .as_deref()
            .is_some_and(|m| m.contains("no-such-command")),
        "{terminated:?}"
    );
    assert!(
        agent
            .pod_log(ns.name(), "bad", "snapcrypt")
            .contains("unrecognized subcommand")
    );

    // Dropping the agent stops it with SIGTERM: it exits and marks its node NotReady.
    let pid = agent.pid();
    drop(agent);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("agent.py"),
        "the node agent (pid {pid}) is still running"
    );
    wait_for(&nodes, &node, "the node to be NotReady", DEADLINE, |n| {
        node_ready(n) != Some("True")
    })
    .await;
    nodes.delete(&node, &DeleteParams::default()).await.unwrap();
}
