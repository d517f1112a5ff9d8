//! The KMIP client: mutual TLS to the first endpoint that answers, one request at a time on
//! a kept connection, reopened with failover when it breaks. The typed operations are in
//! `operations.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use zeroize::Zeroizing;

use super::error::{EndpointFailure, FailureStage, KmipError, OperationFailure};
use super::messages;
use super::tags;
use super::tls::{TlsMaterial, describe_io_error};
use super::ttlv::{self, HEADER_LEN, Ttlv};
use super::types::{Operation, ProtocolVersion, ResultStatus};

/// The IANA port of KMIP over TLS, used when an endpoint names none.
pub const DEFAULT_PORT: u16 = 5696;
/// Connect, handshake and per-request timeout unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach a KMIP server.
#[derive(Clone, Debug)]
pub struct KmipConfig {
    /// `HOST:PORT` (or `[IPv6]:PORT`; the port defaults to 5696), tried in this order.
    pub endpoints: Vec<String>,
    /// The name the server certificate must carry; defaults to each endpoint's host.
    pub server_name: Option<String>,
    pub tls: TlsMaterial,
    pub version: ProtocolVersion,
    /// Bounds the TCP connect, the TLS handshake and each request, separately.
    pub timeout: Duration,
}

impl KmipConfig {
    /// A configuration with the default version (1.4) and timeout.
    pub fn new(endpoints: Vec<String>, tls: TlsMaterial) -> Self {
        Self {
            endpoints,
            server_name: None,
            tls,
            version: ProtocolVersion::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn parse_endpoint(s: &str) -> Result<Endpoint, KmipError> {
    let bad = |why: &str| {
        KmipError::Config(format!(
            "KMIP endpoint {s:?}: {why} (expected HOST:PORT, for example kmip.example.com:5696)"
        ))
    };
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => return Err(bad("an IPv6 address must be written in brackets")),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
        None => DEFAULT_PORT,
    };
    Ok(Endpoint {
        host: host.to_owned(),
        port,
    })
}

struct Connection {
    stream: TlsStream<TcpStream>,
    endpoint: String,
}

/// What the server is, from DiscoverVersions and Query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// The endpoint that answered.
    pub endpoint: String,
    /// Vendor Identification, if the server gives one.
    pub vendor: Option<String>,
    /// Text of Server Information (vendor-defined), if any.
    pub server_information: Vec<String>,
    /// Protocol versions the server speaks, its preference first.
    pub versions: Vec<ProtocolVersion>,
    /// Operations the server says it supports.
    pub operations: Vec<Operation>,
}

/// A KMIP client. Cheap to share behind an `Arc`; requests are serialised on one
/// connection, which is reopened (with failover) when it breaks.
pub struct KmipClient {
    endpoints: Vec<Endpoint>,
    server_name: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    version: ProtocolVersion,
    timeout: Duration,
    conn: Mutex<Option<Connection>>,
    answered: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for KmipClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipClient")
            .field("endpoints", &self.endpoints())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl KmipClient {
    /// Check the configuration and build the TLS set-up. Does not connect: the first request
    /// does.
    pub fn new(config: KmipConfig) -> Result<Self, KmipError> {
        if config.endpoints.is_empty() {
            return Err(KmipError::Config(
                "no KMIP endpoint given (--kmip-endpoint HOST:PORT)".into(),
            ));
        }
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(name) = &config.server_name {
            ServerName::try_from(name.clone()).map_err(|_| {
                KmipError::Config(format!(
                    "KMIP server name {name:?} is not a DNS name or IP address"
                ))
            })?;
        }
        if config.timeout.is_zero() {
            return Err(KmipError::Config(
                "the KMIP timeout must be positive".into(),
            ));
        }
        Ok(Self {
            endpoints,
            server_name: config.server_name,
            tls: config.tls.client_config()?,
            version: config.version,
            timeout: config.timeout,
            conn: Mutex::new(None),
            answered: std::sync::Mutex::new(None),
        })
    }

    /// The protocol version this client sends.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The endpoint that answered last (after failover, not necessarily the first).
    pub fn answered_by(&self) -> Option<String> {
        self.answered.lock().ok().and_then(|g| g.clone())
    }

    /// The configured endpoints, in failover order.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(ToString::to_string).collect()
    }

