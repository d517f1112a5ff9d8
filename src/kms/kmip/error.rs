//! What can go wrong talking to a KMIP server, each written for the person who must fix it.

use std::fmt;

use super::ttlv::DecodeError;
use super::types::{Operation, ProtocolVersion, ResultReason, ResultStatus};

/// An error of the KMIP client. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KmipError {
    /// The configuration cannot work (bad endpoint, unreadable or invalid PEM file, …).
    #[error("KMIP configuration: {0}")]
    Config(String),
    /// No endpoint could be connected to and TLS-handshaken with.
    #[error("{}", unreachable_text(.attempts))]
    Unreachable { attempts: Vec<EndpointFailure> },
    /// A connection broke or timed out in the middle of a request.
    #[error("KMIP {operation} on {endpoint}: {detail}")]
    Transport {
        endpoint: String,
        operation: Operation,
        detail: String,
    },
    /// The server's answer is not well-formed TTLV.
    #[error("KMIP {operation} on {endpoint}: malformed response: {source}")]
    Malformed {
        endpoint: String,
        operation: Operation,
        #[source]
        source: DecodeError,
    },
    /// The answer is well-formed TTLV but not the KMIP message expected.
    #[error("KMIP {operation} on {endpoint}: unexpected response: {detail}")]
    Protocol {
        endpoint: String,
        operation: Operation,
        detail: String,
    },
    /// Keys of the configured name exist but none can wrap new data keys.
    #[error(
        "KMIP keys named {name:?} exist but none is Active ({}): pass --kmip-key-id with the key to use, or activate one on the server",
        found.iter().map(|(id, s)| format!("{id}: {s}")).collect::<Vec<_>>().join(", ")
    )]
    NoActiveKey {
        name: String,
        /// Each key's id and State.
        found: Vec<(String, String)>,
    },
    /// The server answered and refused: its result status, reason and message.
    #[error("{0}")]
    Operation(Box<OperationFailure>),
}

impl KmipError {
    /// The server's result reason, when the server refused the operation.
    pub fn result_reason(&self) -> Option<ResultReason> {
        match self {
            KmipError::Operation(f) => f.reason,
            _ => None,
        }
    }
    /// Whether the server said it does not implement the operation.
    pub fn is_not_supported(&self) -> bool {
        matches!(
            self.result_reason(),
            Some(ResultReason::OperationNotSupported | ResultReason::FeatureNotSupported)
        )
    }
}

/// One endpoint that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFailure {
    pub endpoint: String,
    pub stage: FailureStage,
    pub detail: String,
}

/// Where connecting to an endpoint failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureStage {
    /// TCP connect (refused, unreachable, DNS) or its timeout.
    Connect,
    /// The TLS handshake (certificates, versions, cipher suites) or its timeout.
    Tls,
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.stage {
            FailureStage::Connect => "connect",
            FailureStage::Tls => "TLS handshake",
        };
        write!(f, "{}: {stage} failed: {}", self.endpoint, self.detail)
    }
}

fn unreachable_text(attempts: &[EndpointFailure]) -> String {
    let mut s = format!(
        "no KMIP server could be reached ({} endpoint{} tried, in order)",
        attempts.len(),
        if attempts.len() == 1 { "" } else { "s" }
    );
    for a in attempts {
        s.push_str("; ");
        s.push_str(&a.to_string());
    }
    s
}

/// The server's refusal of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationFailure {
    pub endpoint: String,
    pub operation: Operation,
    pub version: ProtocolVersion,
    /// The object the request named, if any.
    pub object: Option<String>,
    pub status: ResultStatus,
    pub reason: Option<ResultReason>,
    pub message: Option<String>,
}

impl fmt::Display for OperationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KMIP server {} refused {}",
            self.endpoint, self.operation
        )?;
        if let Some(o) = &self.object {
            write!(f, " of object {o:?}")?;
        }
        write!(f, " (KMIP {}): {}", self.version, self.status)?;
        if let Some(r) = self.reason {
            write!(f, " / {r}")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m:?}")?;
        }
        if let Some(hint) = self.hint() {
            write!(f, ". {hint}")?;
        }
        Ok(())
    }
}

impl OperationFailure {
    /// What to do next, for the reasons a user can meet.
    fn hint(&self) -> Option<String> {
        let op = self.operation;
        Some(match self.reason? {
            ResultReason::OperationNotSupported
                if matches!(op, Operation::Encrypt | Operation::Decrypt)
                    && self.version < ProtocolVersion::V1_2 =>
            {
                format!(
                    "{op} exists from KMIP 1.2 on; use KMIP 1.4 (--kmip-version 1.4) for server-side AES-GCM"
                )
            }
            ResultReason::OperationNotSupported | ResultReason::FeatureNotSupported => {
                format!("This server does not support {op}")
            }
            ResultReason::ItemNotFound => {
                "No such object on this server (check the key id), or it is not visible to this client certificate".into()
            }
            ResultReason::PermissionDenied => {
                "The client certificate may not use this object, or the key is not in a state that allows this operation (for example not Active)".into()
            }
            ResultReason::AuthenticationNotSuccessful => {
                "The server did not accept the client certificate as a KMIP identity (is it issued for client authentication, by a CA the server trusts?)".into()
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_failure_text_carries_status_reason_message_and_hint() {
        let e = KmipError::Operation(Box::new(OperationFailure {
            endpoint: "kmip.example:5696".into(),
            operation: Operation::ReKey,
            version: ProtocolVersion::V1_4,
            object: Some("1".into()),
            status: ResultStatus::OperationFailed,
            reason: Some(ResultReason::OperationNotSupported),
            message: Some("Rekey operation is not supported by the server.".into()),
        }));
        let s = e.to_string();
        assert!(
            s.contains("refused ReKey of object \"1\" (KMIP 1.4)"),
            "{s}"
        );
        assert!(
            s.contains("Operation Failed / Operation Not Supported"),
            "{s}"
        );
        assert!(s.contains("Rekey operation is not supported"), "{s}");
        assert!(s.contains("does not support ReKey"), "{s}");
        assert!(e.is_not_supported());
    }

    #[test]
    fn unreachable_lists_every_endpoint() {
        let e = KmipError::Unreachable {
            attempts: vec![
                EndpointFailure {
                    endpoint: "a:1".into(),
                    stage: FailureStage::Connect,
                    detail: "connection refused".into(),
                },
                EndpointFailure {
                    endpoint: "b:2".into(),
                    stage: FailureStage::Tls,
                    detail: "bad cert".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "no KMIP server could be reached (2 endpoints tried, in order); \
             a:1: connect failed: connection refused; b:2: TLS handshake failed: bad cert"
        );
    }
}
