//! fsyncLock copies end to end (issue 17), on real pods: the operator locks the member before
//! the snapshot pod reads a byte and unlocks it after the pod is done; a copy that loses its
//! lock (its pod killed, maxLockSeconds passed, an election) is stopped and the member
//! unlocked, and a Snapshot deleted mid-copy unlocks it too; the primary is refused without allowPrimary; a retry never leaves the lock count
//! above what it found; a lock whose holder died (the operator killed while locked) is undone
//! by the next operator, with an Event.
//!
//! DOUBLES (tests/README.md): mongod cannot run here. The member is a pause pod on its node's
//! network, and its mongod is tests/fixtures/mockupdb/lockable.py listening at the member's
//! address: it answers hello, fsync, fsyncUnlock and currentOp as mongod 6/7 do, records every
//! command with its time, and stops the WiredTiger writer (tests/doubles/wiredtiger, the engine
//! inside mongod) while the member is locked, as mongod's lock holds its writes. The fault
//! hook SNAPCRYPT_FAULT_BACKUP_STALL_SECS (the operator's --agent-env) keeps a copy running
//! before its commit, so that a test can act while it is under way.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde_json::json;

use snapcrypt::api::Snapshot;
use snapcrypt::api::snapshot::{LockState, RunPhase};
use support::cluster::{eventually, wait_for};
use support::ground::{Ground, Options};
use support::mockupdb::Lockable;
use support::operator::{
    LONG, events_for, job_sample, parse_metrics, snapshot_finished, wait_for_event,
    wait_for_success,
};
use support::real_nodes::pod_logs;

/// How long a faulted copy stalls before its commit.
const STALL: &str = "SNAPCRYPT_FAULT_BACKUP_STALL_SECS=10";

/// A ground whose member answers as a lockable mongod at its address.
struct Locked {
    g: Ground,
    mongod: Lockable,
    port: u16,
}

impl Locked {
    async fn new(purpose: &str, operator_args: &[&str]) -> Option<Locked> {
        let opts = Options {
            host_network: true,
            operator_args,
            ..Default::default()
        };
        let g = Ground::with(purpose, opts).await?;
        let port = support::free_port();
        let mongod = Lockable::start(Some(&format!("{}:{port}", g.member_ip().await)));
        Some(Locked { g, mongod, port })
    }

    /// BackupJob `name` in mode fsyncLock, with `extra` in its consistency.
    async fn job(&self, name: &str, extra: serde_json::Value, backoff_limit: u32) {
        let mut consistency = json!({"mode": "fsyncLock"});
        if let (Some(c), Some(e)) = (consistency.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        self.g
            .job_with(
                name,
                json!({"connection": {"port": self.port, "authMechanism": "NONE"},
                       "consistency": consistency}),
                backoff_limit,
            )
            .await;
    }

    /// Wait until the member's lock count is `n`.
    async fn wait_for_count(&self, n: i64, what: &str) {
        eventually(what, LONG, || async {
            match self.mongod.lock_count() {
                c if c == n => Ok(()),
                c => Err(format!("lock count {c}")),
            }
        })
        .await;
    }

    /// The finished Snapshot `name`.
    async fn finished(&self, name: &str) -> snapcrypt::api::SnapshotStatus {
        let snaps: Api<Snapshot> = self.g.ns.api();
        wait_for(
            &snaps,
            name,
            "the Snapshot to finish",
            LONG,
            snapshot_finished,
        )
        .await
        .status
        .expect("status")
    }

    /// The finished Snapshot `name`, which must have succeeded at attempt `attempt`.
    async fn succeeded_at_attempt(
        &self,
        name: &str,
        attempt: u32,
    ) -> snapcrypt::api::SnapshotStatus {
        let st = self.finished(name).await;
        assert_eq!(
            (st.phase, st.attempts),
            (RunPhase::Succeeded, attempt),
            "{st:?}\n{}",
            pod_logs(self.g.ns.name())
        );
        st
    }

    /// Wait until Snapshot `name` is copying (phase Running) under the lock.
    async fn copying(&self, name: &str) -> String {
        let snaps: Api<Snapshot> = self.g.ns.api();
        let s = wait_for(&snaps, name, "the copy to run", LONG, |s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.phase == RunPhase::Running)
        })
        .await;
        self.wait_for_count(1, "the member locked during the copy")
            .await;
        // /metrics says since when the Snapshot has been in its phase, as status does.
        let start = s.status.as_ref().and_then(|st| st.start_time.clone());
        let start = start.map(|t| t.0.as_second() as f64).expect("start time");
        let op = self.g.operator.as_ref().expect("the ground's operator");
        eventually("the Running phase's start in /metrics", LONG, || async {
            let m = parse_metrics(&op.metrics());
            let found = m.iter().find(|((n, l), _)| {
                n == "snapcrypt_snapshot_phase_start_timestamp_seconds"
                    && l.get("snapshot").map(String::as_str) == Some(name)
                    && l.get("phase").map(String::as_str) == Some("Running")
            });
            match found.map(|(_, v)| *v) {
                Some(v) if (v - start).abs() < 1.0 => Ok(()),
                other => Err(format!("{other:?}, status says {start}")),
            }
        })
        .await;
        s.status.and_then(|st| st.pod_name).expect("pod name")
    }
}

