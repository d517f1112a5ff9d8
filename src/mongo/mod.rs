//! The MongoDB side: the replica set's member pods, what each member says about itself
//! (`hello`), and which member a snapshot copies from.

pub mod client;
pub mod explain;
pub mod hello;
pub mod lock;
pub mod sync_source;
pub mod topology;

pub use client::{AuthMechanism, ConnectionSettings, MemberAddress, ask_members};
pub use hello::HelloReply;
pub use sync_source::{Answer, Choice, MemberReport, NoSyncSource, SyncSourceMode, choose};
pub use topology::{MemberPod, member_pods};
