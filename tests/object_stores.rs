//! A repository in each object store snapcrypt speaks, against a real server of it on
//! loopback: S3 (s3s-fs, which checks signatures), Google Cloud Storage (fake-gcs-server) and
//! Azure Blob Storage (Azurite, Microsoft's emulator, which checks Shared Key signatures). The
//! same run on each: two backups started at once into a new repository (both create it: one
//! config, conditional writes), bit-exact restores, `verify --read-data`, prune, and damage
//! done through the store's own API named by verify.
//!
//! The servers are installed by .ci/install-deps.sh (tests/services/README.md).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
use support::cli::{backup_args, repo_args};
use support::{Env, assert_same_tree, fails, make_source, ok, restore, snapshot_ids};

/// A server of one kind, its environment for snapcrypt, and a raw client of the same bucket.
struct Server {
    _guard: Box<dyn std::any::Any>,
    env: Vec<(&'static str, String)>,
    /// `SCHEME://BUCKET`.
    base: String,
    raw: Arc<dyn ObjectStore>,
}

impl Server {
    fn s3(state: &Path) -> Self {
        let s = support::s3::S3Server::start(state, "backups");
        let env = s.env();
        let raw = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("backups")
            .with_endpoint(format!("http://127.0.0.1:{}", s.port))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(support::s3::ACCESS_KEY)
            .with_secret_access_key(support::s3::SECRET_KEY)
            .build()
            .unwrap();
        Server::of(s, env, "s3://backups", raw)
    }

    fn gcs(state: &Path) -> Self {
        let s = support::gcs::FakeGcs::start(state, "backups");
        let env = s.env();
        let mut b = object_store::gcp::GoogleCloudStorageBuilder::new().with_bucket_name("backups");
        for (key, v) in config_of(&env) {
            b = b.with_config(key, v);
        }
        let raw = b.with_client_options(http_allowed()).build().unwrap();
        Server::of(s, env, "gs://backups", raw)
    }

    fn azure(state: &Path) -> Self {
        let s = support::azurite::Azurite::start(state, "backups");
        let env = s.env();
        let mut b =
            object_store::azure::MicrosoftAzureBuilder::new().with_container_name("backups");
        for (key, v) in config_of(&env) {
            b = b.with_config(key, v);
        }
        let raw = b.with_client_options(http_allowed()).build().unwrap();
        Server::of(s, env, "az://backups", raw)
    }

    fn of(
        guard: impl std::any::Any,
        env: Vec<(&'static str, String)>,
        base: &str,
        raw: impl ObjectStore,
    ) -> Self {
        Server {
            _guard: Box::new(guard),
            env,
            base: base.into(),
            raw: Arc::new(raw),
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// The names under `prefix` (relative to the bucket).
    fn names(&self, prefix: &str) -> Vec<String> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            use futures::TryStreamExt;
            let mut names: Vec<String> = self
                .raw
                .list(Some(&ObjPath::from(prefix)))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap();
            names.sort();
            names
        })
    }

    /// Flip one byte in the middle of object `name`, through the store's API.
    fn flip(&self, name: &str) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let path = ObjPath::from(name);
            let mut data = self
                .raw
                .get(&path)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec();
            let i = data.len() / 2;
            data[i] ^= 0x01;
            self.raw.put(&path, PutPayload::from(data)).await.unwrap();
        })
    }

    fn delete(&self, name: &str) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(self.raw.delete(&ObjPath::from(name))).unwrap();
    }
}

/// The environment snapcrypt gets, as a store builder's configuration (the keys object_store
/// reads from the environment, lower-cased, are its configuration keys).
fn config_of<K: std::str::FromStr>(env: &[(&'static str, String)]) -> Vec<(K, String)> {
    env.iter()
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase().parse().ok()?, v.clone())))
        .collect()
}

fn http_allowed() -> object_store::ClientOptions {
    object_store::ClientOptions::new().with_allow_http(true)
}

