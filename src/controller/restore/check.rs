//! What a Restore adds around its restore pod: the scratch claim it creates
//! (spec.target.scratch) and the check pod it runs on the result (spec.check), and what the
//! check pod's run means. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::Restore;
use crate::api::restore::{CheckStatus, ScratchClaim};
use crate::api::verification::{CheckContainer, CheckResult, RESTORED_MOUNT};
use crate::controller::agent::pod::{
    PodError, TERMINATION_LOG, TMP_MOUNT, container_security, env, mongodb_pod_security, mount,
};
use crate::controller::agent::run::{OOM_FIELD, RunStep, run_step_of};
use crate::controller::job_spec::consistency::parse_timeout;
use crate::controller::names::{CHECK_RESTORE_UID_LABEL, MANAGED_BY, check_pod_name};

/// The check pod's container.
pub const CHECK_CONTAINER: &str = "check";
/// The check's time limit when spec.check.timeout is not given.
pub const DEFAULT_CHECK_TIMEOUT_SECONDS: i64 = 3600;

/// Labels of what a Restore creates besides its restore pod.
fn labels(uid: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
        ("app.kubernetes.io/name".into(), "snapcrypt".into()),
        ("app.kubernetes.io/component".into(), component.into()),
        (CHECK_RESTORE_UID_LABEL.into(), uid.into()),
    ])
}

/// The NetworkPolicy that goes with the check pod (same name, owned by the Restore): it
/// selects the pod and denies all its egress, unless the check says `allowEgress` (then it
/// allows all), so a check image never sends the restored data anywhere. Where the cluster's
/// network plugin does not enforce policies it is inert. Pure.
pub fn check_network_policy(
    r: &Restore,
    check: &CheckContainer,
) -> Result<NetworkPolicy, PodError> {
    let owner = r.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = r.uid().ok_or(PodError::NoOwner)?;
    let selected = BTreeMap::from([
        (CHECK_RESTORE_UID_LABEL.to_string(), uid.clone()),
        (
            "app.kubernetes.io/component".to_string(),
            "restore-check".to_string(),
        ),
    ]);
    Ok(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(check_pod_name(&r.name_any())),
            namespace: r.namespace(),
            labels: Some(labels(&uid, "restore-check-policy")),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selected),
                ..Default::default()
            }),
            policy_types: Some(vec!["Egress".into()]),
            // No rule: nothing allowed. One empty rule: everything allowed.
            egress: Some(if check.allow_egress {
                vec![NetworkPolicyEgressRule::default()]
            } else {
                Vec::new()
            }),
            ..Default::default()
        }),
    })
}

/// The scratch claim: spec.target.claimName, owned by the Restore, ReadWriteOnce.
pub fn scratch_claim(r: &Restore, s: &ScratchClaim) -> Result<PersistentVolumeClaim, PodError> {
    let owner = r.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = r.uid().ok_or(PodError::NoOwner)?;
    Ok(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(r.spec.one_target().claim_name.clone()),
            namespace: r.namespace(),
            labels: Some(labels(&uid, "scratch")),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: s.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), s.size.clone())].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// Whether `claim` is the scratch claim this Restore created.
pub fn is_own_claim(r: &Restore, claim: &PersistentVolumeClaim) -> bool {
    let uid = r.uid();
    claim
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
}

