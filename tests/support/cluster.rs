//! End-to-end test support: the cluster that `KUBECONFIG` points at (the local test ground that
//! `./tests/run` starts, see tests/README.md, or any conformant cluster), the CRDs of `crds/`,
//! a namespace per test, ServiceAccount clients and waits with deadlines. Real nodes are
//! `real_nodes.rs`.
//!
//! ```ignore
//! let Some(cluster) = cluster_or_skip().await else { return };
//! cluster.apply_crds().await;
//! let ns = cluster.namespace("status").await;           // deleted when `ns` is dropped
//! let jobs: Api<BackupJob> = ns.api();
//! ```
//!
//! Every wait has a deadline and polls or watches the API: nothing sleeps to synchronise.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use kube::{Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The one field manager the tests write with (server-side apply, status included).
pub const FIELD_MANAGER: &str = "snapcrypt-e2e";
/// Default deadline of a wait: generous for a loaded 2-core CI machine, short enough to fail
/// a hung test well inside CI's limit.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Label on everything the e2e tests create at cluster scope (namespaces).
pub const E2E_LABEL: &str = "snapcrypt.dev/e2e";

// ------------------------------------------------------------------------------------------
// The cluster

/// An admin connection to the cluster under test.
pub struct Cluster {
    /// Admin client (the test ground's admin is system:masters).
    pub client: Client,
    config: Config,
    kubeconfig: PathBuf,
    version: Info,
}

/// The cluster `KUBECONFIG` names, or `None` after printing "skipped: no cluster (run
/// ./tests/run)" when it is unset. Under CI (`CI` set) a missing `KUBECONFIG` is a failure:
/// CI must run the e2e tests.
///
/// `let Some(cluster) = cluster_or_skip().await else { return };`
pub async fn cluster_or_skip() -> Option<Cluster> {
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) else {
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!(
                "CI is set but KUBECONFIG is not: CI must run the end-to-end tests against a \
                 cluster. Run the tests through ./tests/run, which builds and starts the test \
                 cluster (tests/cluster/) and exports KUBECONFIG."
            );
        }
        println!("skipped: no cluster (run ./tests/run)");
        return None;
    };
    // KUBECONFIG may be a list; the tests' helper scripts take one file: the first.
    let first = std::env::split_paths(&kubeconfig)
        .next()
        .unwrap_or_default();
    Some(Cluster::connect(first).await)
}

