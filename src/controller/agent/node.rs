//! The node an agent pod runs on, as the run reads it: a pod whose node has stopped being
//! Ready (its kubelet stopped reporting, or reports NotReady) for longer than the job's
//! `spec.placement.nodeLostTimeout` is given up. The kubelet that would stop the pod at its
//! runTimeout, or report its end, is the one gone, so without this a run would stay Running
//! for as long as the node is lost.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use kube::{Api, Client, ResourceExt};

use crate::controller::execute::Change;

/// How often a run whose node is Ready looks at it again (a node's loss changes no object
/// the controllers watch).
pub const NODE_RECHECK: Duration = Duration::from_secs(30);

/// The node `pod` is bound to, if any and if the operator may read it. A 403 (an operator
/// without the chart's node-reader binding) or 404 (the node is gone: the pod garbage collector
/// deletes its pods) gives None: the run then relies on runTimeout alone.
pub async fn node_of(client: &Client, pod: &Pod) -> kube::Result<Option<Node>> {
    let Some(name) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
        return Ok(None);
    };
    match Api::<Node>::all(client.clone()).get_opt(name).await {
        Ok(node) => Ok(node),
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::debug!(
                node = name,
                "may not read Nodes: a lost node is not detected"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
}

/// Whether `pod` is on `node` and that node is not Ready.
fn on_lost_node(pod: &Pod, node: Option<&Node>) -> bool {
    node.is_some_and(|n| {
        !is_ready(n)
            && pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == n.metadata.name.as_deref()
    })
}

/// Whether `pod` has ended (Succeeded or Failed). Pure.
pub fn has_ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The PersistentVolumeClaims `pod` mounts, by name. Pure.
pub fn claims_mounted(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

/// Whether the pod of a run that is over must still be stopped: it has not finished, and is
/// not being deleted already (unless it is on a node that is not Ready, whose kubelet will
/// never complete that deletion). Pure.
pub fn needs_stopping(pod: &Pod, node: Option<&Node>) -> bool {
    !has_ended(pod) && (pod.metadata.deletion_timestamp.is_none() || on_lost_node(pod, node))
}

/// The change that stops the pod of a run that is over: deleted by uid, at once if its node
/// (`node`) is not Ready, since its kubelet cannot confirm a graceful deletion. Pure.
pub fn stop(stage: &'static str, pod: &Pod, node: Option<&Node>) -> Change {
    if on_lost_node(pod, node) {
        Change::force_delete(stage, pod)
    } else {
        Change::delete(stage, pod)
    }
}

/// Whether `node` says it is Ready (a node with no Ready condition yet counts as Ready: it has
/// not been lost, it has not reported). Pure.
pub fn is_ready(node: &Node) -> bool {
    ready_condition(node).is_none_or(|c| c.status == "True")
}

/// What a run on a node not Ready for longer than `limit` is told (None: the node is Ready,
/// or not lost for long enough) and when to look at the node again. Pure.
pub fn node_lost(node: &Node, limit: Duration, now: jiff::Timestamp) -> (Option<String>, Duration) {
    let Some(c) = ready_condition(node).filter(|c| c.status != "True") else {
        return (None, NODE_RECHECK);
    };
    let down = c
        .last_transition_time
        .as_ref()
        .map_or(Duration::ZERO, |t| now.duration_since(t.0).unsigned_abs());
    if down <= limit {
        // Look again just after the limit, or sooner if the recheck comes first.
        let left = limit - down + Duration::from_secs(1);
        return (None, left.min(NODE_RECHECK));
    }
    let said = match (c.reason.as_deref(), c.message.as_deref()) {
        (Some(r), Some(m)) => format!(": {r}: {m}"),
        (Some(r), None) => format!(": {r}"),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    };
    let why = format!(
        "node {} has not been Ready for over {}s (spec.placement.nodeLostTimeout); Ready is {}{said}",
        node.name_any(),
        limit.as_secs(),
        c.status,
    );
    (Some(why), NODE_RECHECK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, since: &str) -> Node {
        serde_yaml::from_str(&format!(
            "metadata: {{name: n1}}\nstatus:\n  conditions:\n  - {{type: Ready, status: '{ready}', lastTransitionTime: '{since}', reason: NodeStatusUnknown, message: Kubelet stopped posting node status.}}"
        ))
        .expect("node")
    }

    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    fn at(t: &str) -> jiff::Timestamp {
        t.parse().expect("time")
    }

    #[test]
    fn a_node_not_ready_past_the_timeout_is_lost_and_named() {
        let n = node("Unknown", "2026-12-01T10:00:00Z");
        // Within 5m: not lost; look again just after the limit (or at the recheck).
        let (why, again) = node_lost(&n, FIVE_MINUTES, at("2026-12-01T10:04:50Z"));
        assert_eq!((why, again), (None, Duration::from_secs(11)));
        let (why, _) = node_lost(&n, FIVE_MINUTES, at("2026-12-01T10:05:01Z"));
        let why = why.expect("lost");
        assert!(
            why.starts_with("node n1 has not been Ready for over 300s (spec.placement.nodeLostTimeout); Ready is Unknown: NodeStatusUnknown: Kubelet stopped posting node status."),
            "{why}"
        );
        let (why, _) = node_lost(&n, Duration::from_secs(20), at("2026-12-01T10:00:21Z"));
        assert!(why.is_some_and(|w| w.contains("over 20s")));
        assert!(!is_ready(&n));
    }

    #[test]
    fn a_ready_node_or_one_without_conditions_is_not_lost() {
        let n = node("True", "2026-12-01T10:00:00Z");
        assert_eq!(
            node_lost(&n, Duration::from_secs(1), at("2026-12-02T10:00:00Z")),
            (None, NODE_RECHECK)
        );
        let silent: Node = serde_yaml::from_str("metadata: {name: n2}").expect("node");
        assert!(is_ready(&silent));
        assert_eq!(
            node_lost(&silent, Duration::from_secs(1), at("2026-12-02T10:00:00Z")).0,
            None
        );
    }
}
