//! Which replica-set member a snapshot copies from: a pure choice over what each member said.

use super::hello::HelloReply;

/// Which member to copy (the controller maps the BackupJob's `syncSource.mode` to it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncSourceMode {
    /// Any secondary, the least lagging one first.
    #[default]
    AnySecondary,
    /// The primary.
    Primary,
    /// One named member.
    Member,
}

/// What was learnt about one member pod.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberReport {
    /// The member's pod.
    pub pod: String,
    /// The node the pod runs on.
    pub node: Option<String>,
    /// Its `hello` reply, or why there is none.
    pub answer: Answer,
    /// `secondaryDelaySecs` from the replica set config, when it could be read.
    pub delay_secs: Option<i64>,
}

/// A member's answer to `hello`.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// No connection is configured, so nobody asked.
    NotAsked,
    /// It replied.
    Replied(HelloReply),
    /// It could not be reached or refused (the driver's message).
    Failed(String),
}

/// The member chosen, its role and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub pod: String,
    pub node: Option<String>,
    /// PRIMARY, SECONDARY, or UNKNOWN when MongoDB was not asked.
    pub role: String,
    pub reason: String,
}

/// Why no member can be used; the message is written for the person reading the Snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoSyncSource {
    #[error("no member pods found for spec.source")]
    NoMembers,
    #[error("spec.source.syncSource.member {member:?}: no such member pod (members: {members})")]
    NoSuchMember { member: String, members: String },
    #[error("spec.source.syncSource.member {member:?} is an arbiter, which holds no data")]
    MemberIsArbiter { member: String },
    #[error(
        "spec.source.syncSource.mode {mode} needs spec.source.connection to ask the members which is which; without a connection only mode member works"
    )]
    NeedsConnection { mode: &'static str },
    #[error("no member is eligible for spec.source.syncSource.mode {mode}: {why}")]
    NoneEligible { mode: &'static str, why: String },
}

fn mode_name(mode: SyncSourceMode) -> &'static str {
    match mode {
        SyncSourceMode::AnySecondary => "anySecondary",
        SyncSourceMode::Primary => "primary",
        SyncSourceMode::Member => "member",
    }
}

/// Why a member is not an eligible secondary, or None if it is one.
fn not_eligible_secondary(m: &MemberReport) -> Option<String> {
    match &m.answer {
        Answer::NotAsked => Some("not asked".into()),
        Answer::Failed(e) => Some(format!("no answer ({e})")),
        Answer::Replied(h) => {
            if h.arbiter {
                Some("arbiter".into())
            } else if h.primary {
                Some("primary".into())
            } else if !h.secondary {
                Some("not healthy (neither primary nor secondary)".into())
            } else if let Some(d) = m.delay_secs.filter(|d| *d > 0) {
                Some(format!("delayed by {d} s"))
            } else if h.hidden {
                Some("hidden".into())
            } else {
                None
            }
        }
    }
}

/// Choose the member to copy from. `member` is `spec.source.syncSource.member` (mode member).
pub fn choose(
    mode: SyncSourceMode,
    member: Option<&str>,
    reports: &[MemberReport],
) -> Result<Choice, NoSyncSource> {
    if reports.is_empty() {
        return Err(NoSyncSource::NoMembers);
    }
    let asked = reports.iter().any(|m| m.answer != Answer::NotAsked);
    match mode {
        SyncSourceMode::Member => choose_member(member.unwrap_or_default(), reports),
        _ if !asked => Err(NoSyncSource::NeedsConnection {
            mode: mode_name(mode),
        }),
        SyncSourceMode::Primary => choose_primary(reports),
        SyncSourceMode::AnySecondary => choose_secondary(reports),
    }
}