impl Cluster {
    async fn connect(kubeconfig: PathBuf) -> Cluster {
        let shown = kubeconfig.display();
        let config = Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("cannot load the kubeconfig {shown} (KUBECONFIG): {e}"));
        let client = Client::try_from(config.clone())
            .unwrap_or_else(|e| panic!("cannot build a client from {shown}: {e}"));
        let version =
            match tokio::time::timeout(Duration::from_secs(20), client.apiserver_version()).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => panic!(
                    "the API server of {shown} ({}) does not answer: {e}. Is the cluster running? \
                 (./tests/run starts it; tests/cluster/status.sh says how it is)",
                    config.cluster_url
                ),
                Err(_) => panic!(
                    "the API server of {shown} ({}) gave no answer within 20 s",
                    config.cluster_url
                ),
            };
        Cluster {
            client,
            config,
            kubeconfig,
            version,
        }
    }

    /// The API server's version (`/version`).
    pub fn version(&self) -> &Info {
        &self.version
    }

    /// `(major, minor)` of the API server, e.g. `(1, 20)`; minors like `20+` are read as 20.
    pub fn version_number(&self) -> (u32, u32) {
        let num = |s: &str| {
            s.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or(0)
        };
        (num(&self.version.major), num(&self.version.minor))
    }

    /// Whether the CRD schema type of this API server has `x-kubernetes-validations` (CEL
    /// rules): added in 1.23 (enforced from 1.25). Older servers, like the 1.20 test ground,
    /// drop the field on create and update, and refuse it in server-side apply.
    pub fn knows_crd_validation_rules(&self) -> bool {
        self.version_number() >= (1, 23)
    }

    /// The kubeconfig file the cluster was reached through.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client that authenticates with `token` (and trusts the admin config's CA).
    pub fn client_with_token(&self, token: &str, default_namespace: &str) -> Client {
        let mut config = Config::new(self.config.cluster_url.clone());
        config.root_cert = self.config.root_cert.clone();
        config.root_cert_file = self.config.root_cert_file.clone();
        config.tls_server_name = self.config.tls_server_name.clone();
        config.accept_invalid_certs = self.config.accept_invalid_certs;
        config.default_namespace = default_namespace.to_string();
        config.auth_info = AuthInfo {
            token: Some(secrecy::SecretString::from(token.to_string())),
            ..AuthInfo::default()
        };
        Client::try_from(config).expect("client with a bearer token")
    }

    /// A kubeconfig file at `path` like the admin's, but authenticating with `token`: for
    /// running a process (the operator) as a ServiceAccount.
    pub fn write_token_kubeconfig(&self, token: &str, path: &Path) {
        let text = std::fs::read_to_string(self.kubeconfig()).expect("admin kubeconfig");
        let mut cfg: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
        let user = serde_yaml::from_str::<serde_yaml::Value>(&format!(
            "[{{name: token-user, user: {{token: {token}}}}}]"
        ))
        .expect("user");
        cfg["users"] = user;
        if let Some(contexts) = cfg["contexts"].as_sequence_mut() {
            for c in contexts {
                c["context"]["user"] = serde_yaml::Value::from("token-user");
            }
        }
        std::fs::write(path, serde_yaml::to_string(&cfg).expect("YAML")).expect("write kubeconfig");
    }

    /// Creates ServiceAccount `namespace/name` (if needed), gets a one-hour token for it through
    /// the TokenRequest API, and returns a client that acts as that ServiceAccount: RBAC
    /// applies to it exactly as to a pod running under it.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Client {
        let token = self.service_account_token(namespace, name).await;
        self.client_with_token(&token, namespace)
    }

    /// Creates ServiceAccount `namespace/name` if needed and returns a fresh token of it.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        accounts
            .patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&sa))
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {namespace}/{name}: {e}"));
        // Ready for pods too, so that tests can run pods under it.
        self.wait_for_service_account(namespace, name).await;
        let request = TokenRequest {
            metadata: ObjectMeta::default(),
            // No audiences: the API server's own.
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            status: None,
        };
        let answer = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for ServiceAccount {namespace}/{name}: {e}"));
        answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("TokenRequest for {namespace}/{name} returned no token"))
    }

    /// Applies every CRD in `crds/` (server-side apply, field manager `snapcrypt-e2e`) and waits
    /// until each is Established. Once per test process; later calls return at once.
    ///
    /// Through the API, not kubectl: kubectl's client-side validation refuses
    /// `x-kubernetes-validations` against a 1.20 server. On servers older than 1.23 the rules
    /// are stripped before applying (see [`Cluster::crd_for_this_server`]).
    pub async fn apply_crds(&self) {
        static APPLIED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        APPLIED.get_or_init(|| self.apply_crds_now()).await;
    }

    /// Apply the CRDs now, even if this process applied them before (to a cluster since
    /// lost and rebuilt).
    pub async fn apply_crds_now(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut names = Vec::new();
        for (file, crd) in crd_manifests() {
            let crd = self.crd_for_this_server(crd);
            let name = crd["metadata"]["name"].as_str().unwrap().to_string();
            crds.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("the API server refused crds/{file}: {e}"));
            names.push(name);
        }
        for name in names {
            wait_for(&crds, &name, "the CRD to be Established", DEADLINE, |crd| {
                crd_condition(crd, "Established") == Some("True")
            })
            .await;
        }
    }

    /// `crd` as server-side apply on this server takes it. Before 1.23 the CRD schema type has
    /// no `x-kubernetes-validations`: server-side apply refuses the field ("field not declared
    /// in schema") while create and update drop it silently. Stripping it stores exactly what a
    /// create stores there. The rules are tested in tests/api_schema.rs.
    pub fn crd_for_this_server(&self, mut crd: Value) -> Value {
        if !self.knows_crd_validation_rules() {
            remove_key_everywhere(&mut crd, "x-kubernetes-validations");
        }
        crd
    }

    /// A new namespace for one test, named `e2e-<purpose>-<unique>`, with its `default`
    /// ServiceAccount ready for pods (see [`Cluster::wait_for_service_account`]). Deleted when dropped (kept if
    /// the test failed and `SNAPCRYPT_E2E_KEEP_NAMESPACES=1`).
    pub async fn namespace(&self, purpose: &str) -> TestNamespace {
        self.namespace_named(&unique_name("e2e", purpose)).await
    }

    /// [`Cluster::namespace`] with the name given: the same namespace again, in a cluster
    /// rebuilt after the first was lost.
    pub async fn namespace_named(&self, name: &str) -> TestNamespace {
        let name = name.to_string();
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {E2E_LABEL: "true"}},
        });
        namespaces
            .create(&PostParams::default(), &serde_json::from_value(ns).unwrap())
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let guard = TestNamespace {
            name: name.clone(),
            client: self.client.clone(),
            config: self.config.clone(),
        };
        self.wait_for_service_account(&name, "default").await;
        guard
    }

    /// Waits until pods can run under ServiceAccount `namespace/name`: it exists and, before
    /// 1.24, has its token Secret (the ServiceAccount admission plugin of those versions
    /// refuses pods until the token controller has made it: "No API token found").
    pub async fn wait_for_service_account(&self, namespace: &str, name: &str) -> ServiceAccount {
        let needs_secret = self.version_number() < (1, 24);
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        wait_for(
            &accounts,
            name,
            "the ServiceAccount (and its token Secret before 1.24)",
            DEADLINE,
            |sa| !needs_secret || sa.secrets.as_ref().is_some_and(|s| !s.is_empty()),
        )
        .await
    }
}