/// Two backups of different sources started at once into a repository neither has seen.
fn concurrent_backups(server: &Server, repo: &str, key: &str, sources: [&str; 2]) {
    let children: Vec<_> = sources
        .iter()
        .map(|src| {
            let mut cmd = Command::new(support::bin());
            cmd.args(backup_args(src, repo, key, &[]))
                .env_remove("SNAPCRYPT_REPO")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for (k, v) in server.env() {
                cmd.env(k, v);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent backup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn exercise(server: Server) {
    let e = Env::new();
    let env = server.env();
    let (src, other, key) = (e.p("src"), e.p("other"), e.key());
    make_source(Path::new(&other));
    std::fs::write(Path::new(&other).join("collection-7-1.wt"), b"only here").unwrap();
    // The key file, from a first backup elsewhere (the two below must not both create it).
    ok(&backup_args(&src, &e.p("local"), &key, &[]), &[]);
    let repo = format!("{}/mongo/rs0", server.base);
    concurrent_backups(&server, &repo, &key, [&src, &other]);
    let configs: Vec<String> = server
        .names("mongo/rs0")
        .into_iter()
        .filter(|n| n.ends_with("/config"))
        .collect();
    assert_eq!(configs, ["mongo/rs0/config"], "one config, not two");
    let ids = snapshot_ids(&repo, &key, &env);
    assert_eq!(ids.len(), 2, "{ids:?}");
    // Each snapshot restores bit-exact to its own source.
    let mut restored = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let out = e.p(&format!("out-{n}"));
        restore(&repo, &key, id, &out, &env);
        let from = if Path::new(&out).join("collection-7-1.wt").exists() {
            &other
        } else {
            &src
        };
        assert_same_tree(Path::new(from), Path::new(&out));
        restored.push(from.clone());
    }
    assert_ne!(restored[0], restored[1], "both snapshots are of one source");
    ok(&repo_args(&["verify"], &repo, &key, &["--read-data"]), &env);
    // Prune keeps the newest and deletes what only the other needed, now.
    let packs_before = server.names("mongo/rs0/data").len();
    ok(
        &repo_args(
            &["prune"],
            &repo,
            &key,
            &["--keep-last", "1", "--delete-after", "0s"],
        ),
        &env,
    );
    let kept = snapshot_ids(&repo, &key, &env);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(server.names("mongo/rs0/data").len() < packs_before);
    ok(&repo_args(&["verify"], &repo, &key, &["--read-data"]), &env);
    restore(&repo, &key, &kept[0], &e.p("kept"), &env);
    // Damage done through the store's API: verify names each object.
    let data = server.names("mongo/rs0/data");
    let index = server.names("mongo/rs0/index");
    server.flip(&data[0]);
    server.delete(&index[index.len() - 1]);
    let err = fails(&repo_args(&["verify"], &repo, &key, &["--read-data"]), &env);
    for name in [&data[0], &index[index.len() - 1]] {
        let id = name.rsplit('/').next().unwrap();
        assert!(err.contains(id), "{name} not named: {err}");
    }
}

#[test]
fn s3_repository_against_s3s_fs() {
    let e = tempfile::tempdir().unwrap();
    exercise(Server::s3(&e.path().join("s3")));
}

#[test]
fn gcs_repository_against_fake_gcs_server() {
    let e = tempfile::tempdir().unwrap();
    exercise(Server::gcs(&e.path().join("gcs")));
}

#[test]
fn azure_repository_against_azurite() {
    let e = tempfile::tempdir().unwrap();
    exercise(Server::azure(&e.path().join("azure")));
}

/// #29: a store's failures reach the user as words naming the endpoint and what to check, not
/// object_store's "Generic S3 error: … error sending request": a port nobody listens on, a
/// wrong secret key (the real S3 server's SignatureDoesNotMatch), https to a store speaking
/// http.
#[test]
fn store_failures_are_words_naming_the_endpoint_and_what_to_check() {
    let e = tempfile::tempdir().unwrap();
    let s = support::s3::S3Server::start(&e.path().join("s3"), "backups");
    let key = e.path().join("key.json").display().to_string();
    support::ok(&["key", "new", "--out", &key], &[]);
    let closed = support::free_port();
    let good = s.env();
    let with = |changes: &[(&'static str, String)]| -> String {
        let mut env: Vec<(&str, String)> = good.iter().map(|(k, v)| (*k, v.clone())).collect();
        env.push(("SNAPCRYPT_STORE_RETRIES", "0".into()));
        env.push(("AWS_ALLOW_HTTP", "true".into()));
        for (k, v) in changes {
            env.retain(|(name, _)| name != k);
            env.push((k, v.clone()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let args = repo_args(&["snapshots"], "s3://backups/r", &key, &["--s3-path-style"]);
        let err = support::fails(&args, &env);
        support::plain::assert_plain("snapcrypt's error", &err);
        assert!(!err.contains("error sending request"), "{err}");
        err
    };
    let refused = with(&[("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))]);
    assert!(
        refused.contains(&format!(
            "connection refused at http://127.0.0.1:{closed}: check the repository's endpoint"
        )),
        "{refused}"
    );
    let wrong = with(&[("AWS_SECRET_ACCESS_KEY", "not-the-secret".into())]);
    assert!(
        wrong.contains("the secret key does not match the access key id"),
        "{wrong}"
    );
    let tls = with(&[("AWS_ENDPOINT_URL", format!("https://127.0.0.1:{}", s.port))]);
    assert!(tls.contains("the TLS handshake with the store"), "{tls}");
}
