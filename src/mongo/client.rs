//! Asking the members: one direct connection per member pod (the official driver), `hello`, and
//! `replSetGetConfig` once for the members' delays. Everything a member says goes into a
//! [`MemberReport`]; the choice itself is made by [`super::sync_source::choose`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::{
    AuthMechanism as DriverMechanism, ClientOptions, Credential, ServerAddress, Tls, TlsOptions,
};

use super::explain::{Address, Failure, explain, setup_failure};
use super::hello::{HelloReply, delays_from_config};
use super::sync_source::{Answer, MemberReport};

/// How the operator authenticates to mongod (the controller maps the BackupJob's
/// `authMechanism` to it: this module knows no custom resource).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMechanism {
    #[default]
    ScramSha256,
    ScramSha1,
    /// A client certificate (MONGODB-X509).
    X509,
    /// LDAP through SASL PLAIN.
    Plain,
    None,
}

/// How to reach the members, with the Secrets' contents already read.
#[derive(Clone, Default)]
pub struct ConnectionSettings {
    pub port: u16,
    pub mechanism: AuthMechanism,
    pub auth_source: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Use TLS.
    pub tls: bool,
    /// PEM of the CA that issued the members' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate followed by its key (MONGODB-X509).
    pub client_cert_key_pem: Option<Vec<u8>>,
    /// Time allowed for each member to connect and answer.
    pub timeout: Duration,
}

impl std::fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password or the key.
        f.debug_struct("ConnectionSettings")
            .field("port", &self.port)
            .field("mechanism", &self.mechanism)
            .field("auth_source", &self.auth_source)
            .field("username", &self.username)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A member to ask: pod name, node, and the host to connect to (None: the pod has no address
/// yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAddress {
    pub pod: String,
    pub node: Option<String>,
    pub host: Option<String>,
    /// Port, when not the connection's (test doubles listen on one port per member).
    pub port: Option<u16>,
}

