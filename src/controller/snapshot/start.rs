//! Starting an attempt: read the members (and ask MongoDB), check the job, choose the member
//! (pure), build the pod (pure), apply the agent's identity and the pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};

use super::build::pod::{PodPlan, RunAs, member_run_as, snapshot_pod};
use super::build::status::Step;
use super::dereference::{connection_settings, list_member_pods};
use super::{Error, RECHECK};
use crate::api::snapshot::MemberChoice;
use crate::api::{BackupJob, Snapshot};
use crate::controller::agent::identity::apply_agent_identity;
use crate::controller::agent::job::{Blocked, Needs, check_job, job_kmip};
use crate::controller::reason::Reason;
use crate::controller::{Context, apply};
use crate::mongo::{self, Answer, MemberAddress, MemberPod, MemberReport};

/// The replica set as read for one attempt: its pods, and what each member said.
struct Members {
    pods: Vec<Pod>,
    members: Vec<MemberPod>,
    reports: Vec<MemberReport>,
}

/// The member an attempt copies, with everything its pod needs.
#[derive(Debug, PartialEq)]
struct Chosen {
    choice: mongo::Choice,
    node: String,
    data_claim: String,
    run_as: RunAs,
}

/// Start attempt `attempt`. Returns the step for status and when to look again.
pub(super) async fn start_attempt(
    snap: &Snapshot,
    job: &BackupJob,
    attempt: u32,
    retry_after: Option<String>,
    ctx: &Context,
) -> Result<(Step, Option<Duration>), Error> {
    let ns = snap.namespace().unwrap_or_default();
    let name = snap.name_any();
    let wait = |b: Blocked| {
        Ok((
            Step::Wait {
                reason: b.reason,
                message: b.message,
            },
            Some(RECHECK),
        ))
    };

    // Validate the job (pure) against what it references (read here).
    if let Some(b) = check_job(&ctx.client, &ns, job, Needs::Everything)
        .await
        .map_err(Error::dereference(&name, "referenced objects"))?
    {
        return wait(b);
    }

    // Read the members, ask them, and choose (pure).
    let members = match read_members(&name, &ns, job, ctx).await? {
        Ok(m) => m,
        Err(b) => return wait(b),
    };
    let chosen = match choose(job, &members) {
        Ok(c) => c,
        Err(b) => return wait(b),
    };

    // A KMIP job needs its KmipServer, with an active master key.
    let kmip = match job_kmip(&ctx.client, &ns, job)
        .await
        .map_err(Error::dereference(&name, "KmipServer"))?
    {
        Ok(k) => k,
        Err(b) => return wait(b),
    };

    // Build (pure).
    let pod = match snapshot_pod(&PodPlan {
        snapshot: snap,
        job,
        attempt,
        member: &chosen.choice.pod,
        member_role: &chosen.choice.role,
        member_reason: &chosen.choice.reason,
        node: &chosen.node,
        data_claim: &chosen.data_claim,
        run_as: chosen.run_as,
        image: &ctx.config.agent_image,
        progress_interval: ctx.config.agent_progress_interval,
        kmip: kmip.as_ref().map(|(ks, key)| (ks, key.as_str())),
    }) {
        Ok(p) => p,
        Err(e) => {
            let step = Step::Failed {
                reason: Reason::InvalidSpec,
                message: e.to_string(),
                finished: None,
            };
            return Ok((step, None));
        }
    };

    // Apply: the agent's ServiceAccount, Role and RoleBinding, then the pod.
    apply_agent_identity(ctx, &ns, job)
        .await
        .map_err(|(object, source)| Error::ApplyRbac {
            snapshot: name.clone(),
            object,
            source,
        })?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let created = apply(&pods, &pod).await.map_err(|source| Error::ApplyPod {
        snapshot: name.clone(),
        pod: pod.name_any(),
        source,
    })?;
    let Chosen { choice, node, .. } = chosen;
    let step = Step::Started {
        attempt,
        pod: created.name_any(),
        member: MemberChoice {
            pod: choice.pod,
            node: Some(node),
            role: Some(choice.role),
            reason: choice.reason,
        },
        retry_after,
    };
    Ok((step, None))
}