fn choose_member(name: &str, reports: &[MemberReport]) -> Result<Choice, NoSyncSource> {
    let Some(m) = reports.iter().find(|m| m.pod == name) else {
        return Err(NoSyncSource::NoSuchMember {
            member: name.into(),
            members: reports
                .iter()
                .map(|m| m.pod.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let (role, reason) = match &m.answer {
        Answer::NotAsked => (
            "UNKNOWN".to_string(),
            "named in spec.source.syncSource.member (no connection configured, role not checked)"
                .to_string(),
        ),
        Answer::Failed(e) => (
            "UNKNOWN".to_string(),
            format!("named in spec.source.syncSource.member (it did not answer hello: {e})"),
        ),
        Answer::Replied(h) if h.arbiter => {
            return Err(NoSyncSource::MemberIsArbiter {
                member: name.into(),
            });
        }
        Answer::Replied(h) => (
            h.role().to_string(),
            format!("named in spec.source.syncSource.member; it is {}", h.role()),
        ),
    };
    Ok(Choice {
        pod: m.pod.clone(),
        node: m.node.clone(),
        role,
        reason,
    })
}

fn choose_primary(reports: &[MemberReport]) -> Result<Choice, NoSyncSource> {
    // During an election two members may briefly both claim to be primary: take the one with
    // the newest write, which is the one clients now write to.
    let primary = reports
        .iter()
        .filter_map(|m| match &m.answer {
            Answer::Replied(h) if h.primary => Some((m, h)),
            _ => None,
        })
        .max_by(|a, b| {
            a.1.last_write
                .cmp(&b.1.last_write)
                .then(b.0.pod.cmp(&a.0.pod))
        });
    match primary {
        Some((m, _)) => Ok(Choice {
            pod: m.pod.clone(),
            node: m.node.clone(),
            role: "PRIMARY".into(),
            reason: "spec.source.syncSource.mode primary: the current primary".into(),
        }),
        None => Err(NoSyncSource::NoneEligible {
            mode: "primary",
            why: format!("no member says it is primary ({})", roles(reports)),
        }),
    }
}

fn choose_secondary(reports: &[MemberReport]) -> Result<Choice, NoSyncSource> {
    // Lag is measured against the newest write any member has seen (the primary's, normally).
    let newest = reports
        .iter()
        .filter_map(|m| match &m.answer {
            Answer::Replied(h) => h.last_write,
            _ => None,
        })
        .max();
    let lag = |h: &HelloReply| match (newest, h.last_write) {
        (Some(n), Some(w)) => Some(n.duration_since(w).as_secs().max(0)),
        _ => None,
    };
    let mut eligible: Vec<(&MemberReport, Option<i64>)> = reports
        .iter()
        .filter(|m| not_eligible_secondary(m).is_none())
        .filter_map(|m| match &m.answer {
            Answer::Replied(h) => Some((m, lag(h))),
            _ => None,
        })
        .collect();
    // Least lag first; a member whose lag is unknown comes last; ties by pod name.
    eligible.sort_by(|a, b| (a.1.is_none(), a.1, &a.0.pod).cmp(&(b.1.is_none(), b.1, &b.0.pod)));
    let count = eligible.len();
    match eligible.first() {
        Some((m, lag)) => {
            let lag = lag
                .map(|s| format!("{s} s behind the newest write"))
                .unwrap_or_else(|| "lag unknown".into());
            Ok(Choice {
                pod: m.pod.clone(),
                node: m.node.clone(),
                role: "SECONDARY".into(),
                reason: format!(
                    "spec.source.syncSource.mode anySecondary: the healthy, visible, undelayed secondary with the least lag ({lag}; {count} of {} members eligible)",
                    reports.len()
                ),
            })
        }
        None => Err(NoSyncSource::NoneEligible {
            mode: "anySecondary",
            why: reports
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m.pod,
                        not_eligible_secondary(m).unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

fn roles(reports: &[MemberReport]) -> String {
    reports
        .iter()
        .map(|m| {
            let role = match &m.answer {
                Answer::Replied(h) => h.role().to_string(),
                Answer::Failed(e) => format!("no answer ({e})"),
                Answer::NotAsked => "not asked".into(),
            };
            format!("{}: {role}", m.pod)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::super::hello::fixtures::hello;
    use super::*;

    fn member(pod: &str, fixture: Option<&str>, delay: i64) -> MemberReport {
        MemberReport {
            pod: pod.into(),
            node: Some(format!("node-{pod}")),
            answer: match fixture {
                Some("unreachable") => Answer::Failed("connection refused".into()),
                Some(f) => Answer::Replied(hello(f)),
                None => Answer::NotAsked,
            },
            delay_secs: Some(delay),
        }
    }

    /// A replica set of every kind of member, in the order MongoDB lists them.
    fn zoo() -> Vec<MemberReport> {
        vec![
            member("rs0-0", Some("primary"), 0),
            member("rs0-1", Some("secondary"), 0),
            member("rs0-2", Some("secondary-lagging"), 0),
            member("rs0-3", Some("secondary-hidden"), 0),
            member("rs0-4", Some("secondary-delayed"), 3600),
            member("rs0-5", Some("recovering"), 0),
            member("rs0-6", Some("arbiter"), 0),
            member("rs0-7", Some("unreachable"), 0),
        ]
    }

    fn pick(mode: SyncSourceMode, name: Option<&str>, set: &[MemberReport]) -> String {
        match choose(mode, name, set) {
            Ok(c) => format!("{} {}", c.pod, c.role),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn table() {
        use SyncSourceMode::*;
        let all = zoo();
        let only = |names: &[&str]| -> Vec<MemberReport> {
            zoo()
                .into_iter()
                .filter(|m| names.contains(&m.pod.as_str()))
                .collect()
        };
        type Case<'a> = (
            &'a str,
            SyncSourceMode,
            Option<&'a str>,
            Vec<MemberReport>,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "least lag wins",
                AnySecondary,
                None,
                all.clone(),
                "rs0-1 SECONDARY",
            ),
            (
                "a lagging secondary beats none",
                AnySecondary,
                None,
                only(&["rs0-0", "rs0-2", "rs0-3"]),
                "rs0-2 SECONDARY",
            ),
            (
                "hidden, delayed, arbiter, recovering, unreachable are never chosen",
                AnySecondary,
                None,
                only(&["rs0-0", "rs0-3", "rs0-4", "rs0-5", "rs0-6", "rs0-7"]),
                "error: no member is eligible for spec.source.syncSource.mode anySecondary: rs0-0: primary; rs0-3: hidden; rs0-4: delayed by 3600 s; rs0-5: not healthy (neither primary nor secondary); rs0-6: arbiter; rs0-7: no answer (connection refused)",
            ),
            ("primary mode", Primary, None, all.clone(), "rs0-0 PRIMARY"),
            (
                "primary mode without a primary",
                Primary,
                None,
                only(&["rs0-1", "rs0-7"]),
                "error: no member is eligible for spec.source.syncSource.mode primary: no member says it is primary (rs0-1: SECONDARY; rs0-7: no answer (connection refused))",
            ),
            (
                "named member",
                Member,
                Some("rs0-3"),
                all.clone(),
                "rs0-3 SECONDARY",
            ),
            (
                "named member that does not answer is still used",
                Member,
                Some("rs0-7"),
                all.clone(),
                "rs0-7 UNKNOWN",
            ),
            (
                "named arbiter",
                Member,
                Some("rs0-6"),
                all.clone(),
                "error: spec.source.syncSource.member \"rs0-6\" is an arbiter, which holds no data",
            ),
            (
                "named member missing",
                Member,
                Some("rs0-9"),
                only(&["rs0-0", "rs0-1"]),
                "error: spec.source.syncSource.member \"rs0-9\": no such member pod (members: rs0-0, rs0-1)",
            ),
            (
                "no connection: member mode works",
                Member,
                Some("a"),
                vec![member("a", None, 0), member("b", None, 0)],
                "a UNKNOWN",
            ),
            (
                "no connection: anySecondary cannot work",
                AnySecondary,
                None,
                vec![member("a", None, 0)],
                "error: spec.source.syncSource.mode anySecondary needs spec.source.connection to ask the members which is which; without a connection only mode member works",
            ),
            (
                "no pods",
                AnySecondary,
                None,
                vec![],
                "error: no member pods found for spec.source",
            ),
        ];
        for (what, mode, name, set, want) in cases {
            assert_eq!(pick(mode, name, &set), want, "{what}");
        }
    }

    #[test]
    fn the_reason_says_how_far_behind() {
        let c = choose(SyncSourceMode::AnySecondary, None, &zoo()).expect("a choice");
        assert_eq!(c.node.as_deref(), Some("node-rs0-1"));
        assert!(
            c.reason
                .contains("1 s behind the newest write; 2 of 8 members eligible"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn a_delay_alone_disqualifies_even_when_not_hidden() {
        let set = vec![
            member("a", Some("secondary"), 600),
            member("b", Some("secondary-lagging"), 0),
        ];
        assert_eq!(
            pick(SyncSourceMode::AnySecondary, None, &set),
            "b SECONDARY"
        );
    }
}