/// The PEM files the driver reads, in a private temporary directory removed on drop.
pub struct TlsFiles {
    dir: Option<tempfile::TempDir>,
    pub ca: Option<PathBuf>,
    pub cert_key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn write(settings: &ConnectionSettings) -> std::io::Result<Self> {
        if settings.ca_pem.is_none() && settings.client_cert_key_pem.is_none() {
            return Ok(TlsFiles {
                dir: None,
                ca: None,
                cert_key: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("snapcrypt-mongo-tls")
            .tempdir()?;
        let put = |name: &str, data: &Option<Vec<u8>>| -> std::io::Result<Option<PathBuf>> {
            match data {
                Some(d) => {
                    let p = dir.path().join(name);
                    write_private(&p, d)?;
                    Ok(Some(p))
                }
                None => Ok(None),
            }
        };
        let ca = put("ca.pem", &settings.ca_pem)?;
        let cert_key = put("client.pem", &settings.client_cert_key_pem)?;
        Ok(TlsFiles {
            dir: Some(dir),
            ca,
            cert_key,
        })
    }

    /// The directory, while it exists.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// Driver options for one direct connection to `host`. Pure apart from naming the files.
pub fn client_options(
    host: &str,
    port: u16,
    s: &ConnectionSettings,
    files: &TlsFiles,
) -> ClientOptions {
    let mechanism = match s.mechanism {
        AuthMechanism::ScramSha256 => Some(DriverMechanism::ScramSha256),
        AuthMechanism::ScramSha1 => Some(DriverMechanism::ScramSha1),
        AuthMechanism::X509 => Some(DriverMechanism::MongoDbX509),
        AuthMechanism::Plain => Some(DriverMechanism::Plain),
        AuthMechanism::None => None,
    };
    let credential = mechanism.map(|m| {
        let external = matches!(m, DriverMechanism::MongoDbX509 | DriverMechanism::Plain);
        let mut c = Credential::default();
        c.source = Some(if external {
            "$external".to_string()
        } else {
            s.auth_source.clone()
        });
        if m != DriverMechanism::MongoDbX509 {
            c.username = s.username.clone();
            c.password = s.password.clone();
        }
        c.mechanism = Some(m);
        c
    });
    let tls = if s.tls {
        let mut t = TlsOptions::default();
        t.ca_file_path = files.ca.clone();
        t.cert_key_file_path = files.cert_key.clone();
        Some(Tls::Enabled(t))
    } else {
        Some(Tls::Disabled)
    };
    let mut o = ClientOptions::default();
    o.hosts = vec![ServerAddress::Tcp {
        host: host.to_string(),
        port: Some(port),
    }];
    o.direct_connection = Some(true);
    o.app_name = Some("snapcrypt-operator".into());
    o.connect_timeout = Some(s.timeout);
    o.server_selection_timeout = Some(s.timeout);
    o.credential = credential;
    o.tls = tls;
    o.max_pool_size = Some(1);
    o
}

/// Ask every member `hello` (concurrently), then one of them `replSetGetConfig` for the delays.
pub async fn ask_members(
    members: &[MemberAddress],
    settings: &ConnectionSettings,
) -> Vec<MemberReport> {
    let files = match TlsFiles::write(settings) {
        Ok(f) => f,
        Err(e) => {
            let msg = format!("cannot write TLS files for the driver: {e}");
            return members
                .iter()
                .map(|m| report(m, Answer::Failed(msg.clone())))
                .collect();
        }
    };
    let answers = futures::future::join_all(members.iter().map(|m| async {
        let Some(host) = m.host.as_deref() else {
            return (Answer::Failed("the pod has no address yet".into()), None);
        };
        match ask_one(host, m.port.unwrap_or(settings.port), settings, &files).await {
            Ok((hello, client)) => (Answer::Replied(hello), Some(client)),
            Err(e) => (Answer::Failed(e), None),
        }
    }))
    .await;
    // Delays are in the replica set config: ask the primary if it answered, else anyone.
    let asker = answers
        .iter()
        .filter_map(|(a, c)| match (a, c) {
            (Answer::Replied(h), Some(c)) => Some((h.primary, c)),
            _ => None,
        })
        .max_by_key(|(primary, _)| *primary)
        .map(|(_, c)| c.clone());
    let delays: Option<BTreeMap<String, i64>> = match asker {
        Some(c) => {
            let admin = c.database("admin");
            let cmd = admin.run_command(doc! {"replSetGetConfig": 1});
            match tokio::time::timeout(settings.timeout, cmd).await {
                Ok(Ok(reply)) => Some(delays_from_config(&reply)),
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "replSetGetConfig refused: member delays unknown");
                    None
                }
                Err(_) => None,
            }
        }
        None => None,
    };
    let mut out = Vec::with_capacity(members.len());
    for (m, (answer, client)) in members.iter().zip(answers) {
        let mut r = report(m, answer);
        if let (Some(d), Answer::Replied(h)) = (&delays, &r.answer) {
            r.delay_secs = h.me.as_ref().and_then(|me| d.get(me).copied()).or(Some(0));
        }
        if let Some(c) = client {
            c.shutdown().await;
        }
        out.push(r);
    }
    out
}

fn report(m: &MemberAddress, answer: Answer) -> MemberReport {
    MemberReport {
        pod: m.pod.clone(),
        node: m.node.clone(),
        answer,
        delay_secs: None,
    }
}

async fn ask_one(
    host: &str,
    port: u16,
    settings: &ConnectionSettings,
    files: &TlsFiles,
) -> Result<(HelloReply, mongodb::Client), String> {
    let at = Address { host, port };
    let opts = client_options(host, port, settings, files);
    let client = mongodb::Client::with_options(opts).map_err(|e| setup_failure(at, &e))?;
    let admin = client.database("admin");
    let cmd = admin.run_command(doc! {"hello": 1});
    let failure = match tokio::time::timeout(settings.timeout + Duration::from_secs(1), cmd).await {
        Ok(Ok(reply)) => return Ok((HelloReply::from_document(&reply), client)),
        Ok(Err(e)) => explain(at, Failure::Driver(&e)).await,
        Err(_) => {
            let waited = settings.timeout;
            explain(at, Failure::NoReply { waited }).await
        }
    };
    Err(format!("mongod at {at}: {failure}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mechanism: AuthMechanism, tls: bool) -> ConnectionSettings {
        ConnectionSettings {
            port: 27017,
            mechanism,
            auth_source: "admin".into(),
            username: Some("backup".into()),
            password: Some("s3cret".into()),
            tls,
            ca_pem: tls.then(|| b"-----BEGIN CERTIFICATE-----\n".to_vec()),
            client_cert_key_pem: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn scram_uses_the_auth_source_and_the_secret() {
        let s = settings(AuthMechanism::ScramSha1, false);
        let o = client_options(
            "rs0-1.rs0.ns.svc.cluster.local",
            27017,
            &s,
            &TlsFiles::write(&s).expect("files"),
        );
        let c = o.credential.expect("credential");
        assert_eq!(c.mechanism, Some(DriverMechanism::ScramSha1));
        assert_eq!(c.source.as_deref(), Some("admin"));
        assert_eq!(c.username.as_deref(), Some("backup"));
        assert_eq!(o.direct_connection, Some(true));
        assert!(matches!(o.tls, Some(Tls::Disabled)));
        assert_eq!(
            o.hosts,
            vec![ServerAddress::Tcp {
                host: "rs0-1.rs0.ns.svc.cluster.local".into(),
                port: Some(27017)
            }]
        );
    }

    #[test]
    fn x509_authenticates_against_external_with_the_certificate_only() {
        let mut s = settings(AuthMechanism::X509, true);
        s.client_cert_key_pem = Some(b"cert+key".to_vec());
        let files = TlsFiles::write(&s).expect("files");
        let o = client_options("h", 27017, &s, &files);
        let c = o.credential.expect("credential");
        assert_eq!(c.mechanism, Some(DriverMechanism::MongoDbX509));
        assert_eq!(c.source.as_deref(), Some("$external"));
        assert_eq!(c.password, None);
        let Some(Tls::Enabled(t)) = o.tls else {
            panic!("TLS is on")
        };
        let cert = t.cert_key_file_path.expect("client cert file");
        assert_eq!(std::fs::read(&cert).expect("written"), b"cert+key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&cert).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let dir = files.dir().expect("dir").to_path_buf();
        drop(files);
        assert!(!dir.exists(), "the PEM files are removed");
    }

    #[test]
    fn plain_uses_external_and_none_sends_no_credential() {
        let s = settings(AuthMechanism::Plain, false);
        let o = client_options("h", 27017, &s, &TlsFiles::write(&s).expect("files"));
        assert_eq!(
            o.credential.expect("credential").source.as_deref(),
            Some("$external")
        );
        let s = settings(AuthMechanism::None, false);
        assert!(
            client_options("h", 27017, &s, &TlsFiles::write(&s).expect("files"))
                .credential
                .is_none()
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let s = settings(AuthMechanism::ScramSha256, false);
        assert!(!format!("{s:?}").contains("s3cret"));
    }
}
