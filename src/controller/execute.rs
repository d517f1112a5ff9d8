//! The one place a reconcile writes. A controller's plan is pure and returns [`Change`]s;
//! [`execute`] carries them out in order (server-side apply with the operator's field manager,
//! deletions by uid, status, Events) and stops at the first that fails, naming it. What a
//! plan asks is therefore a value a test can read without a cluster (see each controller's
//! plan tests, and `memory_api` for the writes themselves).

use kube::api::{
    ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use super::context::Context;
use super::kube_api::FIELD_MANAGER;
use super::reason::Reason;

/// The object a change is about: its kind (as the API names it), namespace, name and uid.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
}

impl Target {
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Self {
        Target {
            resource: ApiResource::erase::<K>(&()),
            namespace: obj.namespace(),
            name: obj.name_any(),
            uid: obj.uid(),
        }
    }

    /// The untyped `obj`, of kind `resource`.
    pub fn dynamic(obj: &DynamicObject, resource: &ApiResource) -> Self {
        Target {
            resource: resource.clone(),
            namespace: obj.namespace(),
            name: obj.name_any(),
            uid: obj.uid(),
        }
    }

    /// `Kind/name`, for [`Change::summary`].
    fn short(&self) -> String {
        format!("{}/{}", self.resource.kind, self.name)
    }

    fn api(&self, ctx: &Context) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &self.resource),
            None => Api::all_with(ctx.client.clone(), &self.resource),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = &self.resource.kind;
        let kind = if kind == "Pod" { "pod" } else { kind.as_str() };
        write!(f, "{kind} {}", self.name)
    }
}

/// One write a plan asks for. `stage` names it in errors and in the reconcile-failure metric
/// (`apply_pod`, `stop_pod`, `update_status`, ...).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Server-side apply the whole object (create or update).
    Apply {
        stage: &'static str,
        target: Target,
        body: Value,
    },
    /// Create the object (never patched afterwards); one that exists already (409: created by
    /// a reconcile whose status write was lost) is left as it is.
    Create {
        stage: &'static str,
        target: Target,
        body: Value,
    },
    /// Delete the object: by its uid when the target has one (an object that took its name
    /// since stays); `grace: Some(0)` deletes it at once, without its kubelet's confirmation
    /// (a pod on a lost node). Already gone is not an error.
    Delete {
        stage: &'static str,
        target: Target,
        grace: Option<u32>,
    },
    /// Merge-patch the object (metadata a reconcile tends without owning the object: labels,
    /// annotations, owner references); gone already is not an error.
    Merge {
        stage: &'static str,
        target: Target,
        body: Value,
    },
    /// Server-side apply the object's status subresource.
    Status {
        stage: &'static str,
        target: Target,
        body: Value,
    },
    /// An Event about the reconciled object.
    Event { reason: Reason, note: String },
}

impl Change {
    /// Apply `obj`.
    pub fn apply<K: Resource<DynamicType = ()> + Serialize>(stage: &'static str, obj: &K) -> Self {
        Change::Apply {
            stage,
            target: Target::of(obj),
            body: serde_json::to_value(obj).unwrap_or(Value::Null),
        }
    }

    /// Create `obj`, or leave the one that exists.
    pub fn create<K: Resource<DynamicType = ()> + Serialize>(stage: &'static str, obj: &K) -> Self {
        Change::Create {
            stage,
            target: Target::of(obj),
            body: serde_json::to_value(obj).unwrap_or(Value::Null),
        }
    }

    /// Merge `patch` into `obj`.
    pub fn merge<K: Resource<DynamicType = ()>>(
        stage: &'static str,
        obj: &K,
        patch: Value,
    ) -> Self {
        Change::Merge {
            stage,
            target: Target::of(obj),
            body: patch,
        }
    }

    /// Create the untyped `obj` (of kind `resource`), or leave the one that exists.
    pub fn create_dynamic(
        stage: &'static str,
        obj: &DynamicObject,
        resource: &ApiResource,
    ) -> Self {
        Change::Create {
            stage,
            target: Target::dynamic(obj, resource),
            body: serde_json::to_value(obj).unwrap_or(Value::Null),
        }
    }

    /// Delete the untyped `obj` (of kind `resource`) exactly.
    pub fn delete_dynamic(
        stage: &'static str,
        obj: &DynamicObject,
        resource: &ApiResource,
    ) -> Self {
        Change::Delete {
            stage,
            target: Target::dynamic(obj, resource),
            grace: None,
        }
    }

    /// Delete `obj` exactly (by its uid).
    pub fn delete<K: Resource<DynamicType = ()>>(stage: &'static str, obj: &K) -> Self {
        Change::Delete {
            stage,
            target: Target::of(obj),
            grace: None,
        }
    }