/// The pod's container's start and finish, in Unix seconds (whole seconds: Kubernetes writes
/// no fractions).
fn container_times(pod: &Pod) -> (f64, f64) {
    let t = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("a terminated container");
    let secs = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.as_second() as f64).expect("time")
    };
    (secs(&t.started_at), secs(&t.finished_at))
}

/// Two copies of a member whose WiredTiger database is being written, each under a lock
/// that holds the writer: the member's record shows the lock taken before the pod's container
/// started and released after it finished; status and an Event say how long writes were
/// held; the restored copy opens and verifies in WiredTiger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_spans_the_copy() {
    let Some(l) = Locked::new("lock-copy", &[]).await else {
        return;
    };
    let writer = support::wiredtiger::Writer::start(&l.g.data);
    l.mongod.control(&format!("freeze {}", writer.pid()));
    l.job("copy", json!({}), 0).await;
    let snaps: Api<Snapshot> = l.g.ns.api();
    let pods: Api<Pod> = l.g.ns.api();
    let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    for run in 1..=2 {
        let name = format!("copy-{run}");
        l.g.snapshot(&name, "copy").await;
        let st = wait_for_success(&snaps, &name, &l.g.ns).await;
        let consistent = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Consistent")
            .map(|c| (c.status.clone(), c.reason.clone()));
        assert_eq!(consistent, Some(("True".into(), "CopiedUnderLock".into())));
        let lock = st
            .capture
            .as_ref()
            .and_then(|c| c.lock.clone())
            .expect("lock in status");
        assert_eq!(lock.state, LockState::Released, "{lock:?}");
        assert_eq!(lock.count_before, Some(0));
        // The record: one lock, one unlock, around the pod's whole run.
        let cmds: Vec<_> = l
            .mongod
            .lock_commands()
            .into_iter()
            .filter(|c| c.cmd != "currentOp")
            .collect();
        assert_eq!(cmds.len(), 2 * run, "{cmds:?}");
        let (locked, unlocked) = (&cmds[2 * run - 2], &cmds[2 * run - 1]);
        assert_eq!(
            (
                locked.cmd.as_str(),
                locked.lock_count_after,
                unlocked.cmd.as_str(),
                unlocked.lock_count_after
            ),
            ("fsync", 1, "fsyncUnlock", 0)
        );
        let pod = pods
            .get(st.pod_name.as_deref().expect("pod"))
            .await
            .expect("the snapshot pod");
        let (started, finished) = container_times(&pod);
        assert!(
            locked.t.floor() <= started,
            "run {run}: locked at {}, the copy's container started at {started}",
            locked.t
        );
        assert!(
            finished <= unlocked.t,
            "run {run}: the copy's container finished at {finished}, unlocked at {}",
            unlocked.t
        );
        let held = lock.held_seconds.expect("held");
        assert!(
            (held - (unlocked.t - locked.t)).abs() < 2.0,
            "status says {held} s, the member's record {} s",
            unlocked.t - locked.t
        );
        let out = work.path().join(&name);
        l.g.restore(st.repository_snapshot_id.as_deref().expect("id"), &out)
            .await;
        if let Err(why) = support::wiredtiger::judge(&out) {
            panic!("run {run}: the copy taken under the lock does not open in WiredTiger: {why}");
        }
    }
    let event = wait_for_event(&l.g.ns, "copy-2", "MemberUnlocked").await;
    assert!(event.contains("writes were held"), "{event}");

    // /metrics says what status says: the newest successful Snapshot's lock, and two copy
    // locks observed.
    let held = l
        .finished("copy-2")
        .await
        .capture
        .and_then(|c| c.lock)
        .and_then(|l| l.held_seconds);
    let op = l.g.operator.as_ref().expect("the ground's operator");
    let m = parse_metrics(&op.metrics());
    let ns = l.g.ns.name();
    let scraped = job_sample(
        &m,
        "snapcrypt_backupjob_last_fsync_lock_seconds",
        ns,
        "copy",
    );
    assert!(
        held.is_some_and(|h| (h - scraped).abs() < 0.01),
        "/metrics says {scraped} s, status {held:?}"
    );
    let copies = m.get(&(
        "snapcrypt_operator_member_lock_seconds_count".to_string(),
        [("purpose".to_string(), "copy".to_string())].into(),
    ));
    assert_eq!(copies, Some(&2.0), "copy locks counted in /metrics");
}