/// Read the replica set's pods and, when a connection is configured, ask each member.
async fn read_members(
    snapshot: &str,
    ns: &str,
    job: &BackupJob,
    ctx: &Context,
) -> Result<Result<Members, Blocked>, Error> {
    let source = &job.spec.source;
    let Some(pods) = list_member_pods(&ctx.client, ns, source)
        .await
        .map_err(Error::dereference(snapshot, "member pods"))?
    else {
        return Ok(Err(Blocked {
            reason: Reason::StatefulSetNotFound,
            message: format!(
                "spec.source.statefulSetName {:?}: StatefulSet not found in namespace {ns}",
                source.stateful_set_name.clone().unwrap_or_default()
            ),
        }));
    };
    let members = mongo::member_pods(&pods, &source.data_volume_name, &ctx.config.cluster_domain);
    let reports = match &source.connection {
        Some(_) => {
            let settings = connection_settings(&ctx.client, ns, source, ctx)
                .await
                .map_err(Error::dereference(snapshot, "MongoDB credentials"))?;
            let addrs: Vec<MemberAddress> = members
                .iter()
                .map(|m| MemberAddress {
                    pod: m.name.clone(),
                    node: m.node.clone(),
                    host: m.host.clone(),
                    port: None,
                })
                .collect();
            mongo::ask_members(&addrs, &settings).await
        }
        None => not_asked(&members),
    };
    Ok(Ok(Members {
        pods,
        members,
        reports,
    }))
}

/// Reports for members MongoDB was not asked about (no connection configured).
fn not_asked(members: &[MemberPod]) -> Vec<MemberReport> {
    members
        .iter()
        .map(|m| MemberReport {
            pod: m.name.clone(),
            node: m.node.clone(),
            answer: Answer::NotAsked,
            delay_secs: None,
        })
        .collect()
}

/// The member to copy by the job's sync source, on a node and with a data claim, or why
/// there is none. Pure.
fn choose(job: &BackupJob, m: &Members) -> Result<Chosen, Blocked> {
    let source = &job.spec.source;
    let sync = source.sync_source.clone().unwrap_or_default();
    let no_source = |message: String| Blocked {
        reason: Reason::NoSyncSource,
        message,
    };
    let choice = mongo::choose(sync.mode, sync.member.as_deref(), &m.reports)
        .map_err(|e| no_source(e.to_string()))?;
    let member_pod = m
        .pods
        .iter()
        .find(|p| p.name_any() == choice.pod)
        .ok_or_else(|| no_source(format!("member pod {} vanished", choice.pod)))?;
    let Some(node) = choice.node.clone() else {
        return Err(Blocked {
            reason: Reason::MemberNotScheduled,
            message: format!("member pod {} is not on a node yet", choice.pod),
        });
    };
    let Some(data_claim) = m
        .members
        .iter()
        .find(|x| x.name == choice.pod)
        .and_then(|x| x.data_claim.clone())
    else {
        return Err(Blocked {
            reason: Reason::NoDataClaim,
            message: format!(
                "member pod {} has no volume {:?} backed by a PersistentVolumeClaim (spec.source.dataVolumeName)",
                choice.pod, source.data_volume_name
            ),
        });
    };
    Ok(Chosen {
        run_as: member_run_as(member_pod, &source.data_volume_name),
        choice,
        node,
        data_claim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;

    fn members(pods: Vec<Pod>) -> Members {
        let members = mongo::member_pods(&pods, "data", "cluster.local");
        let reports = not_asked(&members);
        Members {
            pods,
            members,
            reports,
        }
    }

    #[test]
    fn choose_names_why_no_member_can_be_copied() {
        let job = fixtures::job(
            "source: {statefulSetName: rs0, dataVolumeName: data, syncSource: {mode: member, member: rs0-1}}",
        );
        let on_node = fixtures::member_pod("rs0-1", Some("node-b"), Some("mongo-data-rs0-1"));
        let c = choose(&job, &members(vec![on_node])).expect("chosen");
        assert_eq!(
            (
                c.choice.pod.as_str(),
                c.node.as_str(),
                c.data_claim.as_str()
            ),
            ("rs0-1", "node-b", "mongo-data-rs0-1")
        );
        let unscheduled = fixtures::member_pod("rs0-1", None, Some("mongo-data-rs0-1"));
        assert_eq!(
            choose(&job, &members(vec![unscheduled]))
                .map(|_| ())
                .unwrap_err()
                .reason,
            Reason::MemberNotScheduled
        );
        let no_claim = fixtures::member_pod("rs0-1", Some("node-b"), None);
        let b = choose(&job, &members(vec![no_claim]))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(b.reason, Reason::NoDataClaim);
        assert!(
            b.message.contains("spec.source.dataVolumeName"),
            "{}",
            b.message
        );
        let b = choose(&job, &members(vec![])).map(|_| ()).unwrap_err();
        assert_eq!(b.reason, Reason::NoSyncSource);
    }
}