    /// Delete `obj` exactly and at once.
    pub fn force_delete<K: Resource<DynamicType = ()>>(stage: &'static str, obj: &K) -> Self {
        Change::Delete {
            stage,
            target: Target::of(obj),
            grace: Some(0),
        }
    }

    /// Write `status` as the status of `obj`.
    pub fn status<K: Resource<DynamicType = ()>>(obj: &K, status: &impl Serialize) -> Self {
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": {"name": obj.name_any()},
            "status": status,
        });
        Change::Status {
            stage: "update_status",
            target: Target::of(obj),
            body,
        }
    }

    pub fn event(reason: Reason, note: impl Into<String>) -> Self {
        Change::Event {
            reason,
            note: note.into(),
        }
    }

    /// `verb kind/name` (events: `event Reason`), for plan tests.
    pub fn summary(&self) -> String {
        match self {
            Change::Apply { target, .. } => format!("apply {}", target.short()),
            Change::Create { target, .. } => format!("create {}", target.short()),
            Change::Merge { target, .. } => format!("patch {}", target.short()),
            Change::Delete { target, grace, .. } => {
                let now = if *grace == Some(0) { " at once" } else { "" };
                format!("delete {}{now}", target.short())
            }
            Change::Status { target, .. } => format!("status {}", target.short()),
            Change::Event { reason, .. } => format!("event {reason}"),
        }
    }
}

/// A change that failed: which, and the API server's error.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {target}: {source}")]
pub struct ExecuteError {
    /// The change's stage (a metrics label).
    pub stage: &'static str,
    verb: &'static str,
    target: String,
    #[source]
    source: Box<kube::Error>,
}

impl ExecuteError {
    /// The API server's HTTP status code, if it answered.
    pub fn code(&self) -> Option<u16> {
        match self.source.as_ref() {
            kube::Error::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

/// Carry out `changes` in order, for the reconcile of `subject`; the first failure stops
/// them. Events are best effort (a failure is logged, never fatal).
pub async fn execute<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    subject: &K,
    changes: Vec<Change>,
) -> Result<(), ExecuteError> {
    for change in changes {
        run(ctx, subject, change).await?;
    }
    Ok(())
}

/// `result`, with the API server's answer `code` taken as done.
fn tolerate<T>(result: kube::Result<T>, code: u16) -> kube::Result<()> {
    match result {
        Err(kube::Error::Api(e)) if e.code == code => Ok(()),
        other => other.map(|_| ()),
    }
}

async fn run<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    subject: &K,
    change: Change,
) -> Result<(), ExecuteError> {
    let failed = |stage, verb, target: &Target| {
        let target = target.to_string();
        move |source| ExecuteError {
            stage,
            verb,
            target,
            source: Box::new(source),
        }
    };
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    match change {
        Change::Apply {
            stage,
            target,
            body,
        } => {
            let api = target.api(ctx);
            api.patch(&target.name, &ssa, &Patch::Apply(&body))
                .await
                .map_err(failed(stage, "applying", &target))?;
        }
        Change::Create {
            stage,
            target,
            body,
        } => {
            let obj: DynamicObject = serde_json::from_value(body)
                .map_err(|e| failed(stage, "creating", &target)(kube::Error::SerdeError(e)))?;
            let created = target.api(ctx).create(&PostParams::default(), &obj).await;
            tolerate(created, 409).map_err(failed(stage, "creating", &target))?;
        }
        Change::Merge {
            stage,
            target,
            body,
        } => {
            let merge = PatchParams::default();
            let api = target.api(ctx);
            let patched = api.patch(&target.name, &merge, &Patch::Merge(&body)).await;
            tolerate(patched, 404).map_err(failed(stage, "patching", &target))?;
        }
        Change::Status {
            stage,
            target,
            body,
        } => {
            let api = target.api(ctx);
            api.patch_status(&target.name, &ssa, &Patch::Apply(&body))
                .await
                .map_err(failed(stage, "updating the status of", &target))?;
        }
        Change::Delete {
            stage,
            target,
            grace,
        } => {
            let params = DeleteParams {
                preconditions: target.uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                grace_period_seconds: grace,
                ..DeleteParams::background()
            };
            // 404: gone already; 409: the uid precondition failed, a new object has the name.
            let deleted = target.api(ctx).delete(&target.name, &params).await;
            tolerate(tolerate(deleted, 404), 409).map_err(failed(stage, "deleting", &target))?;
        }
        Change::Event { reason, note } => ctx.event(subject, reason, note).await,
    }
    Ok(())
}
