//! Tests only: a small in-memory Kubernetes API behind a real `kube::Client`, so that a
//! controller's dereference, execute and whole reconcile run in `cargo test` in milliseconds,
//! without a cluster (as kube-rs's controller-rs tests do with a mocked service).
//!
//! It is a double of the API server, not the API server: objects are JSON kept by kind,
//! namespace and name; it answers get, list (label selectors: `k=v`, `k!=v`, `k`, `!k`),
//! server-side apply (create, or a deep merge into what is there: maps merged, lists and
//! scalars replaced, `null` removes), a JSON merge patch (the same merge; 404 if missing), the status subresource (the same merge into `.status`),
//! create (POST, for Events) and delete (with the uid precondition: 409 when it does not
//! match). It keeps no field ownership, runs no admission and no garbage collection: what
//! those do is tested on the real API server (tests/*_e2e.rs). Every write is logged, so a
//! test can assert what a reconcile wrote and in what order.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use kube::{Client, Resource};
use serde::Serialize;
use serde_json::{Value, json};

/// Where an object lives: the API path of its collection (`api/v1/pods`,
/// `apis/snapcrypt.dev/v1alpha1/snapshots`), its namespace ("" if cluster-scoped), its name.
type Key = (String, String, String);

/// One write the API took, in order: `verb` is apply, status, create, merge or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub verb: &'static str,
    /// The collection's last path segment: `pods`, `snapshots`, `events`.
    pub resource: String,
    pub name: String,
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.verb, self.resource, self.name)
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    writes: Vec<Write>,
    next_uid: u64,
    version: u64,
}

/// The in-memory API; clones share it.
#[derive(Clone, Default)]
pub struct MemoryApi {
    state: Arc<Mutex<State>>,
}

/// A request's path, split: collection, namespace, name, subresource.
struct Route {
    collection: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (format!("api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] => (ns.to_string(), [&[*plural], more].concat()),
        other => (String::new(), other.to_vec()),
    };
    let plural = rest.first()?;
    Some(Route {
        collection: format!("{prefix}/{plural}"),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

/// Whether `labels` match a label selector (equality and existence terms, comma-joined).
fn selected(labels: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let has = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            has(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            has(k.trim_end_matches('=')) == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            has(k).is_none()
        } else {
            has(term).is_some()
        }
    })
}

/// Merge `patch` into `into`: maps key by key, `null` removes, anything else replaces (a JSON
/// merge patch, RFC 7386).
pub fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else if let Some(old) = a.get_mut(k) {
                    merge(old, v);
                } else {
                    a.insert(k.clone(), v.clone());
                }
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> (StatusCode, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    (code, body)
}

fn not_found(key: &Key) -> (StatusCode, Value) {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} {} not found in {:?}", key.0, key.2, key.1),
    )
}

