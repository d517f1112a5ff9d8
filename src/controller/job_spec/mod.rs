//! A BackupJob's spec as every controller reads it: the pure checks ([`validate`]), the cron
//! schedule ([`schedule`]) and the lookup of what it references ([`references`]). Shared by the
//! BackupJob controller (which reports problems) and the agent-run layer (which will not start
//! a pod for a job with problems).

pub mod checks;
pub mod consistency;
pub mod copies;
pub mod member;
pub mod references;
pub mod retention;
pub mod schedule;
pub mod transport;
pub mod validate;
