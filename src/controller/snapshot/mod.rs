//! The Snapshot controller: one run of a BackupJob. It waits its turn (one running Snapshot per
//! job), chooses the member to copy from, starts the snapshot pod on that member's node, turns
//! the pod's phases into status, and retries a failed pod up to `spec.backoffLimit` times.
//!
//! dereference (job, sibling Snapshots, own pods) -> plan (pure: what the pod's state means)
//! -> [to start a pod: dereference members and references, ask MongoDB, validate, choose
//! (pure), build the pod (pure), apply RBAC and pod] -> update status, with Events.

pub mod build;
pub mod result;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};

use self::build::pod::{PodPlan, made_by_job, member_run_as, snapshot_pod};
use self::build::status::{PodView, Step, failure_message, next_status, view};
use self::result::AgentResult;
use super::backup_job;
use super::job_refs::{Needs, apply_agent_identity, check_job, job_kmip};
use super::names::{ATTEMPT_LABEL, SNAPSHOT_UID_LABEL};
use super::{Context, apply, apply_status, conditions, owning_agent_pods};
use crate::api::backup_job::{AuthMechanism, MongoSource};
use crate::api::snapshot::{MemberChoice, RunPhase};
use crate::api::{BackupJob, Snapshot};
use crate::mongo::{self, Answer, ConnectionSettings, MemberAddress, MemberReport};

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "snapshot";

/// How often a waiting Snapshot looks again at what it waits for.
const RECHECK: Duration = Duration::from_secs(30);
/// How often a Snapshot queued behind another of its job looks again.
const QUEUE_RECHECK: Duration = Duration::from_secs(5);

/// A reconcile failure, by stage. A Snapshot that cannot start (missing job or Secret, no
/// member to copy from, KMIP) is not an error: that becomes its status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Snapshot {snapshot}: reading {what}: {source}")]
    Dereference {
        snapshot: String,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("Snapshot {snapshot}: applying the agent's {object}: {source}")]
    ApplyRbac {
        snapshot: String,
        object: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("Snapshot {snapshot}: creating pod {pod}: {source}")]
    ApplyPod {
        snapshot: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("Snapshot {snapshot}: deleting Snapshot {forgotten}, forgotten by retention: {source}")]
    DeleteForgotten {
        snapshot: String,
        forgotten: String,
        #[source]
        source: kube::Error,
    },
    #[error("Snapshot {snapshot}: updating status: {source}")]
    UpdateStatus {
        snapshot: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The stage, as a metrics label.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Dereference { .. } => "dereference",
            Error::ApplyRbac { .. } => "apply_rbac",
            Error::ApplyPod { .. } => "apply_pod",
            Error::DeleteForgotten { .. } => "delete_forgotten",
            Error::UpdateStatus { .. } => "update_status",
        }
    }
}

/// The Snapshot controller's stream; it also wakes for every change of a snapshot pod.
pub fn controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    use futures::StreamExt;
    owning_agent_pods::<Snapshot>(&ctx.client, namespace.as_deref(), "snapshot")
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .map(super::log_stream_error(CONTROLLER))
}

fn error_policy(snap: Arc<Snapshot>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_failure(CONTROLLER, snap.as_ref(), err.category(), err)
}

/// The Snapshot's surroundings, as read from the API.
struct World {
    job: Option<BackupJob>,
    /// Other Snapshots of the same job.
    siblings: Vec<Snapshot>,
    /// This Snapshot's pods.
    pods: Vec<Pod>,
}