/// The CRDs of `crds/` as JSON, with their file names, in file-name order.
pub fn crd_manifests() -> Vec<(String, Value)> {
    manifests_in(&super::repo_root().join("crds"))
        .into_iter()
        .map(|(file, _, v)| (file, v))
        .collect()
}

/// Every YAML document in the `*.yaml` files of `dir`: `(file name, index in file, document)`,
/// in file-name order, empty documents skipped.
pub fn manifests_in(dir: &Path) -> Vec<(String, usize, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}: document {i} is not valid YAML: {e}"));
            if !value.is_null() {
                out.push((file.clone(), i, value));
            }
        }
    }
    out
}

/// The `status` of condition `type_` of a CRD, if it has one.
pub fn crd_condition<'a>(crd: &'a CustomResourceDefinition, type_: &str) -> Option<&'a str> {
    crd.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

fn remove_key_everywhere(v: &mut Value, key: &str) {
    match v {
        Value::Object(map) => {
            map.remove(key);
            map.values_mut()
                .for_each(|child| remove_key_everywhere(child, key));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|child| remove_key_everywhere(child, key)),
        _ => {}
    }
}

/// `<prefix>-<purpose>-<unique>`: a DNS label (at most 63 characters) unique on this machine
/// over time (process id, a counter, the clock).
pub fn unique_name(prefix: &str, purpose: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 0x100_0000;
    let suffix = format!("{:x}{n:x}{clock:x}", std::process::id());
    let purpose: String = purpose
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let room = 63 - prefix.len() - suffix.len() - 2;
    let purpose = purpose[..purpose.len().min(room)].trim_matches('-');
    format!("{prefix}-{purpose}-{suffix}")
}

// ------------------------------------------------------------------------------------------
// A namespace per test

/// A namespace that lives as long as this value: dropped, it is deleted (the API server
/// finishes the deletion in the background).
pub struct TestNamespace {
    name: String,
    client: Client,
    config: Config,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// An admin `Api` of `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking()
            && std::env::var("SNAPCRYPT_E2E_KEEP_NAMESPACES").is_ok_and(|v| v == "1")
        {
            eprintln!("keeping namespace {} of the failed test", self.name);
            return;
        }
        // Drop cannot await, and the test's runtime may be the current-thread one that is
        // running this drop: delete from a thread with its own runtime and client.
        let (name, config) = (self.name.clone(), self.config.clone());
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let client = Client::try_from(config).map_err(|e| e.to_string())?;
                let namespaces: Api<Namespace> = Api::all(client);
                let params = DeleteParams::background();
                let delete = namespaces.delete(&name, &params);
                match tokio::time::timeout(Duration::from_secs(20), delete).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer within 20 s".to_string()),
                }
            })
        })
        .join();
        if let Ok(Err(e)) | Err(e) = deleted.map_err(|_| "panicked".to_string()) {
            eprintln!(
                "warning: could not delete test namespace {}: {e}",
                self.name
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Waiting with deadlines

/// Watches `name` through `api` until `cond` holds for it, and returns it. Panics after
/// `deadline`, saying what was awaited and showing the object as last seen.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    deadline: Duration,
    cond: impl Fn(&K) -> bool,
) -> K
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
    try_wait_for(api, name, what, deadline, cond)
        .await
        .unwrap_or_else(|timed_out| panic!("{timed_out}"))
}

