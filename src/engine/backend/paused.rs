//! For tests: a store that asks a scheduler before every request it passes on, so that the
//! requests of several writers (each with its own `Paused` over one shared store) run in an
//! order a test chooses, every interleaving reachable, instead of hoping two processes
//! collide. Not a double of a store: the requests go to a real one (object_store's in-memory
//! store, with or without conditional puts).

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::sync::{mpsc, oneshot};

use super::Backend;

/// A request about to be made: which writer, and what (for the test's log).
pub struct Turn {
    pub writer: usize,
    pub what: String,
    pub go: oneshot::Sender<()>,
}

/// `inner`, asking `turns` before each request of writer `writer`.
#[derive(Debug)]
pub struct Paused {
    pub inner: Arc<dyn ObjectStore>,
    pub writer: usize,
    pub turns: mpsc::UnboundedSender<Turn>,
}

impl std::fmt::Display for Paused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Paused({})", self.writer)
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.writer, self.what)
    }
}

impl Paused {
    async fn wait(&self, what: String) {
        let (go, gone) = oneshot::channel();
        if self
            .turns
            .send(Turn {
                writer: self.writer,
                what,
                go,
            })
            .is_ok()
        {
            // A scheduler that went away lets everything through.
            let _ = gone.await;
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Paused {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.wait(format!("put {location} {:?}", opts.mode)).await;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.wait(format!("multipart {location}")).await;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.wait(format!("get {location}")).await;
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        let (inner, turns, writer) = (self.inner.clone(), self.turns.clone(), self.writer);
        locations
            .then(move |l| {
                let (inner, turns) = (inner.clone(), turns.clone());
                async move {
                    let l = l?;
                    let me = Paused {
                        inner: inner.clone(),
                        writer,
                        turns,
                    };
                    me.wait(format!("delete {l}")).await;
                    let mut one = inner.delete_stream(futures::stream::iter([Ok(l)]).boxed());
                    one.next()
                        .await
                        .unwrap_or(Err(object_store::Error::NotImplemented {
                            operation: "delete".into(),
                            implementer: "Paused".into(),
                        }))
                }
            })
            .boxed()
    }
    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (inner, turns, writer) = (self.inner.clone(), self.turns.clone(), self.writer);
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let me = Paused {
                inner: inner.clone(),
                writer,
                turns,
            };
            me.wait(format!(
                "list {}",
                prefix.as_ref().map(|p| p.to_string()).unwrap_or_default()
            ))
            .await;
            inner.list(prefix.as_ref())
        })
        .flatten()
        .boxed()
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.wait("list_with_delimiter".into()).await;
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.wait(format!("copy {from} {to}")).await;
        self.inner.copy_opts(from, to, options).await
    }
}

/// A real in-memory store that, like some S3-compatible stores, has no conditional puts.
#[derive(Debug, Default)]
pub struct NoConditionalPut(pub object_store::memory::InMemory);

impl std::fmt::Display for NoConditionalPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoConditionalPut")
    }
}

#[async_trait::async_trait]
impl ObjectStore for NoConditionalPut {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if opts.mode != PutMode::Overwrite {
            return Err(object_store::Error::NotImplemented {
                operation: "conditional put".into(),
                implementer: "NoConditionalPut".into(),
            });
        }
        self.0.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.0.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

impl Backend {
    /// A backend over `store` (an object store, not a directory), for tests.
    pub fn over_store(store: Arc<dyn ObjectStore>) -> Backend {
        Backend {
            store,
            local_root: None,
            local_dir: None,
            staging: std::env::temp_dir().join("snapcrypt-staging"),
            display: "memory".into(),
            lock: None,
        }
    }
}