async fn reconcile(snap: Arc<Snapshot>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let prev = snap.status.clone().unwrap_or_default();
    let original = prev.clone();
    if snap.metadata.deletion_timestamp.is_some()
        || matches!(prev.phase, RunPhase::Succeeded | RunPhase::Failed)
    {
        return Ok(Action::await_change());
    }
    let now = jiff::Timestamp::now();

    // 1. Dereference: the job, its other Snapshots, this Snapshot's pods.
    let world = dereference(&snap, &ctx.client).await?;
    let prev = recover_from_pods(prev, &world.pods);

    // 2. Plan (pure): what the current pod's state means, or whether a pod may start.
    let (step, requeue) = match (plan(&snap, &prev, &world), world.job.as_ref()) {
        (Plan::Step(step, requeue), _) => (step, requeue),
        // 3-5. Validate, choose a member, build and apply the pod.
        (
            Plan::Start {
                attempt,
                retry_after,
            },
            Some(job),
        ) => start_attempt(&snap, job, attempt, retry_after, &ctx).await?,
        // plan() starts nothing without a job.
        (Plan::Start { .. }, None) => return Ok(Action::requeue(RECHECK)),
    };

    // 6. Retention: Snapshots whose repository snapshot the agent's retention pass forgot go
    //    too, before the status write (a lost write makes the next reconcile redo this).
    if let Step::Succeeded { result, .. } = &step {
        delete_forgotten(&snap, &world, result, &ctx).await?;
    }

    // 7. Update status, and announce transitions.
    let status = next_status(&prev, &step, snap.metadata.generation, now);
    if status != original {
        let api: Api<Snapshot> =
            Api::namespaced(ctx.client.clone(), &snap.namespace().unwrap_or_default());
        apply_status(&api, &snap.name_any(), &status)
            .await
            .map_err(|source| Error::UpdateStatus {
                snapshot: snap.name_any(),
                source,
            })?;
    }
    announce(&snap, &prev, &status, &step, &ctx).await;
    if matches!(status.phase, RunPhase::Succeeded | RunPhase::Failed) && prev.phase != status.phase
    {
        ctx.metrics.finished(&format!("{:?}", status.phase));
    }
    ctx.reconciled(CONTROLLER, snap.as_ref());
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// The finished Snapshots the job made whose repository snapshot the agent's retention pass
/// has forgotten. Snapshots a user created are never deleted (the pass does not forget them
/// either). Pure.
fn forgotten_siblings<'a>(
    siblings: &'a [Snapshot],
    job: Option<&BackupJob>,
    result: &AgentResult,
) -> Vec<&'a Snapshot> {
    let (Some(r), Some(job)) = (&result.retention, job) else {
        return Vec::new();
    };
    let gone: BTreeSet<&str> = r.forgotten.iter().map(String::as_str).collect();
    siblings
        .iter()
        .filter(|s| made_by_job(s, job))
        .filter(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.phase == RunPhase::Succeeded
                    && st
                        .repository_snapshot_id
                        .as_deref()
                        .is_some_and(|id| gone.contains(id))
            })
        })
        .collect()
}

/// Delete the Snapshots [`forgotten_siblings`] names (each by uid, so a re-created one of the
/// same name stays), with one Event.
async fn delete_forgotten(
    snap: &Snapshot,
    world: &World,
    result: &AgentResult,
    ctx: &Context,
) -> Result<(), Error> {
    use kube::api::{DeleteParams, Preconditions};
    let doomed = forgotten_siblings(&world.siblings, world.job.as_ref(), result);
    if doomed.is_empty() {
        return Ok(());
    }
    let api: Api<Snapshot> =
        Api::namespaced(ctx.client.clone(), &snap.namespace().unwrap_or_default());
    let mut names = Vec::new();
    for s in doomed {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: s.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&s.name_any(), &dp).await {
            Ok(_) => names.push(s.name_any()),
            // Already gone, or replaced by a new object of the same name.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(source) => {
                return Err(Error::DeleteForgotten {
                    snapshot: snap.name_any(),
                    forgotten: s.name_any(),
                    source,
                });
            }
        }
    }
    if !names.is_empty() {
        ctx.event(
            snap,
            false,
            "ForgottenSnapshotsDeleted",
            format!(
                "deleted Snapshot {}: the BackupJob's retention policy forgot them in the repository",
                names.join(", ")
            ),
        )
        .await;
    }
    Ok(())
}

