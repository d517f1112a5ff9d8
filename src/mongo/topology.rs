//! The replica set's member pods as Kubernetes sees them: which pods, on which node, at which
//! address, with which data claim. Pure: the controller lists the pods, this reads them.

use k8s_openapi::api::core::v1::Pod;

/// One member pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPod {
    pub name: String,
    /// The node it is bound to.
    pub node: Option<String>,
    /// Host name to reach mongod by: the stable DNS name `<hostname>.<subdomain>.<ns>.svc.<domain>`
    /// when the pod has a subdomain (StatefulSet pods behind a headless Service, the names
    /// member certificates are issued for), else the pod IP.
    pub host: Option<String>,
    /// The PersistentVolumeClaim behind the data volume, if that volume is a claim.
    pub data_claim: Option<String>,
    /// Whether the pod is Running and not being deleted.
    pub running: bool,
}

impl MemberPod {
    /// Read a pod. `data_volume` is `spec.source.dataVolumeName`.
    pub fn from_pod(pod: &Pod, data_volume: &str, cluster_domain: &str) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let host = match spec.and_then(|s| s.subdomain.as_deref()) {
            Some(sub) if !sub.is_empty() => {
                let hostname = spec
                    .and_then(|s| s.hostname.clone())
                    .unwrap_or_else(|| name.clone());
                Some(format!("{hostname}.{sub}.{ns}.svc.{cluster_domain}"))
            }
            _ => status.and_then(|s| s.pod_ip.clone()),
        };
        let data_claim = spec
            .and_then(|s| s.volumes.as_ref())
            .and_then(|vs| vs.iter().find(|v| v.name == data_volume))
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone());
        MemberPod {
            name,
            node: spec.and_then(|s| s.node_name.clone()),
            host,
            data_claim,
            running: pod.metadata.deletion_timestamp.is_none()
                && status.and_then(|s| s.phase.as_deref()) == Some("Running"),
        }
    }
}

/// The member pods, sorted by name, from the pods the source's selector matched.
pub fn member_pods(pods: &[Pod], data_volume: &str, cluster_domain: &str) -> Vec<MemberPod> {
    let mut out: Vec<MemberPod> = pods
        .iter()
        .map(|p| MemberPod::from_pod(p, data_volume, cluster_domain))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("pod yaml")
    }

    #[test]
    fn statefulset_pod_is_reached_by_its_stable_name_and_names_its_claim() {
        let p = pod(r#"
metadata: {name: rs0-1, namespace: mongodb}
spec:
  hostname: rs0-1
  subdomain: rs0
  nodeName: node-b
  containers: [{name: mongod, image: mongo:7}]
  volumes:
  - name: mongo-data
    persistentVolumeClaim: {claimName: mongo-data-rs0-1}
  - name: config
    configMap: {name: rs0}
status: {phase: Running, podIP: 10.1.2.3}
"#);
        let m = MemberPod::from_pod(&p, "mongo-data", "cluster.local");
        assert_eq!(
            m,
            MemberPod {
                name: "rs0-1".into(),
                node: Some("node-b".into()),
                host: Some("rs0-1.rs0.mongodb.svc.cluster.local".into()),
                data_claim: Some("mongo-data-rs0-1".into()),
                running: true,
            }
        );
    }

    #[test]
    fn plain_pod_is_reached_by_ip_and_a_non_claim_volume_has_no_claim() {
        let p = pod(r#"
metadata: {name: m, namespace: ns}
spec:
  containers: [{name: mongod, image: mongo:7}]
  volumes: [{name: data, emptyDir: {}}]
status: {phase: Pending, podIP: 10.1.2.4}
"#);
        let m = MemberPod::from_pod(&p, "data", "cluster.local");
        assert_eq!(m.host.as_deref(), Some("10.1.2.4"));
        assert_eq!(m.data_claim, None);
        assert!(!m.running);
        assert_eq!(m.node, None);
    }
}