/// Copies that lose their lock, one after the other on one member: the pod killed mid-copy
/// (unlocked within one reconcile), maxLockSeconds 2 passed, an election mid-lock; each
/// Snapshot fails naming why, its pod is stopped, and the member is unlocked. The primary is
/// refused without allowPrimary. With someone else's lock on the member, a retry ends with
/// the count it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_loses_its_lock_fails_and_unlocks() {
    let Some(l) = Locked::new("lock-faults", &["--agent-env", STALL]).await else {
        return;
    };
    support::make_source(&l.g.data);
    support::chown_mongodb(&l.g.data);
    let pods: Api<Pod> = l.g.ns.api();

    // The pod killed mid-copy: the next reconcile unlocks.
    l.job("killed", json!({}), 0).await;
    l.g.snapshot("killed-1", "killed").await;
    let pod = l.copying("killed-1").await;
    let killed_at = support::now_secs() as f64;
    pods.delete(&pod, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the snapshot pod");
    let st = l.finished("killed-1").await;
    assert_eq!(st.phase, RunPhase::Failed, "{st:?}");
    l.wait_for_count(0, "the member unlocked after its copy's pod was killed")
        .await;
    let unlock = l.mongod.lock_commands().last().cloned().expect("unlock");
    assert_eq!(unlock.cmd, "fsyncUnlock");
    assert!(
        unlock.t - killed_at < 15.0,
        "unlocked {} s after the pod was killed",
        unlock.t - killed_at
    );

    // The Snapshot deleted mid-copy (its reconciles stop; garbage collection takes the pod):
    // the lock goes with the pod, not maxLockSeconds (600 s) later.
    l.job("deleted", json!({}), 0).await;
    l.g.snapshot("deleted-1", "deleted").await;
    l.copying("deleted-1").await;
    let snaps: Api<Snapshot> = l.g.ns.api();
    let deleted_at = support::now_secs() as f64;
    snaps
        .delete("deleted-1", &DeleteParams::background())
        .await
        .expect("delete the Snapshot");
    l.wait_for_count(0, "the member unlocked after its Snapshot was deleted")
        .await;
    let unlock = l.mongod.lock_commands().last().cloned().expect("unlock");
    assert!(
        unlock.t - deleted_at < 30.0,
        "unlocked {} s after the Snapshot was deleted",
        unlock.t - deleted_at
    );

    // maxLockSeconds 2: the copy (stalled 10 s) overruns; stopped, unlocked.
    l.job("short", json!({"maxLockSeconds": 2}), 0).await;
    l.g.snapshot("short-1", "short").await;
    let st = l.finished("short-1").await;
    let msg = st.message.clone().unwrap_or_default();
    assert_eq!(st.phase, RunPhase::Failed, "{st:?}");
    assert!(msg.contains("maxLockSeconds"), "{msg}");
    assert_eq!(l.mongod.lock_count(), 0);
    let lock = st.capture.and_then(|c| c.lock).expect("lock");
    assert_eq!(lock.state, LockState::Failed, "{lock:?}");
    let failed = wait_for_event(&l.g.ns, "short-1", "LockFailed").await;
    assert!(failed.contains("maxLockSeconds"), "{failed}");

    // An election mid-lock: stopped, unlocked.
    l.job("elected", json!({}), 0).await;
    l.g.snapshot("elected-1", "elected").await;
    l.copying("elected-1").await;
    l.mongod.control("primary");
    let st = l.finished("elected-1").await;
    let msg = st.message.clone().unwrap_or_default();
    assert_eq!(st.phase, RunPhase::Failed, "{st:?}");
    assert!(msg.contains("became PRIMARY"), "{msg}");
    assert_eq!(l.mongod.lock_count(), 0);

    // The primary is refused without allowPrimary: no lock asked for.
    let before = l.mongod.lock_commands().len();
    l.g.snapshot("elected-2", "elected").await;
    let st = l.finished("elected-2").await;
    let msg = st.message.clone().unwrap_or_default();
    assert!(msg.contains("is PRIMARY, not a secondary"), "{msg}");
    assert!(
        !l.mongod.lock_commands()[before..]
            .iter()
            .any(|c| c.cmd == "fsync"),
        "the primary was locked"
    );
    l.mongod.control("secondary");

    someone_elses_lock_stays_through_a_retry(&l).await;
}