/// Fill what a lost status write would have recorded (attempt, pod, member) from the newest
/// snapshot pod, which carries it in its labels and annotations. Pure.
fn recover_from_pods(
    mut prev: crate::api::SnapshotStatus,
    pods: &[Pod],
) -> crate::api::SnapshotStatus {
    use super::names::{MEMBER_ANNOTATION, MEMBER_REASON_ANNOTATION, MEMBER_ROLE_ANNOTATION};
    let newest = pods
        .iter()
        .filter_map(|p| {
            let n = p.labels().get(ATTEMPT_LABEL)?.parse::<u32>().ok()?;
            Some((n, p))
        })
        .max_by_key(|(n, _)| *n);
    if let Some((n, pod)) = newest
        && n > prev.attempts
    {
        let a = pod.annotations();
        prev.attempts = n;
        prev.pod_name = Some(pod.name_any());
        if let Some(member) = a.get(MEMBER_ANNOTATION) {
            prev.member = Some(MemberChoice {
                pod: member.clone(),
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                role: a.get(MEMBER_ROLE_ANNOTATION).cloned(),
                reason: a.get(MEMBER_REASON_ANNOTATION).cloned().unwrap_or_default(),
            });
        }
    }
    prev
}

/// Events: one per condition reason that changed, plus retries.
async fn announce(
    snap: &Snapshot,
    prev: &crate::api::SnapshotStatus,
    status: &crate::api::SnapshotStatus,
    step: &Step,
    ctx: &Context,
) {
    let mut said = BTreeSet::new();
    if let Step::Started {
        retry_after: Some(why),
        attempt,
        pod,
        ..
    } = step
    {
        ctx.event(
            snap,
            true,
            "Retrying",
            format!(
                "attempt {} failed: {why}; started pod {pod} (attempt {attempt})",
                attempt - 1
            ),
        )
        .await;
    }
    for c in conditions::transitions(&prev.conditions, &status.conditions) {
        if c.type_ == "Progressing" && c.reason == "Finished" {
            continue;
        }
        if (c.type_ == "Failed" && c.status == "False") || !said.insert(c.reason.clone()) {
            continue;
        }
        let warning = (c.type_ == "Failed" && c.status == "True") || is_problem(&c.reason);
        ctx.event(snap, warning, &c.reason, c.message.clone()).await;
    }
}

fn is_problem(reason: &str) -> bool {
    reason.ends_with("NotFound")
        || reason.starts_with("Invalid")
        || matches!(
            reason,
            "NoSyncSource"
                | "MemberNotScheduled"
                | "NoDataClaim"
                | "KmipNotSupported"
                | "PruneFailed"
        )
}

/// What a reconcile does next.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Write this status; look again after the duration (None: on the next change).
    Step(Step, Option<Duration>),
    /// Start attempt `attempt` (choose a member, create its pod).
    Start {
        attempt: u32,
        retry_after: Option<String>,
    },
}

