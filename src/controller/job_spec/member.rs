//! The BackupJob's MongoDB settings in the words of `crate::mongo`, which knows no custom
//! resource (the API types stay a leaf, and mongo/ below the controllers). Pure.

use crate::api::backup_job::{AuthMechanism, SyncSourceMode};
use crate::mongo;

/// The spec's `authMechanism` as the MongoDB client takes it.
pub fn auth_mechanism(m: AuthMechanism) -> mongo::AuthMechanism {
    match m {
        AuthMechanism::ScramSha256 => mongo::AuthMechanism::ScramSha256,
        AuthMechanism::ScramSha1 => mongo::AuthMechanism::ScramSha1,
        AuthMechanism::X509 => mongo::AuthMechanism::X509,
        AuthMechanism::Plain => mongo::AuthMechanism::Plain,
        AuthMechanism::None => mongo::AuthMechanism::None,
    }
}

/// The spec's `syncSource.mode` as the member choice takes it.
pub fn sync_source_mode(m: SyncSourceMode) -> mongo::SyncSourceMode {
    match m {
        SyncSourceMode::AnySecondary => mongo::SyncSourceMode::AnySecondary,
        SyncSourceMode::Primary => mongo::SyncSourceMode::Primary,
        SyncSourceMode::Member => mongo::SyncSourceMode::Member,
    }
}