/// The check pod: the user's container with the target claim at `/restored` (read-only
/// unless the check says `writable`), as uid/gid 999,
/// restricted, read-only root, a writable `/tmp`, no API token, under the check's timeout.
pub fn check_pod(r: &Restore, check: &CheckContainer) -> Result<Pod, PodError> {
    let owner = r.controller_owner_ref(&()).ok_or(PodError::NoOwner)?;
    let uid = r.uid().ok_or(PodError::NoOwner)?;
    let target = r.spec.one_target();
    let restored = match &target.path {
        Some(p) => format!("{RESTORED_MOUNT}/{p}"),
        None => RESTORED_MOUNT.to_string(),
    };
    let mut envs = check.env.clone();
    envs.retain(|e| e.name != "SNAPCRYPT_RESTORED_PATH");
    envs.push(env("SNAPCRYPT_RESTORED_PATH", restored));
    let timeout = check
        .timeout
        .as_deref()
        .and_then(|t| parse_timeout(t).ok())
        .map_or(DEFAULT_CHECK_TIMEOUT_SECONDS, |d| d.as_secs() as i64);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(check_pod_name(&r.name_any())),
            namespace: r.namespace(),
            labels: Some(labels(&uid, "restore-check")),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(timeout),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(mongodb_pod_security()),
            containers: vec![Container {
                name: CHECK_CONTAINER.into(),
                image: Some(check.image.clone()),
                command: (!check.command.is_empty()).then(|| check.command.clone()),
                args: (!check.args.is_empty()).then(|| check.args.clone()),
                env: Some(envs),
                volume_mounts: Some(vec![
                    mount("restored", RESTORED_MOUNT, !check.writable),
                    mount("tmp", TMP_MOUNT, false),
                ]),
                resources: check.resources.clone(),
                termination_message_path: Some(TERMINATION_LOG.into()),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                security_context: Some(container_security()),
                ..Default::default()
            }],
            volumes: Some(vec![
                Volume {
                    name: "restored".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: target.claim_name.clone(),
                        read_only: None,
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The check pod's run as a step: its termination message is the result, whatever it says.
pub fn check_step(pod: &Pod) -> RunStep<String> {
    run_step_of(pod, "check", CHECK_CONTAINER, |m| {
        Some(m.trim().to_string())
    })
}

/// The check pod's verdict and when it ended, from its step; `None` while it has not ended.
pub fn check_result(pod: &Pod, step: &RunStep<String>) -> Option<(CheckStatus, Option<Time>)> {
    let (result, message, finished) = match step {
        RunStep::Pending { .. } | RunStep::Running { .. } => return None,
        RunStep::Succeeded { result, finished } => {
            (CheckResult::Succeeded, Some(result.clone()), finished)
        }
        // Exit 0 without a termination message: passed, with nothing to say.
        RunStep::ResultUnreadable { finished, .. } => (CheckResult::Succeeded, None, finished),
        RunStep::Failed { message, finished } => (
            CheckResult::Failed,
            Some(
                message
                    .replace("spec.placement.runTimeout", "spec.check.timeout")
                    .replace(OOM_FIELD, "spec.check.resources"),
            ),
            finished,
        ),
    };
    let status = CheckStatus {
        pod: pod.name_any(),
        result,
        message: message.filter(|m| !m.is_empty()),
    };
    Some((status, finished.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{agent_pod, restore, terminated};

    fn check() -> CheckContainer {
        serde_yaml::from_str("{image: wt-check:dev, args: [--quick], env: [{name: A, value: b}, {name: SNAPCRYPT_RESTORED_PATH, value: /etc}]}").expect("check")
    }

    #[test]
    fn check_pod_mounts_the_restored_claim_and_runs_restricted() {
        let r = restore("{claimName: scratch-1, path: db}");
        let pod = check_pod(&r, &check()).expect("pod");
        assert_eq!(pod.name_any(), "back-check");
        assert_eq!(pod.owner_references()[0].kind, "Restore");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        let c = &spec.containers[0];
        let env: Vec<(String, Option<String>)> = c
            .env
            .as_ref()
            .expect("env")
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        assert!(env.contains(&(
            "SNAPCRYPT_RESTORED_PATH".into(),
            Some("/restored/db".into())
        )));
        assert_eq!(
            env.iter()
                .filter(|(n, _)| n == "SNAPCRYPT_RESTORED_PATH")
                .count(),
            1
        );
        let sc = c.security_context.as_ref().expect("sc");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let claim = spec.volumes.as_ref().expect("volumes")[0]
            .persistent_volume_claim
            .as_ref()
            .expect("claim");
        assert_eq!(claim.claim_name, "scratch-1");
        // Read-only unless the check says writable.
        let mounted_ro = |p: &Pod| {
            p.spec.as_ref().expect("spec").containers[0]
                .volume_mounts
                .as_ref()
                .expect("mounts")
                .iter()
                .find(|m| m.name == "restored")
                .expect("restored")
                .read_only
        };
        assert_eq!(mounted_ro(&pod), Some(true));
        let mut writable = check();
        writable.writable = true;
        assert_eq!(mounted_ro(&check_pod(&r, &writable).expect("pod")), None);
        // Its egress denied by a NetworkPolicy selecting it (all allowed with allowEgress).
        let np = check_network_policy(&r, &check()).expect("policy");
        let np_spec = np.spec.as_ref().expect("spec");
        let selected = np_spec
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .expect("labels");
        let labels = pod.metadata.labels.clone().expect("pod labels");
        assert!(
            selected.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{selected:?} {labels:?}"
        );
        assert_eq!(
            np_spec.policy_types.as_deref(),
            Some(&["Egress".to_string()][..])
        );
        assert_eq!(np_spec.egress.as_ref().map(Vec::len), Some(0));
        let mut open = check();
        open.allow_egress = true;
        let np = check_network_policy(&r, &open).expect("policy");
        assert_eq!(np.spec.expect("spec").egress.map(|e| e.len()), Some(1));
    }

    #[test]
    fn a_check_passes_on_exit_0_and_fails_with_its_own_words() {
        let named = |status: &str| {
            let mut p = agent_pod(1, &status.replace("name: agent", "name: check"));
            p.metadata.name = Some("back-check".into());
            p
        };
        let judged = |p: Pod| check_result(&p, &check_step(&p)).map(|(status, _)| status);
        let ok =
            judged(named(&terminated("Succeeded", 0, "OK: 4 tables verified"))).expect("ended");
        assert_eq!(ok.result, CheckResult::Succeeded);
        assert_eq!(ok.message.as_deref(), Some("OK: 4 tables verified"));
        let bad = judged(named(&terminated(
            "Failed",
            1,
            "FAILED: verify table:collection-2: checksum error",
        )))
        .expect("ended");
        assert_eq!(bad.result, CheckResult::Failed);
        assert_eq!(
            bad.message.as_deref(),
            Some("FAILED: verify table:collection-2: checksum error")
        );
        let oom = judged(named(
            &terminated("Failed", 137, "")
                .replace("exitCode: 137", "exitCode: 137, reason: OOMKilled"),
        ))
        .expect("ended");
        assert_eq!(oom.result, CheckResult::Failed);
        assert!(
            oom.message
                .as_deref()
                .is_some_and(|m| m.contains("raise spec.check.resources.limits.memory")),
            "{oom:?}"
        );
        assert_eq!(judged(named("  phase: Running")), None);
    }
}