/// Decide from the current pod (or its absence) and the other Snapshots of the job. Pure.
fn plan(snap: &Snapshot, prev: &crate::api::SnapshotStatus, world: &World) -> Plan {
    let ns = snap.namespace().unwrap_or_default();
    let Some(job) = &world.job else {
        return Plan::Step(
            Step::Wait {
                reason: "BackupJobNotFound",
                message: format!(
                    "spec.backupJobRef.name {:?}: BackupJob not found in namespace {ns}",
                    snap.spec.backup_job_ref.name
                ),
            },
            Some(RECHECK),
        );
    };
    let current = world.pods.iter().max_by_key(|p| {
        p.labels()
            .get(ATTEMPT_LABEL)
            .and_then(|a| a.parse::<u32>().ok())
    });
    let failed = |message: String, finished| {
        if prev.attempts <= job.spec.backoff_limit {
            Plan::Start {
                attempt: prev.attempts + 1,
                retry_after: Some(message),
            }
        } else {
            let tries = prev.attempts;
            Plan::Step(
                Step::Failed {
                    reason: "SnapshotFailed",
                    message: if tries > 1 {
                        format!(
                            "{message} (gave up after {tries} attempts, spec.backoffLimit {})",
                            job.spec.backoff_limit
                        )
                    } else {
                        message
                    },
                    finished,
                },
                None,
            )
        }
    };
    if let Some(pod) = current {
        let v = view(pod);
        return match &v {
            PodView::Pending { message } => Plan::Step(
                Step::PodPending {
                    message: message.clone(),
                },
                None,
            ),
            PodView::Running { started } => Plan::Step(
                Step::PodRunning {
                    started: started.clone(),
                },
                None,
            ),
            PodView::Succeeded {
                termination,
                finished,
            } => match termination.as_deref().and_then(AgentResult::parse) {
                Some(result) => Plan::Step(
                    Step::Succeeded {
                        result,
                        finished: finished.clone(),
                    },
                    None,
                ),
                None => Plan::Step(
                    Step::Failed {
                        reason: "ResultUnreadable",
                        message: format!(
                            "pod {} exited 0 but its termination message holds no result line: {:?}",
                            pod.name_any(),
                            termination.clone().unwrap_or_default()
                        ),
                        finished: finished.clone(),
                    },
                    None,
                ),
            },
            PodView::Failed { finished, .. } => failed(failure_message(&v), finished.clone()),
        };
    }
    if prev.attempts > 0 && prev.pod_name.is_some() {
        return failed(
            format!(
                "pod {} disappeared before it finished (deleted, or its node was lost)",
                prev.pod_name.clone().unwrap_or_default()
            ),
            None,
        );
    }
    // Not started: wait for any other unfinished Snapshot of the job that is running or older.
    let me = (
        snap.metadata.creation_timestamp.as_ref().map(|t| t.0),
        snap.name_any(),
    );
    let blocker = world
        .siblings
        .iter()
        .filter(|s| {
            !matches!(
                s.status.as_ref().map(|st| st.phase),
                Some(RunPhase::Succeeded | RunPhase::Failed)
            )
        })
        .filter(|s| {
            backup_job::build::status::started(s)
                || (
                    s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    s.name_any(),
                ) < me
        })
        .min_by_key(|s| {
            (
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                s.name_any(),
            )
        });
    if let Some(b) = blocker {
        return Plan::Step(
            Step::Wait {
                reason: "WaitingForOtherSnapshot",
                message: format!(
                    "waiting for Snapshot {} of BackupJob {} to finish (one Snapshot of a job runs at a time)",
                    b.name_any(),
                    job.name_any()
                ),
            },
            Some(QUEUE_RECHECK),
        );
    }
    Plan::Start {
        attempt: prev.attempts + 1,
        retry_after: None,
    }
}

async fn dereference(snap: &Snapshot, client: &Client) -> Result<World, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let name = snap.name_any();
    let err = |what: &str| {
        let snapshot = name.clone();
        let what = what.to_string();
        move |source| Error::Dereference {
            snapshot,
            what,
            source,
        }
    };
    let job_name = &snap.spec.backup_job_ref.name;
    let job = Api::<BackupJob>::namespaced(client.clone(), &ns)
        .get_opt(job_name)
        .await
        .map_err(err("BackupJob"))?;
    let siblings = Api::<Snapshot>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(err("Snapshots"))?
        .items
        .into_iter()
        .filter(|s| &s.spec.backup_job_ref.name == job_name && s.name_any() != name)
        .collect();
    let pods = match snap.uid() {
        Some(uid) => {
            Api::<Pod>::namespaced(client.clone(), &ns)
                .list(&ListParams::default().labels(&format!("{SNAPSHOT_UID_LABEL}={uid}")))
                .await
                .map_err(err("snapshot pods"))?
                .items
        }
        None => Vec::new(),
    };
    Ok(World {
        job,
        siblings,
        pods,
    })
}

