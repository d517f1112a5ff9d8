//! How a BackupJob's copy is made consistent, resolved from `spec.source.consistency` with its
//! defaults. Pure. The choice, and why an absent field is not silently a consistent copy, is
//! in docs/ARCHITECTURE.md ("Consistent capture").

use std::time::Duration;

use crate::api::backup_job::{ConsistencyMode, MongoSource, Quiesce};
use crate::api::common::parse_duration;
use crate::api::snapshot::CaptureMode;

/// How long a VolumeSnapshot may take to become readyToUse, unless the spec says.
pub const DEFAULT_VOLUME_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long mode fsyncLock may hold the member (the whole copy), unless maxLockSeconds says.
pub const DEFAULT_COPY_LOCK: Duration = Duration::from_secs(600);
/// How long quiesce fsyncLock may hold the member (the cut only), unless maxLockSeconds says.
pub const DEFAULT_CUT_LOCK: Duration = Duration::from_secs(60);

/// The fsync lock a capture takes on the member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockSpec {
    /// maxLockSeconds, or the default for the mode.
    pub max_lock: Duration,
    /// allowPrimary.
    pub allow_primary: bool,
}

/// The capture method a job's snapshots use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Cut a CSI VolumeSnapshot of the member's data claim, copy from a claim restored from it.
    VolumeSnapshot {
        class: String,
        quiesce: Quiesce,
        timeout: Duration,
        /// The lock of the cut (quiesce fsyncLock); its max_lock is ignored otherwise.
        lock: LockSpec,
    },
    /// Lock the member for the whole copy.
    FsyncLock { lock: LockSpec },
    /// Copy the files as they are. `why` says how the job came to it, for the Consistent=False
    /// condition of every Snapshot it takes.
    StoppedMember { why: StoppedWhy },
}

/// How a job ended up copying the live files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoppedWhy {
    /// `mode: stoppedMember`.
    Chosen,
    /// `mode: none`, the old name.
    LegacyNone,
    /// No `spec.source.consistency` at all.
    Unset,
}

impl Capture {
    /// The mode's name as the spec writes it (for status).
    pub fn mode(&self) -> CaptureMode {
        match self {
            Capture::VolumeSnapshot { .. } => CaptureMode::VolumeSnapshot,
            Capture::FsyncLock { .. } => CaptureMode::FsyncLock,
            Capture::StoppedMember { .. } => CaptureMode::StoppedMember,
        }
    }

    /// Whether copies made this way are ones mongod can recover from.
    pub fn is_consistent(&self) -> bool {
        !matches!(self, Capture::StoppedMember { .. })
    }

    /// The lock this capture takes on the member, if any: mode fsyncLock, or volumeSnapshot
    /// with quiesce fsyncLock.
    pub fn lock(&self) -> Option<LockSpec> {
        match self {
            Capture::FsyncLock { lock }
            | Capture::VolumeSnapshot {
                quiesce: Quiesce::FsyncLock,
                lock,
                ..
            } => Some(*lock),
            _ => None,
        }
    }

    /// One sentence for the Snapshot's Consistent condition.
    pub fn explanation(&self) -> String {
        match self {
            Capture::VolumeSnapshot {
                quiesce: Quiesce::FsyncLock,
                ..
            } => "copied from a VolumeSnapshot cut while the member was fsyncLocked".into(),
            Capture::VolumeSnapshot {
                quiesce: Quiesce::None,
                ..
            } => "copied from a crash-consistent VolumeSnapshot of the data volume (mongod recovers from it when its journal is on that volume, its default layout)".into(),
            Capture::FsyncLock { .. } => "copied while the member was fsyncLocked".into(),
            Capture::StoppedMember { why } => format!(
                "{}: the files were copied as they are, which mongod can recover from only if the member was stopped; set spec.source.consistency.mode to volumeSnapshot (recommended) or fsyncLock",
                match why {
                    StoppedWhy::Chosen => "spec.source.consistency.mode is stoppedMember",
                    StoppedWhy::LegacyNone =>
                        "spec.source.consistency.mode is none (the old name of stoppedMember)",
                    StoppedWhy::Unset => "spec.source.consistency is not set",
                }
            ),
        }
    }
}

