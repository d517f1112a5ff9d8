//! `--kmip-*` options: which KMIP server holds the master key, the mutual-TLS files to reach
//! it, and which master key to use. Flatten [`KmipArgs`] into any subcommand that needs a key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::kms::kmip::{
    DEFAULT_KEY_NAME, KmipClient, KmipConfig, KmipError, KmipKeyManager, ProtocolVersion,
    TlsMaterial, WrapMode,
};

/// The KMIP key server options.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "KMIP key server")]
pub struct KmipArgs {
    /// KMIP server as HOST:PORT (port 5696 if omitted; IPv6 as [ADDR]:PORT). Repeat, or
    /// separate with commas, to give failover servers: they are tried in the order given and
    /// the first that completes the TLS handshake is used. Without this option no KMIP server
    /// is used.
    #[arg(
        long = "kmip-endpoint",
        value_name = "HOST:PORT",
        env = "SNAPCRYPT_KMIP_ENDPOINT",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,

    /// PEM file with the CA certificate(s) that signed the KMIP server's certificate.
    #[arg(long = "kmip-ca", value_name = "FILE", env = "SNAPCRYPT_KMIP_CA")]
    pub ca: Option<PathBuf>,

    /// PEM file with this client's certificate (optionally followed by its chain). KMIP
    /// servers require it and use it as the client's identity: keys created with one
    /// certificate may be invisible to another.
    #[arg(long = "kmip-cert", value_name = "FILE", env = "SNAPCRYPT_KMIP_CERT")]
    pub cert: Option<PathBuf>,

    /// PEM file with the private key of --kmip-cert (PKCS#8, PKCS#1 or SEC1). Keep it
    /// readable by this user only.
    #[arg(long = "kmip-key", value_name = "FILE", env = "SNAPCRYPT_KMIP_KEY")]
    pub key: Option<PathBuf>,

    /// Id of the master key on the KMIP server (its Unique Identifier, for example "1" on
    /// PyKMIP). Without it, the newest Active key named --kmip-key-name is used, and created
    /// (AES-256, then activated) if there is none.
    #[arg(long = "kmip-key-id", value_name = "ID", env = "SNAPCRYPT_KMIP_KEY_ID")]
    pub key_id: Option<String>,

    /// Name of the master key to find or create when --kmip-key-id is not given.
    #[arg(
        long = "kmip-key-name",
        value_name = "NAME",
        default_value = DEFAULT_KEY_NAME,
        env = "SNAPCRYPT_KMIP_KEY_NAME"
    )]
    pub key_name: String,

    /// Name the server's certificate must carry, when it differs from the endpoint's host
    /// (for example when connecting by IP address to a certificate issued for a DNS name).
    #[arg(long = "kmip-server-name", value_name = "NAME")]
    pub server_name: Option<String>,

    /// KMIP protocol version to speak: 1.0, 1.1, 1.2, 1.3 or 1.4. Wrapping on the server
    /// (the default) needs 1.4, the first version that returns the AES-GCM tag.
    #[arg(
        long = "kmip-version",
        id = "kmip_version",
        value_name = "VERSION",
        default_value = "1.4"
    )]
    pub version: ProtocolVersion,

    /// WEAKER MODE: fetch the master key from the server (Get) and wrap data keys in this
    /// process with AES key wrap (RFC 5649), instead of having the server encrypt them with
    /// AES-256-GCM. The master key then leaves the server and sits in this process's memory.
    /// Only for servers without Encrypt/Decrypt.
    #[arg(long = "kmip-local-wrap")]
    pub local_wrap: bool,

    /// Seconds allowed for each of: the TCP connect, the TLS handshake, each KMIP request.
    #[arg(
        long = "kmip-timeout-secs",
        value_name = "SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub timeout_secs: u64,
}

impl KmipArgs {
    /// No server, with the defaults of the flags `copy`'s `--to-` forms do not repeat:
    /// protocol 1.4, wrapping on the server, 10 s timeouts.
    pub fn default_for_copy() -> Self {
        KmipArgs {
            endpoints: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            key_id: None,
            key_name: DEFAULT_KEY_NAME.into(),
            server_name: None,
            version: ProtocolVersion::default(),
            local_wrap: false,
            timeout_secs: 10,
        }
    }

    /// Whether a KMIP server was given (otherwise another key manager is used).
    pub fn configured(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// How data keys are wrapped.
    pub fn wrap_mode(&self) -> WrapMode {
        if self.local_wrap {
            WrapMode::LocalKeyWrap
        } else {
            WrapMode::ServerSide
        }
    }

    /// The client configuration: reads the PEM files. Does not connect.
    pub fn config(&self) -> Result<KmipConfig, KmipError> {
        if !self.configured() {
            return Err(KmipError::Config(
                "no KMIP server given: pass --kmip-endpoint HOST:PORT".into(),
            ));
        }
        let missing = |flag: &str, what: &str| {
            KmipError::Config(format!("--kmip-endpoint needs {flag} FILE ({what}, PEM)"))
        };
        let ca = self
            .ca
            .as_deref()
            .ok_or_else(|| missing("--kmip-ca", "the CA that signed the server's certificate"))?;
        let cert = self
            .cert
            .as_deref()
            .ok_or_else(|| missing("--kmip-cert", "this client's certificate"))?;
        let key = self
            .key
            .as_deref()
            .ok_or_else(|| missing("--kmip-key", "the client certificate's private key"))?;
        Ok(KmipConfig {
            endpoints: self.endpoints.clone(),
            server_name: self.server_name.clone(),
            tls: TlsMaterial::from_files(ca, Some(cert), Some(key))?,
            version: self.version,
            timeout: Duration::from_secs(self.timeout_secs),
        })
    }

    /// The key manager these options describe. With --kmip-key-id it does not contact the
    /// server (the first use does, and `active_key_id` checks the key is Active); without
    /// it, it finds the newest Active key named --kmip-key-name or creates one.
    pub async fn key_manager(&self) -> Result<KmipKeyManager, KmipError> {
        let client = Arc::new(KmipClient::new(self.config()?)?);
        if self.local_wrap {
            tracing::warn!(
                "--kmip-local-wrap: the master key is fetched from the KMIP server and used in this process (weaker than server-side wrapping)"
            );
        }
        match &self.key_id {
            Some(id) => KmipKeyManager::new(client, id.clone(), self.wrap_mode()),
            None => KmipKeyManager::find_or_create(client, &self.key_name, self.wrap_mode())
                .await
                .map(|(km, _created)| km),
        }
    }
}
