//! The [`Sink`] over an object store.
//!
//! Records are delivered from blocking threads (the daemon's record
//! threads, `run` after the command), and `object_store` is async. The
//! sink owns a small runtime of its own (one worker) and each put is a
//! task on it that the calling thread waits for: the store's HTTP client
//! keeps its connections on one runtime for its whole life (a reqwest
//! client moved between runtimes loses them), callers need not be inside
//! any runtime, and a slow store never takes a worker from the daemon's
//! loop.

use super::{
    Item, Sink, SinkError,
    layout::RecordKey,
    store::{Store, StoreError},
};

pub(crate) struct ObjectSink {
    /// `Err`: the URL could not be used at all; every put says why (the
    /// daemon keeps running, records wait in the spool, /readyz says so).
    store: Result<Store, StoreError>,
    url: String,
    /// Always `Some` but in `drop`.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        // Dropped from async code (`run`): a runtime may not block there
        // waiting for its workers; nothing is in flight by now.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ObjectSink {
    /// A sink for `url` ([`Store::open`]); a bad URL makes a sink that
    /// refuses every record with the reason.
    pub(crate) fn new(url: &str) -> std::io::Result<Self> {
        super::store::install_crypto();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("roar-node-store")
            .enable_all()
            .build()?;
        Ok(Self {
            store: Store::open(url),
            url: url.into(),
            rt: Some(rt),
        })
    }

    fn store(&self) -> Result<&Store, SinkError> {
        self.store
            .as_ref()
            .map_err(|e| SinkError::Store(Box::new(e.clone())))
    }

    /// Runs `f` on the sink's runtime and waits for it.
    fn wait<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, SinkError> {
        let rt = self.rt.as_ref().expect("the runtime lives until drop");
        let task = rt.spawn(f);
        match futures::executor::block_on(task) {
            Ok(r) => r.map_err(|e| SinkError::Store(Box::new(e))),
            Err(e) => Err(SinkError::Store(Box::new(StoreError {
                url: self.url.clone(),
                problem: super::store::Problem::Other,
                detail: format!("the upload task failed: {e}"),
            }))),
        }
    }
}

impl Sink for ObjectSink {
    fn put(&self, item: &Item<'_>) -> Result<String, SinkError> {
        let store = self.store()?.clone();
        let key = RecordKey {
            namespace: item.owner.namespace.clone(),
            workflow_id: item.owner.workflow_id.clone(),
            task_id: item.task_id.into(),
        };
        let bytes = item.bytes.clone();
        self.wait(async move { store.put_record(&key, bytes).await })
    }

    fn check(&self) -> Result<(), SinkError> {
        let store = self.store()?.clone();
        self.wait(async move { store.check().await })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    fn off_node(&self) -> bool {
        // A file:// store is a directory, maybe a mounted volume: still a
        // place records are meant to go, like a bucket.
        true
    }
}
