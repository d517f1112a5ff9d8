//! The MongoDB driver's errors in words a person can act on: what failed, at which address,
//! the likely cause and what to check. The driver's own text (a server selection error carries
//! a debug dump of its topology) goes to the operator's log, never into status or an Event.
//!
//! A failed server selection says nothing structured about why the member could not be
//! reached, so the address is tried once more with a plain TCP connection, whose `io::Error`
//! kind tells refused, unresolvable, unreachable and silent apart.

use std::io::ErrorKind as Io;
use std::time::Duration;

use mongodb::error::{Error as DriverError, ErrorKind};

/// How long the TCP probe after a failed connection may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a command was sent, for the words.
#[derive(Clone, Copy, Debug)]
pub struct Address<'a> {
    pub host: &'a str,
    pub port: u16,
}

impl std::fmt::Display for Address<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What a failed command came to: the driver's error, or no reply within `waited`.
pub enum Failure<'a> {
    Driver(&'a DriverError),
    NoReply { waited: Duration },
}

/// One line for `failure` of a command sent to `at`: the cause, then what to check (the
/// caller names the member and its address). Logs the driver's own text.
pub async fn explain(at: Address<'_>, failure: Failure<'_>) -> String {
    if let Failure::Driver(e) = &failure {
        tracing::info!(address = %at, error = %e, "MongoDB driver error");
        if let Some(words) = without_probe(&e.kind) {
            return words;
        }
    }
    let probe = tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::net::TcpStream::connect((at.host, at.port)),
    )
    .await;
    match probe {
        Ok(Ok(_)) => match failure {
            Failure::NoReply { waited } => format!(
                "the port accepts connections but mongod did not reply within {} s; is it starting up, overloaded, or fsyncLocked by someone else?",
                waited.as_secs()
            ),
            Failure::Driver(_) => "the port accepts connections but the MongoDB handshake failed; check spec.source.connection.tls (a server that requires TLS, or a CA that did not issue its certificate) and that mongod listens there".into(),
        },
        Ok(Err(e)) => unreachable_words(at, &e),
        Err(_) => format!(
            "no answer within {} s; is the member's pod running, and does a NetworkPolicy let the operator reach port {}?",
            PROBE_TIMEOUT.as_secs(),
            at.port
        ),
    }
}

/// One line for a driver that could not be set up for `at` (no command was sent). Logs the
/// driver's own text.
pub fn setup_failure(at: Address<'_>, e: &DriverError) -> String {
    tracing::info!(address = %at, error = %e, "MongoDB driver error");
    without_probe(&e.kind).unwrap_or_else(|| {
        format!("the MongoDB client for {at} could not be set up: check spec.source.connection (the operator's log has the driver's words)")
    })
}

/// The words for driver errors that say enough by themselves.
fn without_probe(kind: &ErrorKind) -> Option<String> {
    Some(match kind {
        ErrorKind::Authentication { .. } => "authentication failed: check the user and password (or certificate) in the Secret named by spec.source.connection, its authMechanism and authSource".into(),
        ErrorKind::Command(c) => match c.code {
            // Unauthorized
            13 => "the user is not authorized for the command (Unauthorized): grant it the backup role (it includes fsync and fsyncUnlock) or name a user that has it in the connection Secret".into(),
            _ => format!("mongod refused the command: {} ({})", short(&c.message), c.code_name),
        },
        ErrorKind::DnsResolve { .. } => {
            "the member's host name does not resolve: is its pod and headless Service there?".into()
        }
        ErrorKind::InvalidTlsConfig { .. } => "the TLS settings cannot be used: check the CA and the client certificate and key in the Secrets named by spec.source.connection.tls".into(),
        ErrorKind::Io(e) if e.kind() == Io::InvalidData => {
            "the TLS handshake failed: check spec.source.connection.tls (its CA must have issued the member's certificate)".into()
        }
        _ => return None,
    })
}

/// Why a TCP connection to `at` failed, and what to check.
fn unreachable_words(at: Address<'_>, e: &std::io::Error) -> String {
    match e.kind() {
        Io::ConnectionRefused => format!(
            "connection refused; is mongod running, and is spec.source.connection.port ({}) right?",
            at.port
        ),
        Io::HostUnreachable | Io::NetworkUnreachable => {
            "unreachable from the operator; is the member's pod running on a node that is up?"
                .into()
        }
        _ if e.raw_os_error().is_none() => {
            "the host name does not resolve; is the member's pod and its Service there?".into()
        }
        _ => format!("cannot connect: {}", short(&e.to_string())),
    }
}

/// The first line of a server's message, without the driver's additions or the command
/// document a server may quote.
fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    let line = line.split([',', '{']).next().unwrap_or(line);
    line.trim().trim_end_matches(':').trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a command to 127.0.0.1:`port` that got no reply in 5 s comes to.
    async fn no_reply_at(port: u16) -> String {
        let at = Address {
            host: "127.0.0.1",
            port,
        };
        let waited = Duration::from_secs(5);
        explain(at, Failure::NoReply { waited }).await
    }

    /// #29: a member with nothing listening: "connection refused", the address and the field
    /// to check, and none of the driver's topology dump.
    #[tokio::test]
    async fn a_closed_port_is_connection_refused_with_the_field_to_check() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let words = no_reply_at(port).await;
        assert_eq!(
            words,
            format!(
                "connection refused; is mongod running, and is spec.source.connection.port ({port}) right?"
            )
        );
    }

    #[tokio::test]
    async fn a_listener_that_never_replies_is_named_as_such() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let words = no_reply_at(port).await;
        assert!(
            words.starts_with("the port accepts connections but mongod did not reply within 5 s"),
            "{words}"
        );
    }

    #[test]
    fn a_server_message_loses_the_drivers_additions() {
        assert_eq!(
            short("not authorized on admin to execute command { fsync: 1 }, labels: {\"X\"}\nmore"),
            "not authorized on admin to execute command"
        );
    }
}