/// The job's capture method. A bad `volumeSnapshotTimeout` is reported by validation; here it
/// falls back to the default.
pub fn capture(source: &MongoSource) -> Capture {
    let Some(c) = &source.consistency else {
        return Capture::StoppedMember {
            why: StoppedWhy::Unset,
        };
    };
    let lock = |default| LockSpec {
        max_lock: c
            .max_lock_seconds
            .map_or(default, |s| Duration::from_secs(u64::from(s))),
        allow_primary: c.allow_primary,
    };
    match c.mode {
        ConsistencyMode::VolumeSnapshot => Capture::VolumeSnapshot {
            class: c.volume_snapshot_class_name.clone().unwrap_or_default(),
            quiesce: c.quiesce.unwrap_or(if source.connection.is_some() {
                Quiesce::FsyncLock
            } else {
                Quiesce::None
            }),
            timeout: c
                .volume_snapshot_timeout
                .as_deref()
                .and_then(|t| parse_timeout(t).ok())
                .unwrap_or(DEFAULT_VOLUME_SNAPSHOT_TIMEOUT),
            lock: lock(DEFAULT_CUT_LOCK),
        },
        ConsistencyMode::FsyncLock => Capture::FsyncLock {
            lock: lock(DEFAULT_COPY_LOCK),
        },
        ConsistencyMode::StoppedMember => Capture::StoppedMember {
            why: StoppedWhy::Chosen,
        },
        ConsistencyMode::LegacyNone => Capture::StoppedMember {
            why: StoppedWhy::LegacyNone,
        },
    }
}

/// A timeout of the spec (`volumeSnapshotTimeout`, `placement.pendingTimeout`) as a duration:
/// a number of seconds, minutes or hours.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse_duration(s, &['s', 'm', 'h']).map(Duration::from_secs)
}

/// The default of `placement.runTimeout`.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The activeDeadlineSeconds of the job's agent pods: `placement.runTimeout` (validated
/// before any pod is built; an unreadable value falls back to the default).
pub fn run_deadline_seconds(job: &crate::api::backup_job::BackupJob) -> i64 {
    let limit = placement_timeout(job, |p| p.run_timeout.as_deref(), DEFAULT_RUN_TIMEOUT);
    i64::try_from(limit.as_secs()).unwrap_or(i64::MAX).max(1)
}

/// A timeout of `spec.placement` (`pick` chooses which), or `default` when it is not set or
/// does not parse (validation reports that before any pod is built).
pub fn placement_timeout(
    job: &crate::api::backup_job::BackupJob,
    pick: impl Fn(&crate::api::backup_job::Placement) -> Option<&str>,
    default: Duration,
) -> Duration {
    job.spec
        .placement
        .as_ref()
        .and_then(pick)
        .and_then(|t| parse_timeout(t).ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;

    fn source(yaml: &str) -> MongoSource {
        fixtures::job(yaml).spec.source
    }

    #[test]
    fn defaults_follow_the_connection_and_an_absent_field_is_not_consistent() {
        let base = "source: {statefulSetName: rs0, dataVolumeName: data, syncSource: {mode: member, member: rs0-0}";
        let unset = capture(&source(&format!("{base}}}")));
        assert_eq!(
            unset,
            Capture::StoppedMember {
                why: StoppedWhy::Unset
            }
        );
        assert!(!unset.is_consistent());
        assert!(
            unset
                .explanation()
                .starts_with("spec.source.consistency is not set")
        );
        let vs = capture(&source(&format!(
            "{base}, consistency: {{mode: volumeSnapshot, volumeSnapshotClassName: csi}}}}"
        )));
        assert_eq!(
            vs,
            Capture::VolumeSnapshot {
                class: "csi".into(),
                quiesce: Quiesce::None,
                timeout: DEFAULT_VOLUME_SNAPSHOT_TIMEOUT,
                lock: LockSpec {
                    max_lock: DEFAULT_CUT_LOCK,
                    allow_primary: false
                }
            }
        );
        let with_conn = capture(&source(&format!(
            "{base}, connection: {{authMechanism: NONE}}, consistency: {{mode: volumeSnapshot, volumeSnapshotClassName: csi, volumeSnapshotTimeout: 90s}}}}"
        )));
        assert!(matches!(
            with_conn,
            Capture::VolumeSnapshot {
                quiesce: Quiesce::FsyncLock,
                timeout,
                ..
            } if timeout == Duration::from_secs(90)
        ));
        let legacy = capture(&source(&format!("{base}, consistency: {{mode: none}}}}")));
        assert_eq!(
            legacy,
            Capture::StoppedMember {
                why: StoppedWhy::LegacyNone
            }
        );
        assert!(legacy.explanation().contains("the old name"));
        assert_eq!(vs.lock(), None, "quiesce none takes no lock");
        assert_eq!(with_conn.lock().map(|l| l.max_lock), Some(DEFAULT_CUT_LOCK));
        let copy = capture(&source(&format!(
            "{base}, connection: {{authMechanism: NONE}}, consistency: {{mode: fsyncLock}}}}"
        )));
        assert_eq!(
            copy.lock(),
            Some(LockSpec {
                max_lock: DEFAULT_COPY_LOCK,
                allow_primary: false
            })
        );
        let short = capture(&source(&format!(
            "{base}, connection: {{authMechanism: NONE}}, consistency: {{mode: fsyncLock, maxLockSeconds: 2, allowPrimary: true}}}}"
        )));
        assert_eq!(
            short.lock(),
            Some(LockSpec {
                max_lock: Duration::from_secs(2),
                allow_primary: true
            })
        );
    }
}