/// [`wait_for`] that returns the timeout message instead of panicking, so that the caller
/// can add what it knows (pod logs, for example).
pub async fn try_wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    deadline: Duration,
    cond: impl Fn(&K) -> bool,
) -> Result<K, String>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
    let mut last: Option<K> = None;
    let mut last_error: Option<String> = None;
    let watch = async {
        let mut stream = std::pin::pin!(watch_object(api.clone(), name).default_backoff());
        while let Some(event) = stream.next().await {
            match event {
                Ok(Some(obj)) => {
                    // #29: every message the tests read is words, never a debug dump.
                    if let Ok(v) = serde_json::to_value(&obj) {
                        super::plain::assert_status_plain(
                            &format!("{}/{name}", api.resource_url()),
                            &v,
                        );
                    }
                    if cond(&obj) {
                        return obj;
                    }
                    last = Some(obj);
                }
                Ok(None) => last = None,
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        unreachable!("a watcher stream does not end")
    };
    match tokio::time::timeout(deadline, watch).await {
        Ok(obj) => Ok(obj),
        Err(_) => Err(format!(
            "timed out after {deadline:?} waiting for {what}: {}/{name}\nlast seen: {}{}",
            api.resource_url(),
            last.map(|o| serde_yaml::to_string(&o).unwrap())
                .unwrap_or_else(|| "(does not exist)".to_string()),
            last_error
                .map(|e| format!("\nlast watch error: {e}"))
                .unwrap_or_default(),
        )),
    }
}

/// Watches `name` through `api` until it no longer exists. Panics after `deadline`.
pub async fn wait_for_deletion<K>(api: &Api<K>, name: &str, deadline: Duration)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let gone = async {
        let mut stream = std::pin::pin!(watch_object(api.clone(), name).default_backoff());
        while let Some(event) = stream.next().await {
            if let Ok(None) = event {
                return;
            }
        }
    };
    if tokio::time::timeout(deadline, gone).await.is_err() {
        panic!(
            "timed out after {deadline:?} waiting for {}/{name} to be deleted",
            api.resource_url()
        );
    }
}

/// Polls `attempt` until it returns `Ok`, and returns that value. Panics after `deadline` with
/// `what` and the last error. For things no watch can show (an RBAC decision, a file); the
/// pause between attempts only paces the polling.
pub async fn eventually<T, E, Fut>(
    what: &str,
    deadline: Duration,
    mut attempt: impl FnMut() -> Fut,
) -> T
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut last = String::from("(no attempt finished)");
    loop {
        let remaining = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(remaining, attempt()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => last = e.to_string(),
            // The deadline fell inside an attempt: the previous one's error says more.
            Err(_) => {}
        };
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}; last error: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The HTTP status code of an API error, if `result` is one.
pub fn api_error_code<T>(result: &kube::Result<T>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

/// The API resource of a snapcrypt kind by its name.
pub fn api_resource(kind: &str) -> kube::api::ApiResource {
    use snapcrypt::api::{BackupJob, KmipServer, Restore, Snapshot};
    match kind {
        "KmipServer" => kube::api::ApiResource::erase::<KmipServer>(&()),
        "BackupJob" => kube::api::ApiResource::erase::<BackupJob>(&()),
        "Snapshot" => kube::api::ApiResource::erase::<Snapshot>(&()),
        "Restore" => kube::api::ApiResource::erase::<Restore>(&()),
        other => panic!("not a snapcrypt kind: {other}"),
    }
}
