//! Condition and Event reasons as values: each reason carries its severity, and one policy
//! ([`announcements`]) turns condition transitions into Events for every controller. Pure.

/// How a reason is announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Bookkeeping (a condition at rest, or one another condition already announces): no Event.
    Quiet,
    /// Progress: a Normal Event.
    Normal,
    /// Something a user must look at: a Warning Event.
    Warning,
}

/// Declares [`Reason`] with each variant's severity; the wire name is the variant's name.
macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident => $severity:ident,)*) => {
        /// Every condition and Event reason the operator writes.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason { $($(#[$doc])* $name,)* }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The reason as written in conditions and Events (CamelCase).
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$name => stringify!($name),)* }
            }

            pub fn severity(self) -> Severity {
                match self { $(Reason::$name => Severity::$severity,)* }
            }
        }
    };
}

reasons! {
    // Conditions at rest.
    NotFailed => Quiet,
    Finished => Quiet,
    AsExpected => Quiet,
    NotSuspended => Quiet,
    Idle => Quiet,
    /// Ready=False while a pod starts: `PodCreated` on Progressing says it.
    Starting => Quiet,
    /// KmipServer sub-conditions that went well: `Ready` says it.
    Connected => Quiet,
    Authenticated => Quiet,
    Active => Quiet,
    /// CopiesHealthy=True while a copy catches up (a copy pod running) or waits for its
    /// schedule: status.copies[].lag says how far behind.
    CopyRunning => Quiet,
    CopyScheduled => Quiet,

    // Progress.
    Valid => Normal,
    Suspended => Normal,
    SnapshotCreated => Normal,
    SnapshotPending => Normal,
    SnapshotRunning => Normal,
    WaitingForOtherSnapshot => Normal,
    /// Waiting for a Snapshot to succeed before restoring it.
    SnapshotNotReady => Normal,
    /// Waiting for a KmipServer to have an active master key.
    KmipServerNotReady => Normal,
    PodCreated => Normal,
    /// A VolumeSnapshot of the member's data volume was requested; waiting for readyToUse.
    SnapshottingVolume => Normal,
    /// Consistent=True: copied from a VolumeSnapshot (its cut is the point in time).
    VolumeSnapshotCut => Quiet,
    /// Consistent=True: copied while the member was fsyncLocked (mode fsyncLock).
    CopiedUnderLock => Quiet,
    /// Orphaned=True: the Snapshot's BackupJob was deleted (snapshotDeletionPolicy Retain).
    BackupJobDeleted => Normal,
    /// Orphaned=False: a BackupJob of the name adopted the orphaned Snapshot.
    Adopted => Normal,
    /// Consistent=Unknown: the attempt's capture (lock, cut, copy) is under way; it says True
    /// only once the copy has finished from it.
    CaptureUnderWay => Quiet,
    /// Consistent=False: the run ended without a complete copy (nothing to be consistent).
    NotCaptured => Quiet,
    /// The member's writes are being locked (fsyncLock) for the cut or the copy.
    Quiescing => Normal,
    /// The operator released its fsync lock on a member: the Event says for how long writes
    /// were held.
    MemberUnlocked => Normal,
    PodPending => Normal,
    Running => Normal,
    Restoring => Normal,
    Succeeded => Normal,
    Restored => Normal,
    Pruned => Normal,
    ForgottenSnapshotsDeleted => Normal,
    Rewrapping => Normal,
    Rotated => Normal,
    /// The active master key was no longer Active on the server (revoked, deactivated,
    /// destroyed); a new one replaced it.
    KeyReplaced => Warning,
    Ready => Normal,
    /// A scheduled read of part of the repository's data started (a verify pod).
    VerificationStarted => Normal,
    /// DataVerified=True: the last read found no damage.
    DataVerified => Normal,
    /// A copy pod started (spec.copies[]).
    CopyStarted => Normal,
    /// A retention pod started (spec.retention.credentialsSecret).
    RetentionStarted => Normal,
    /// CopiesHealthy=True: every copy holds the job's newest successful Snapshot.
    CopiesCurrent => Normal,
    /// A restore test's Restore was created.
    RestoreTestCreated => Normal,
    /// RestoreTested=True: the last restore test restored, read back and passed its check.
    RestoreTestPassed => Normal,
    /// A Restore's check container is running on the restored volume.
    Checking => Normal,
    /// The scratch claim of a Restore was created, or deleted once it was over.
    ScratchClaimCreated => Normal,
    ScratchClaimDeleted => Normal,
    /// A Snapshot made from what the repository already held (a BackupJob's catalog).
    Imported => Normal,
    /// A BackupJob's catalog read the repository and imported its snapshots.
    CatalogImported => Normal,

    // Problems.
    InvalidSpec => Warning,
    InvalidSchedule => Warning,
    BackupJobNotFound => Warning,
    SnapshotNotFound => Warning,
    StatefulSetNotFound => Warning,
    SecretNotFound => Warning,
    SecretKeyNotFound => Warning,
    PersistentVolumeClaimNotFound => Warning,
    TargetClaimNotFound => Warning,
    /// A Restore's target claim is mounted by a pod that is still running: the restore waits.
    TargetInUse => Warning,
    KmipServerNotFound => Warning,
    NoSyncSource => Warning,
    MemberNotScheduled => Warning,
    NoDataClaim => Warning,
    /// Consistent=False: the files were copied as they are from a running member.
    CopiedLive => Warning,
    /// The snapshotter reported an error for the VolumeSnapshot, or it was not ready in time.
    VolumeSnapshotFailed => Warning,
    /// The cluster serves no snapshot.storage.k8s.io/v1 VolumeSnapshot API.
    VolumeSnapshotsUnavailable => Warning,
    /// The fsync lock could not be taken, or ended before the cut or copy did (maxLockSeconds,
    /// an election, the member lost), or its holder was lost (the operator restarted).
    LockFailed => Warning,
    /// fsyncUnlock failed: the member may still be locked; the operator tries again.
    UnlockFailed => Warning,
    Retrying => Warning,
    SnapshotFailed => Warning,
    LastSnapshotFailed => Warning,
    RestoreFailed => Warning,
    ResultUnreadable => Warning,
    PodLost => Warning,
    PruneFailed => Warning,
    Unreachable => Warning,
    NoCredentials => Warning,
    AuthenticationFailed => Warning,
    KeyUnavailable => Warning,
    /// The KmipServer's active key is not in the KMIP Active state.
    NotActive => Warning,
    /// The KmipServer's active key's state could not be read.
    Unknown => Warning,
    NotReady => Warning,
    /// DataVerified=False: the last read found damaged or missing objects (named).
    DataDamaged => Warning,
    /// DataVerified=False: the last read could not finish.
    VerificationFailed => Warning,
    /// RestoreTested=False: the last restore test failed (restore, read-back or check).
    RestoreTestFailed => Warning,
    /// A due restore test could not be created: no size for its scratch claim is known.
    RestoreTestNotStarted => Warning,
    /// A Restore's check container failed: its message says why.
    CheckFailed => Warning,
    /// CopiesHealthy=False: a copy's last run failed (its message says why; it is retried).
    CopyFailed => Warning,
    /// CopiesHealthy=False: a copy cannot start (its Secret, claim or KmipServer is missing).
    CopyBlocked => Warning,
    /// The catalog pod could not read the repository.
    CatalogFailed => Warning,
    /// Another cluster writes the job's snapshots in the repository: this one only reads.
    RepositoryOwnedElsewhere => Warning,
    /// spec.target.scratch names a claim that exists and this Restore did not create.
    ScratchClaimExists => Warning,
}

impl Reason {
    /// Whether this is a referenced object (or a Secret's key) that does not exist yet: a
    /// wait that ends by itself when it is created, not a failure.
    pub fn is_missing_reference(self) -> bool {
        matches!(
            self,
            Reason::SecretNotFound
                | Reason::SecretKeyNotFound
                | Reason::PersistentVolumeClaimNotFound
                | Reason::KmipServerNotFound
                | Reason::StatefulSetNotFound
        )
    }

    /// The reason written as `s`, if the operator writes it.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
            assert!(seen.insert(r.as_str()), "{r} declared twice");
        }
        assert_eq!(Reason::parse("Bogus"), None);
    }
}