impl MemoryApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// A client whose requests this API answers; its default namespace is `db`.
    pub fn client(&self) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let merge = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/merge-patch"));
                let (code, value) = api.answer(&parts.method, &parts.uri, &bytes, merge);
                let mut res = Response::new(Body::from(value.to_string().into_bytes()));
                *res.status_mut() = code;
                Ok::<_, Infallible>(res)
            }
        });
        Client::new(service, "db")
    }

    /// What a reconcile gets, with [`MemoryApi::client`] and the operator's default settings.
    pub fn context(&self) -> Arc<super::context::Context> {
        Arc::new(super::context::Context::new(
            self.client(),
            Arc::new(super::metrics::Metrics::default()),
            super::context::OperatorConfig::default(),
        ))
    }

    /// Put `obj` in as a user's `kubectl apply` would (a uid if it has none). Returns it as
    /// stored.
    pub fn put<K: Resource<DynamicType = ()> + Serialize>(&self, obj: &K) -> Value {
        let v = serde_json::to_value(obj).unwrap_or_default();
        let key = self.key_of::<K>(&v);
        let mut st = self.lock();
        let stored = st.stamp(v);
        st.objects.insert(key, stored.clone());
        stored
    }

    /// The object of kind K named `name` in namespace `ns`, if there is one.
    pub fn get<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let key = (collection::<K>(), ns.to_string(), name.to_string());
        let v = self.lock().objects.get(&key).cloned()?;
        serde_json::from_value(v).ok()
    }

    /// Every object of kind K in namespace `ns`.
    pub fn list<K>(&self, ns: &str) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let c = collection::<K>();
        self.lock()
            .objects
            .iter()
            .filter(|((col, n, _), _)| *col == c && n == ns)
            .filter_map(|(_, v)| serde_json::from_value(v.clone()).ok())
            .collect()
    }

    /// The writes so far but Events (see [`MemoryApi::event_reasons`]), in order, as
    /// `verb resource/name`; and forget them.
    pub fn take_writes(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().writes)
            .iter()
            .filter(|w| w.resource != "events")
            .map(Write::to_string)
            .collect()
    }

    /// The Events' reasons, in the order they were created.
    pub fn event_reasons(&self) -> Vec<String> {
        let st = self.lock();
        let mut evs: Vec<(u64, String)> = st
            .objects
            .iter()
            .filter(|((c, _, _), _)| c.ends_with("/events"))
            .map(|(_, v)| {
                let rv = v["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                (rv, v["reason"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        evs.sort();
        evs.into_iter().map(|(_, r)| r).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key_of<K: Resource<DynamicType = ()>>(&self, v: &Value) -> Key {
        let meta = &v["metadata"];
        let text = |f: &str| meta[f].as_str().unwrap_or_default().to_string();
        (collection::<K>(), text("namespace"), text("name"))
    }

    /// Answer one request; `merge`: a PATCH is a JSON merge patch (else server-side apply).
    fn answer(
        &self,
        method: &Method,
        uri: &http::Uri,
        body: &[u8],
        merge: bool,
    ) -> (StatusCode, Value) {
        let Some(r) = route(uri.path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound", uri.to_string());
        };
        let query: BTreeMap<String, String> =
            form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut st = self.lock();
        let Some(name) = r.name.clone() else {
            return match *method {
                Method::GET => st.list(&r, query.get("labelSelector")),
                Method::POST => st.create(&r, body),
                _ => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    uri.to_string(),
                ),
            };
        };
        let key = (r.collection.clone(), r.namespace.clone(), name);
        match (method.clone(), r.subresource.as_deref()) {
            (Method::GET, None) => match st.objects.get(&key) {
                Some(v) => (StatusCode::OK, v.clone()),
                None => not_found(&key),
            },
            (Method::PATCH, None) if merge && !st.objects.contains_key(&key) => not_found(&key),
            (Method::PATCH, None) if merge => st.patch(key, body, "merge"),
            (Method::PATCH, None) => st.patch(key, body, "apply"),
            (Method::PATCH, Some("status")) => st.patch_status(key, body),
            (Method::DELETE, None) => st.delete(key, &body),
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                uri.to_string(),
            ),
        }
    }
}

/// The API path of K's collection.
fn collection<K: Resource<DynamicType = ()>>() -> String {
    let group = K::group(&());
    let version = K::version(&());
    let plural = K::plural(&());
    if group.is_empty() {
        format!("api/{version}/{plural}")
    } else {
        format!("apis/{group}/{version}/{plural}")
    }
}

fn resource_of(key: &Key) -> String {
    key.0.rsplit('/').next().unwrap_or_default().to_string()
}

impl State {
    /// Give a new object what the API server gives it: a uid, a creation time, a version.
    fn stamp(&mut self, mut v: Value) -> Value {
        self.version += 1;
        let meta = &mut v["metadata"];
        if meta["uid"].is_null() {
            self.next_uid += 1;
            meta["uid"] = json!(format!("uid-{}", self.next_uid));
        }
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = json!("2026-12-07T10:00:00Z");
        }
        meta["resourceVersion"] = json!(self.version.to_string());
        v
    }

    fn logged(&mut self, verb: &'static str, key: &Key) {
        self.writes.push(Write {
            verb,
            resource: resource_of(key),
            name: key.2.clone(),
        });
    }

    fn list(&self, r: &Route, selector: Option<&String>) -> (StatusCode, Value) {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((c, ns, _), _)| {
                *c == r.collection && (r.namespace.is_empty() || *ns == r.namespace)
            })
            .filter(|(_, v)| selector.is_none_or(|s| selected(&v["metadata"]["labels"], s)))
            .map(|(_, v)| v.clone())
            .collect();
        let body = json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": self.version.to_string()}, "items": items});
        (StatusCode::OK, body)
    }

    fn create(&mut self, r: &Route, mut body: Value) -> (StatusCode, Value) {
        let meta = &mut body["metadata"];
        if meta["name"].is_null() {
            let stem = meta["generateName"]
                .as_str()
                .unwrap_or("object-")
                .to_string();
            meta["name"] = json!(format!("{stem}{}", self.version + 1));
        }
        if meta["namespace"].is_null() && !r.namespace.is_empty() {
            meta["namespace"] = json!(r.namespace);
        }
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        let key = (r.collection.clone(), r.namespace.clone(), name);
        if self.objects.contains_key(&key) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} exists", key.2),
            );
        }
        let stored = self.stamp(body);
        self.objects.insert(key.clone(), stored.clone());
        self.logged("create", &key);
        (StatusCode::CREATED, stored)
    }

    fn patch(&mut self, key: Key, body: Value, verb: &'static str) -> (StatusCode, Value) {
        let stored = match self.objects.remove(&key) {
            Some(mut old) => {
                merge(&mut old, &body);
                self.version += 1;
                old["metadata"]["resourceVersion"] = json!(self.version.to_string());
                old
            }
            None => {
                let mut v = body;
                if v["metadata"]["namespace"].is_null() && !key.1.is_empty() {
                    v["metadata"]["namespace"] = json!(key.1);
                }
                self.stamp(v)
            }
        };
        self.objects.insert(key.clone(), stored.clone());
        self.logged(verb, &key);
        (StatusCode::OK, stored)
    }

    fn patch_status(&mut self, key: Key, body: Value) -> (StatusCode, Value) {
        let Some(old) = self.objects.get_mut(&key) else {
            return not_found(&key);
        };
        let mut status = old["status"].take();
        if status.is_null() {
            status = json!({});
        }
        merge(&mut status, &body["status"]);
        old["status"] = status;
        self.version += 1;
        old["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let stored = old.clone();
        self.logged("status", &key);
        (StatusCode::OK, stored)
    }

    fn delete(&mut self, key: Key, body: &Value) -> (StatusCode, Value) {
        let Some(old) = self.objects.get(&key) else {
            return not_found(&key);
        };
        let want = &body["preconditions"]["uid"];
        if !want.is_null() && *want != old["metadata"]["uid"] {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!("Precondition failed: UID in precondition: {want}"),
            );
        }
        let gone = self.objects.remove(&key).unwrap_or_default();
        self.logged("delete", &key);
        (StatusCode::OK, gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::Api;
    use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};

    fn pod(name: &str, labels: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: db, labels: {{{labels}}}}}"
        ))
        .expect("pod")
    }

    /// The double answers as the API server does for what the controllers ask: get (404 when
    /// missing), list by label, apply that creates then merges, delete by uid (409 when the
    /// uid is another's).
    #[tokio::test]
    async fn answers_get_list_apply_and_delete_by_uid() {
        let mem = MemoryApi::new();
        let api: Api<Pod> = Api::namespaced(mem.client(), "db");
        assert!(api.get_opt("a").await.expect("get").is_none());
        mem.put(&pod("a", "app: x"));
        mem.put(&pod("b", "app: y, snapcrypt.dev/run: '1'"));
        let names = |l: kube::core::ObjectList<Pod>| {
            l.items
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        let sel = |s: &str| ListParams::default().labels(s);
        assert_eq!(names(api.list(&sel("app=y")).await.expect("list")), ["b"]);
        assert_eq!(
            names(api.list(&sel("snapcrypt.dev/run")).await.expect("list")),
            ["b"]
        );
        assert_eq!(names(api.list(&sel("app!=y")).await.expect("list")), ["a"]);
        let ssa = PatchParams::apply("test").force();
        let patched = api
            .patch("a", &ssa, &Patch::Apply(&pod("a", "extra: z")))
            .await
            .expect("apply");
        assert_eq!(patched.metadata.labels.expect("labels").len(), 2);
        let wrong = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some("other".into()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete("a", &wrong).await {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 409),
            other => panic!("{other:?}"),
        }
        api.delete("b", &DeleteParams::default())
            .await
            .expect("delete");
        assert_eq!(mem.take_writes(), ["apply pods/a", "delete pods/b"]);
    }
}