    /// Connect to the first endpoint that accepts TCP and completes the TLS handshake.
    async fn connect(&self) -> Result<Connection, KmipError> {
        let mut attempts = Vec::new();
        for ep in &self.endpoints {
            match self.connect_one(ep).await {
                Ok(stream) => {
                    let endpoint = ep.to_string();
                    if !attempts.is_empty() {
                        tracing::warn!(%endpoint, failed = ?attempts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "KMIP: earlier endpoints failed, using a later one");
                    }
                    if let Ok(mut g) = self.answered.lock() {
                        *g = Some(endpoint.clone());
                    }
                    return Ok(Connection { stream, endpoint });
                }
                Err(f) => {
                    tracing::debug!(endpoint = %f.endpoint, detail = %f.detail, "KMIP endpoint failed");
                    attempts.push(f);
                }
            }
        }
        Err(KmipError::Unreachable { attempts })
    }

    async fn connect_one(&self, ep: &Endpoint) -> Result<TlsStream<TcpStream>, EndpointFailure> {
        let fail = |stage, detail: String| EndpointFailure {
            endpoint: ep.to_string(),
            stage,
            detail,
        };
        let secs = self.timeout.as_secs_f32();
        let tcp = match tokio::time::timeout(
            self.timeout,
            TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(fail(FailureStage::Connect, e.to_string())),
            Err(_) => {
                return Err(fail(
                    FailureStage::Connect,
                    format!("no answer within {secs} s"),
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        let name = self.server_name.clone().unwrap_or_else(|| ep.host.clone());
        let server_name = ServerName::try_from(name.clone()).map_err(|_| {
            fail(
                FailureStage::Tls,
                format!("{name:?} is not a DNS name or IP address for TLS"),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        match tokio::time::timeout(self.timeout, connector.connect(server_name, tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(fail(FailureStage::Tls, describe_io_error(&e, &name))),
            Err(_) => Err(fail(
                FailureStage::Tls,
                format!("handshake not finished within {secs} s"),
            )),
        }
    }

    /// Send one operation and return its response payload (an empty structure if the server
    /// sent none). A server refusal becomes [`KmipError::Operation`].
    pub async fn call(
        &self,
        op: Operation,
        object: Option<&str>,
        payload: Vec<Ttlv>,
    ) -> Result<Ttlv, KmipError> {
        let request = messages::request(self.version, op, payload).encode();
        let (endpoint, response) = self.exchange(op, &request).await?;
        let malformed = |source| KmipError::Malformed {
            endpoint: endpoint.clone(),
            operation: op,
            source,
        };
        let protocol = |detail: String| KmipError::Protocol {
            endpoint: endpoint.clone(),
            operation: op,
            detail,
        };
        let msg = ttlv::decode(&response).map_err(malformed)?;
        let item = messages::parse_response(msg).map_err(protocol)?;
        if let Some(answered) = item.operation
            && answered != op
        {
            return Err(protocol(format!("the answer is for {answered}")));
        }
        tracing::debug!(operation = %op, status = %item.status, %endpoint, "KMIP response");
        if item.status != ResultStatus::Success {
            return Err(KmipError::Operation(Box::new(OperationFailure {
                endpoint,
                operation: op,
                version: self.version,
                object: object.map(str::to_owned),
                status: item.status,
                reason: item.reason,
                message: item.message,
            })));
        }
        Ok(item
            .payload
            .unwrap_or_else(|| Ttlv::structure(tags::RESPONSE_PAYLOAD, vec![])))
    }

    /// Write a request and read the whole response, on the kept connection if there is one.
    async fn exchange(
        &self,
        op: Operation,
        request: &[u8],
    ) -> Result<(String, Zeroizing<Vec<u8>>), KmipError> {
        let mut guard = self.conn.lock().await;
        // A non-idempotent request must not be resent, so it never risks a stale connection.
        if !op.is_idempotent() {
            *guard = None;
        }
        let mut reused = guard.is_some();
        loop {
            let conn = match guard.as_mut() {
                Some(c) => c,
                None => guard.insert(self.connect().await?),
            };
            let endpoint = conn.endpoint.clone();
            let result = tokio::time::timeout(self.timeout, round_trip(conn, request)).await;
            let err = match result {
                Ok(Ok(bytes)) => return Ok((endpoint, bytes)),
                Ok(Err(e)) => e,
                Err(_) => RoundTripError {
                    answered: true,
                    detail: format!("no complete answer within {} s", self.timeout.as_secs_f32()),
                },
            };
            *guard = None;
            // A kept connection the server closed while idle: resend once on a new one.
            if reused && !err.answered && op.is_idempotent() {
                tracing::debug!(%endpoint, detail = %err.detail, "KMIP: kept connection dead, reconnecting");
                reused = false;
                continue;
            }
            return Err(KmipError::Transport {
                endpoint,
                operation: op,
                detail: err.detail,
            });
        }
    }
}

struct RoundTripError {
    /// Whether any byte of an answer arrived (then the request was surely processed).
    answered: bool,
    detail: String,
}

async fn round_trip(
    conn: &mut Connection,
    request: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RoundTripError> {
    let name = conn.endpoint.clone();
    let io = |answered: bool| {
        let name = name.clone();
        move |e: std::io::Error| RoundTripError {
            answered,
            detail: if answered && e.kind() == std::io::ErrorKind::UnexpectedEof {
                "the server closed the connection in the middle of its answer".into()
            } else {
                describe_io_error(&e, &name)
            },
        }
    };
    conn.stream.write_all(request).await.map_err(io(false))?;
    conn.stream.flush().await.map_err(io(false))?;
    let mut header = [0u8; HEADER_LEN];
    let first = conn.stream.read(&mut header).await.map_err(io(false))?;
    if first == 0 {
        return Err(RoundTripError {
            answered: false,
            detail: "the server closed the connection without answering".into(),
        });
    }
    conn.stream
        .read_exact(&mut header[first..])
        .await
        .map_err(io(true))?;
    let tag = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    if tag != tags::RESPONSE_MESSAGE || header[3] != 0x01 {
        return Err(RoundTripError {
            answered: true,
            detail: format!(
                "the answer does not start with a KMIP Response Message (tag {tag:06X}, type {:#04x}): is this a KMIP server?",
                header[3]
            ),
        });
    }
    let (_, _, len) = ttlv::message_len(&header).map_err(|e| RoundTripError {
        answered: true,
        detail: e.to_string(),
    })?;
    let mut buf = Zeroizing::new(vec![0u8; HEADER_LEN + len]);
    buf[..HEADER_LEN].copy_from_slice(&header);
    conn.stream
        .read_exact(&mut buf[HEADER_LEN..])
        .await
        .map_err(io(true))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let ep = |s| parse_endpoint(s).map(|e| e.to_string());
        assert_eq!(ep("kmip.example:5697").unwrap(), "kmip.example:5697");
        assert_eq!(ep("kmip.example").unwrap(), "kmip.example:5696");
        assert_eq!(ep("[::1]:7000").unwrap(), "[::1]:7000");
        assert_eq!(ep("[::1]").unwrap(), "[::1]:5696");
        assert!(ep("::1").unwrap_err().to_string().contains("brackets"));
        assert!(ep("h:0").unwrap_err().to_string().contains("1 to 65535"));
        assert!(ep(":80").unwrap_err().to_string().contains("no host"));
        assert!(ep("h:x").unwrap_err().to_string().contains("HOST:PORT"));
    }
}
