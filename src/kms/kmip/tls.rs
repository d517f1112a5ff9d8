//! Mutual TLS for KMIP: the CA that signs the server's certificate, the client's certificate
//! and key (PEM), TLS 1.3 and 1.2 through rustls with the aws-lc-rs provider.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::error::KmipError;

/// PEM material for a KMIP connection. Debug never shows the private key.
#[derive(Clone, Default)]
pub struct TlsMaterial {
    /// One or more CA certificates the server's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// The client certificate (optionally followed by its chain). KMIP servers require one.
    pub client_cert_pem: Option<Vec<u8>>,
    /// The client's private key (PKCS#8, PKCS#1 or SEC1).
    pub client_key_pem: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("client_cert", &self.client_cert_pem.is_some())
            .field("client_key", &self.client_key_pem.is_some())
            .finish()
    }
}

impl TlsMaterial {
    /// Read the CA file and, if given, the client certificate and key files.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, KmipError> {
        let read = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|e| {
                KmipError::Config(format!("cannot read the {what} file {}: {e}", p.display()))
            })
        };
        Ok(Self {
            ca_pem: read("KMIP CA certificate", ca)?,
            client_cert_pem: cert
                .map(|p| read("KMIP client certificate", p))
                .transpose()?,
            client_key_pem: key
                .map(|p| read("KMIP client key", p).map(Zeroizing::new))
                .transpose()?,
        })
    }

    /// A rustls client configuration: server verified against the CA, client authenticated
    /// by its certificate. Errors name the file content that is wrong.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, KmipError> {
        let cfg = |m: String| KmipError::Config(m);
        let mut roots = rustls::RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| cfg(format!("the KMIP CA file is not PEM: {e}")))?;
        if cas.is_empty() {
            return Err(cfg(
                "the KMIP CA file holds no certificate (expected PEM \"BEGIN CERTIFICATE\")".into(),
            ));
        }
        for ca in cas {
            roots.add(ca).map_err(|e| {
                cfg(format!(
                    "the KMIP CA file holds an unusable certificate: {e}"
                ))
            })?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| cfg(format!("TLS set-up: {e}")))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        cfg(format!("the KMIP client certificate file is not PEM: {e}"))
                    })?;
                if chain.is_empty() {
                    return Err(cfg(
                        "the KMIP client certificate file holds no certificate".into()
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                    cfg(format!(
                        "the KMIP client key file holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"
                    ))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    cfg(format!(
                        "the KMIP client certificate and key do not go together: {e}"
                    ))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(cfg(
                    "a KMIP client certificate was given without its key (--kmip-key)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(cfg(
                    "a KMIP client key was given without its certificate (--kmip-cert)".into(),
                ));
            }
        };
        Ok(Arc::new(config))
    }
}

/// A TLS failure in words a user can act on: the rustls error and what it most likely means.
pub fn describe_io_error(e: &std::io::Error, server_name: &str) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "the server closed the connection (it may have refused our client certificate, or does not speak TLS here)".into()
            }
            _ => e.to_string(),
        };
    };
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let hint = match tls {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the server's certificate is not signed by a CA in the configured KMIP CA file (--kmip-ca)".to_string()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "the server's certificate is not issued for {server_name:?}: connect by the name in its certificate or set --kmip-server-name"
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired".into()
        }
        E::AlertReceived(
            A::HandshakeFailure
            | A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::AccessDenied,
        ) => "the server refused the handshake: it did not accept our client certificate (missing, or not signed by a CA it trusts: check --kmip-cert and --kmip-key)".into(),
        E::AlertReceived(A::ProtocolVersion) | E::PeerIncompatible(_) => {
            "the server and this client share no TLS version or cipher suite (this client speaks TLS 1.2 and 1.3, ECDHE with AES-GCM or ChaCha20)".into()
        }
        _ => return format!("TLS error: {tls}"),
    };
    format!("{hint} (TLS error: {tls})")
}
