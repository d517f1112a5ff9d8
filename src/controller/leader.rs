//! Leader election over a coordination.k8s.io Lease, so several operator replicas can run and
//! exactly one reconciles. The holder renews the Lease; a Lease not renewed for its duration
//! may be taken over. A leader that cannot renew stops (and is restarted to contend again):
//! two operators never act at once. kube-runtime has no leader election of its own, hence this
//! small module.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews, and candidates retry.
pub const RETRY: Duration = Duration::from_secs(5);

/// Who we are and which Lease we contend for.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub lease: String,
    pub namespace: String,
    pub identity: String,
}

/// What to do with the Lease as it is now. Pure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (or the holder stopped renewing): take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it: wait.
    Wait,
}

pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    let duration = i64::from(
        spec.lease_duration_seconds
            .unwrap_or(LEASE_DURATION.as_secs() as i32),
    );
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let expired = now.as_second() - renewed.as_second() > duration;
    if holder.is_empty() || expired {
        Decision::Acquire
    } else {
        Decision::Wait
    }
}

fn spec_for(me: &str, now: Timestamp, prev: Option<&LeaseSpec>, taking_over: bool) -> LeaseSpec {
    let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if taking_over {
            Some(MicroTime(now))
        } else {
            prev.and_then(|p| p.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if taking_over && prev.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..Default::default()
    }
}

/// One round: read the Lease, and take or renew it if we may. Returns whether we hold it.
/// Writes use the Lease's resourceVersion, so two candidates cannot both win.
async fn round(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.lease).await?;
    let decision = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &cfg.identity,
        now,
    );
    match (decision, current) {
        (Decision::Wait, _) => Ok(false),
        (_, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease.clone()),
                    ..Default::default()
                },
                spec: Some(spec_for(&cfg.identity, now, None, true)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        (d, Some(mut lease)) => {
            lease.spec = Some(spec_for(
                &cfg.identity,
                now,
                lease.spec.as_ref(),
                d == Decision::Acquire,
            ));
            match api
                .replace(&cfg.lease, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Wait until we hold the Lease.
pub async fn acquire(client: &Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    loop {
        match round(&api, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.lease, identity = %cfg.identity, "leader election: acquired");
                return;
            }
            Ok(false) => {
                tracing::debug!(lease = %cfg.lease, "leader election: another replica leads")
            }
            Err(e) => {
                tracing::warn!(lease = %cfg.lease, error = %e, "leader election: cannot read or write the Lease")
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Renew the Lease until that fails for longer than it is valid; returns when leadership is
/// lost (the caller stops).
pub async fn hold(client: &Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RETRY).await;
        match round(&api, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %cfg.lease, "leader election: another replica took the Lease");
                return;
            }
            Err(e) => {
                tracing::warn!(lease = %cfg.lease, error = %e, "leader election: renewal failed")
            }
        }
        if last_ok.elapsed() > LEASE_DURATION {
            tracing::error!(lease = %cfg.lease, "leader election: could not renew within the Lease's duration");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn who_may_take_the_lease() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(
            decide(Some(&lease("a", "2026-01-01T00:00:59Z")), "a", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease("b", "2026-01-01T00:00:50Z")), "a", now),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&lease("b", "2026-01-01T00:00:30Z")), "a", now),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&lease("", "2026-01-01T00:00:59Z")), "a", now),
            Decision::Acquire
        );
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let now = Timestamp::now();
        let prev = lease("b", "2026-01-01T00:00:00Z");
        assert_eq!(
            spec_for("a", now, Some(&prev), true).lease_transitions,
            Some(1)
        );
        assert_eq!(spec_for("a", now, None, true).lease_transitions, Some(0));
        assert_eq!(
            spec_for("a", now, Some(&prev), false).lease_transitions,
            Some(0)
        );
    }
}