/// Steps 3-5 for a new attempt. Returns the step for status and when to look again.
async fn start_attempt(
    snap: &Snapshot,
    job: &BackupJob,
    attempt: u32,
    retry_after: Option<String>,
    ctx: &Context,
) -> Result<(Step, Option<Duration>), Error> {
    let ns = snap.namespace().unwrap_or_default();
    let name = snap.name_any();
    let client = &ctx.client;
    let deref = |what: &str| {
        let snapshot = name.clone();
        let what = what.to_string();
        move |source| Error::Dereference {
            snapshot,
            what,
            source,
        }
    };
    let wait =
        |reason: &'static str, message: String| Ok((Step::Wait { reason, message }, Some(RECHECK)));

    // 3a. Validate the job (pure) against what it references (read here).
    if let Some(b) = check_job(client, &ns, job, Needs::Everything)
        .await
        .map_err(deref("referenced objects"))?
    {
        return wait(b.reason, b.message);
    }

    // 3b. Dereference the members and ask them (when a connection is configured).
    let source = &job.spec.source;
    let member_pods = match list_member_pods(client, &ns, source).await {
        Ok(Some(pods)) => pods,
        Ok(None) => {
            return wait(
                "StatefulSetNotFound",
                format!(
                    "spec.source.statefulSetName {:?}: StatefulSet not found in namespace {ns}",
                    source.stateful_set_name.clone().unwrap_or_default()
                ),
            );
        }
        Err(e) => return Err(deref("member pods")(e)),
    };
    let members = mongo::member_pods(
        &member_pods,
        &source.data_volume_name,
        &ctx.config.cluster_domain,
    );
    let reports: Vec<MemberReport> = match &source.connection {
        Some(_) => {
            let settings = match connection_settings(client, &ns, source, ctx).await {
                Ok(s) => s,
                Err(e) => return Err(deref("MongoDB credentials")(e)),
            };
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
        None => members
            .iter()
            .map(|m| MemberReport {
                pod: m.name.clone(),
                node: m.node.clone(),
                answer: Answer::NotAsked,
                delay_secs: None,
            })
            .collect(),
    };

    // 3c. Choose (pure).
    let sync = source.sync_source.clone().unwrap_or_default();
    let choice = match mongo::choose(sync.mode, sync.member.as_deref(), &reports) {
        Ok(c) => c,
        Err(e) => return wait("NoSyncSource", e.to_string()),
    };
    let Some(member_pod) = member_pods.iter().find(|p| p.name_any() == choice.pod) else {
        return wait(
            "NoSyncSource",
            format!("member pod {} vanished", choice.pod),
        );
    };
    let member = members.iter().find(|m| m.name == choice.pod);
    let Some(node) = choice.node.clone() else {
        return wait(
            "MemberNotScheduled",
            format!("member pod {} is not on a node yet", choice.pod),
        );
    };
    let Some(claim) = member.and_then(|m| m.data_claim.clone()) else {
        return wait(
            "NoDataClaim",
            format!(
                "member pod {} has no volume {:?} backed by a PersistentVolumeClaim (spec.source.dataVolumeName)",
                choice.pod, source.data_volume_name
            ),
        );
    };

    // 3d. A KMIP job needs its KmipServer, with an active master key.
    let kmip = match job_kmip(client, &ns, job)
        .await
        .map_err(deref("KmipServer"))?
    {
        Ok(k) => k,
        Err(b) => return wait(b.reason, b.message),
    };

    // 4. Build (pure): the pod and the agent's identity.
    let pod = match snapshot_pod(&PodPlan {
        snapshot: snap,
        job,
        attempt,
        member: &choice.pod,
        member_role: &choice.role,
        member_reason: &choice.reason,
        node: &node,
        data_claim: &claim,
        run_as: member_run_as(member_pod, &source.data_volume_name),
        image: &ctx.config.agent_image,
        progress_interval: ctx.config.agent_progress_interval,
        kmip: kmip.as_ref().map(|(ks, key)| (ks, key.as_str())),
    }) {
        Ok(p) => p,
        Err(e) => {
            return Ok((
                Step::Failed {
                    reason: "InvalidSpec",
                    message: e.to_string(),
                    finished: None,
                },
                None,
            ));
        }
    };

    // 5. Apply: the agent's ServiceAccount, Role and RoleBinding, then the pod.
    apply_agent_identity(ctx, &ns, job)
        .await
        .map_err(|(object, source)| Error::ApplyRbac {
            snapshot: name.clone(),
            object,
            source,
        })?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = apply(&pods, &pod).await.map_err(|source| Error::ApplyPod {
        snapshot: name.clone(),
        pod: pod.name_any(),
        source,
    })?;
    Ok((
        Step::Started {
            attempt,
            pod: created.name_any(),
            member: MemberChoice {
                pod: choice.pod,
                node: Some(node),
                role: Some(choice.role),
                reason: choice.reason,
            },
            retry_after,
        },
        None,
    ))
}

/// The pods of the replica set: the StatefulSet's (by its selector), or the source selector's.
/// None if the StatefulSet does not exist.
async fn list_member_pods(
    client: &Client,
    ns: &str,
    source: &MongoSource,
) -> Result<Option<Vec<Pod>>, kube::Error> {
    let selector = match (&source.stateful_set_name, &source.selector) {
        (Some(sts), _) => {
            let Some(sts) = Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(sts)
                .await?
            else {
                return Ok(None);
            };
            sts.spec.map(|s| s.selector).unwrap_or_default()
        }
        (None, Some(sel)) => sel.clone(),
        (None, None) => return Ok(Some(Vec::new())),
    };
    let Ok(selector) = kube::core::Selector::try_from(selector) else {
        return Ok(Some(Vec::new()));
    };
    if selector.selects_all() {
        // An empty selector would take every pod in the namespace for a member.
        return Ok(Some(Vec::new()));
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels_from(&selector))
        .await?;
    Ok(Some(pods.items))
}

/// The connection settings with the credentials and CA read from their Secrets.
async fn connection_settings(
    client: &Client,
    ns: &str,
    source: &MongoSource,
    ctx: &Context,
) -> Result<ConnectionSettings, kube::Error> {
    let Some(c) = &source.connection else {
        return Ok(ConnectionSettings::default());
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let get = |s: &Option<Secret>, k: &str| -> Option<Vec<u8>> {
        s.as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
    };
    let creds = match &c.credentials_secret {
        Some(n) => secrets.get_opt(n).await?,
        None => None,
    };
    let ca = match c.tls.as_ref().and_then(|t| t.ca_secret.as_ref()) {
        Some(n) => secrets.get_opt(n).await?,
        None => None,
    };
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let cert_key = match c.auth_mechanism {
        AuthMechanism::X509 => match (get(&creds, "tls.crt"), get(&creds, "tls.key")) {
            (Some(mut crt), Some(key)) => {
                crt.push(b'\n');
                crt.extend(key);
                Some(crt)
            }
            _ => None,
        },
        _ => None,
    };
    Ok(ConnectionSettings {
        port: c.port,
        mechanism: c.auth_mechanism,
        auth_source: c.auth_source.clone(),
        username: text(get(&creds, "username")),
        password: text(get(&creds, "password")),
        tls: c.tls.as_ref().is_some_and(|t| t.enabled),
        ca_pem: get(&ca, "ca.crt"),
        client_cert_key_pem: cert_key,
        timeout: ctx.config.mongo_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SnapshotStatus;

    fn job(backoff: u32) -> BackupJob {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: snapcrypt.dev/v1alpha1
kind: BackupJob
metadata: {{name: rs0, namespace: db, uid: u1}}
spec:
  source: {{statefulSetName: rs0, dataVolumeName: data, syncSource: {{mode: member, member: rs0-1}}}}
  destination: {{pvc: {{claimName: backups}}}}
  encryption: {{localKeySecret: {{name: k}}}}
  backoffLimit: {backoff}
"#
        ))
        .expect("yaml")
    }

    fn snap(name: &str, created: &str, status: Option<SnapshotStatus>) -> Snapshot {
        let mut s: Snapshot = serde_yaml::from_str(&format!(
            "apiVersion: snapcrypt.dev/v1alpha1\nkind: Snapshot\nmetadata: {{name: {name}, namespace: db, uid: uid-{name}, creationTimestamp: \"{created}\"}}\nspec: {{backupJobRef: {{name: rs0}}}}\n"
        ))
        .expect("yaml");
        s.status = status;
        s
    }

    fn pod(attempt: u32, status: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: s-{attempt}, labels: {{snapcrypt.dev/attempt: \"{attempt}\"}}}}\nstatus:\n{status}"
        ))
        .expect("pod")
    }

    fn world(job: Option<BackupJob>, siblings: Vec<Snapshot>, pods: Vec<Pod>) -> World {
        World {
            job,
            siblings,
            pods,
        }
    }

    fn running(attempts: u32) -> Option<SnapshotStatus> {
        Some(SnapshotStatus {
            phase: RunPhase::Running,
            attempts,
            pod_name: Some(format!("s-{attempts}")),
            ..Default::default()
        })
    }

    const FAILED: &str = "  phase: Failed\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 1, message: \"snapcrypt: error: disk full\"}}}";

    #[test]
    fn first_attempt_starts_when_nothing_is_ahead() {
        let s = snap("s", "2026-11-27T03:00:00Z", None);
        assert_eq!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![])
            ),
            Plan::Start {
                attempt: 1,
                retry_after: None
            }
        );
    }

    #[test]
    fn missing_job_waits_with_a_condition() {
        let s = snap("s", "2026-11-27T03:00:00Z", None);
        let Plan::Step(Step::Wait { reason, message }, Some(_)) = plan(
            &s,
            &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
            &world(None, vec![], vec![]),
        ) else {
            panic!("should wait")
        };
        assert_eq!(reason, "BackupJobNotFound");
        assert_eq!(
            message,
            "spec.backupJobRef.name \"rs0\": BackupJob not found in namespace db"
        );
    }

    #[test]
    fn one_running_snapshot_per_job() {
        let me = snap("b", "2026-11-27T04:00:00Z", None);
        let older_running = snap("a", "2026-11-27T03:00:00Z", running(1));
        let older_done = snap(
            "a",
            "2026-11-27T03:00:00Z",
            Some(SnapshotStatus {
                phase: RunPhase::Succeeded,
                ..Default::default()
            }),
        );
        let older_pending = snap("a", "2026-11-27T03:00:00Z", None);
        let newer_pending = snap("c", "2026-11-27T05:00:00Z", None);
        let newer_running = snap("c", "2026-11-27T05:00:00Z", running(1));
        let waits = |sib: Snapshot| {
            matches!(
                plan(
                    &me,
                    &Default::default(),
                    &world(Some(job(2)), vec![sib], vec![])
                ),
                Plan::Step(
                    Step::Wait {
                        reason: "WaitingForOtherSnapshot",
                        ..
                    },
                    _
                )
            )
        };
        assert!(waits(older_running));
        assert!(waits(older_pending), "the older one goes first");
        assert!(waits(newer_running), "never two running");
        assert!(!waits(older_done));
        assert!(!waits(newer_pending));
    }

    #[test]
    fn failed_pod_is_retried_up_to_the_backoff_limit() {
        let s = snap("s", "2026-11-27T03:00:00Z", running(1));
        assert_eq!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(1)), vec![], vec![pod(1, FAILED)])
            ),
            Plan::Start {
                attempt: 2,
                retry_after: Some("disk full".into())
            }
        );
        let s = snap("s", "2026-11-27T03:00:00Z", running(2));
        let Plan::Step(
            Step::Failed {
                reason, message, ..
            },
            None,
        ) = plan(
            &s,
            &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
            &world(Some(job(1)), vec![], vec![pod(1, FAILED), pod(2, FAILED)]),
        )
        else {
            panic!("should fail")
        };
        assert_eq!(reason, "SnapshotFailed");
        assert_eq!(
            message,
            "disk full (gave up after 2 attempts, spec.backoffLimit 1)"
        );
        let s = snap("s", "2026-11-27T03:00:00Z", running(1));
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(0)), vec![], vec![pod(1, FAILED)])
            ),
            Plan::Step(Step::Failed { .. }, None)
        ));
    }

    #[test]
    fn retention_deletes_only_finished_forgotten_snapshots() {
        use super::result::RetentionResult;
        let done = |id: &str, phase: RunPhase| {
            Some(SnapshotStatus {
                phase,
                repository_snapshot_id: Some(id.into()),
                ..Default::default()
            })
        };
        let job = job(0);
        let owned = |mut s: Snapshot| {
            s.metadata.owner_references = Some(vec![
                kube::Resource::controller_owner_ref(&job, &()).expect("ref"),
            ]);
            s
        };
        let siblings = vec![
            owned(snap(
                "old",
                "2026-11-01T00:00:00Z",
                done("aa", RunPhase::Succeeded),
            )),
            owned(snap(
                "kept",
                "2026-11-02T00:00:00Z",
                done("bb", RunPhase::Succeeded),
            )),
            // A failed run that somehow carries a forgotten id is not the retention's to delete.
            owned(snap(
                "odd",
                "2026-11-03T00:00:00Z",
                done("cc", RunPhase::Failed),
            )),
            owned(snap("queued", "2026-11-04T00:00:00Z", None)),
            // A Snapshot a user created (no owner) is never deleted.
            snap(
                "mine",
                "2026-11-05T00:00:00Z",
                done("ee", RunPhase::Succeeded),
            ),
        ];
        let mut result = AgentResult {
            id: "dd".into(),
            files: 1,
            logical_bytes: 1,
            stored_bytes: 1,
            key_id: "k".into(),
            retention: None,
        };
        assert!(forgotten_siblings(&siblings, Some(&job), &result).is_empty());
        result.retention = Some(RetentionResult {
            kept: 2,
            forgotten: vec!["aa".into(), "cc".into(), "ee".into(), "zz".into()],
            forgotten_total: 4,
            ..Default::default()
        });
        assert!(forgotten_siblings(&siblings, None, &result).is_empty());
        let names: Vec<String> = forgotten_siblings(&siblings, Some(&job), &result)
            .iter()
            .map(|s| s.name_any())
            .collect();
        assert_eq!(names, ["old"]);
    }

    #[test]
    fn pod_phases_become_steps() {
        let s = snap("s", "2026-11-27T03:00:00Z", running(1));
        let ok = "  phase: Succeeded\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 0, message: '{\"id\":\"abc\",\"files\":3,\"logical_bytes\":30,\"stored_bytes\":10,\"key_id\":\"local:k\"}'}}}";
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![pod(1, ok)])
            ),
            Plan::Step(Step::Succeeded { .. }, None)
        ));
        let garbled = "  phase: Succeeded\n  containerStatuses:\n  - {name: agent, image: i, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 0, message: 'hello'}}}";
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![pod(1, garbled)])
            ),
            Plan::Step(
                Step::Failed {
                    reason: "ResultUnreadable",
                    ..
                },
                None
            )
        ));
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![pod(1, "  phase: Running")])
            ),
            Plan::Step(Step::PodRunning { .. }, None)
        ));
        // The pod vanished: a failed attempt.
        assert!(matches!(
            plan(
                &s,
                &recover_from_pods(s.status.clone().unwrap_or_default(), &[]),
                &world(Some(job(2)), vec![], vec![])
            ),
            Plan::Start {
                attempt: 2,
                retry_after: Some(_)
            }
        ));
    }
}