/// Someone else's lock stays: attempt 1 loses its pod, attempt 2 copies; the count ends
/// where it was found.
async fn someone_elses_lock_stays_through_a_retry(l: &Locked) {
    let (pods, snaps): (Api<Pod>, Api<Snapshot>) = (l.g.ns.api(), l.g.ns.api());
    l.mongod.control("lockcount 1");
    l.job("retried", json!({}), 1).await;
    l.g.snapshot("retried-1", "retried").await;
    l.wait_for_count(2, "attempt 1 locked").await;
    // Running with its pod named: the phase can be written before the pod's name is (seen in
    // CI: Running without a pod name).
    let first = wait_for(
        &snaps,
        "retried-1",
        "attempt 1 to copy in its pod",
        LONG,
        |s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.phase == RunPhase::Running && st.pod_name.is_some())
        },
    )
    .await;
    pods.delete(
        first
            .status
            .and_then(|st| st.pod_name)
            .as_deref()
            .expect("pod"),
        &DeleteParams::default().grace_period(0),
    )
    .await
    .expect("delete attempt 1's pod");
    l.succeeded_at_attempt("retried-1", 2).await;
    let counts = l.mongod.counts();
    assert_eq!(l.mongod.lock_count(), 1, "{counts:?}");
    assert!(counts.iter().all(|c| *c <= 2), "{counts:?}");
}

/// The operator killed while it holds a member's lock: the member stays locked (fsyncLock
/// outlives its connection) until the next operator finds the lost lock, unlocks the member
/// with an Event, and the retry copies under a lock of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_holder_died_is_undone_by_the_next_operator() {
    let Some(mut l) = Locked::new("lock-lost", &["--agent-env", STALL]).await else {
        return;
    };
    support::make_source(&l.g.data);
    support::chown_mongodb(&l.g.data);
    l.job("lost", json!({}), 1).await;
    l.g.snapshot("lost-1", "lost").await;
    l.copying("lost-1").await;
    drop(l.g.operator.take());
    // Nobody unlocks the member while no operator runs.
    assert_eq!(l.mongod.lock_count(), 1);
    l.g.restart_operator();
    let event = eventually("an Event saying the lost lock was undone", LONG, || async {
        let events = events_for(&l.g.ns, "lost-1").await;
        events
            .iter()
            .find(|(r, m)| r == "MemberUnlocked" && m.contains("lost"))
            .map(|(_, m)| m.clone())
            .ok_or_else(|| format!("{events:?}"))
    })
    .await;
    assert!(event.contains("the operator unlocked it"), "{event}");
    let st = l.succeeded_at_attempt("lost-1", 2).await;
    let lock = st.capture.and_then(|c| c.lock).expect("lock");
    assert_eq!(lock.state, LockState::Released, "{lock:?}");
    assert_eq!(l.mongod.lock_count(), 0);
    let counts = l.mongod.counts();
    assert!(counts.iter().all(|c| *c <= 1), "locks stacked: {counts:?}");
}
