//! Where finished roar records go, by one delivery path for both modes.
//!
//! [`Delivery::deliver`] makes a record durable in the spool first (the
//! daemon has one; `run` does not), then puts it into the sink: an object
//! store (`--sink`, [`object_sink`]) or the bundle directory
//! ([`bundle`]). A record leaves the spool only once the sink confirmed
//! it; one the sink refuses stays in the spool and is put again
//! ([`Delivery::retry`], with back-off and jitter while the sink keeps
//! refusing). Without a spool (or if the spool itself fails, or is over
//! its budget) a refused record is kept in the fallback directory. Never
//! dropped; every detour counted in [`DeliveryStats`].

pub(crate) mod backoff;
pub(crate) mod bundle;
mod delivery;
pub(crate) mod layout;
pub(crate) mod object_sink;
pub(crate) mod spool;
pub(crate) mod store;

use std::path::PathBuf;

pub(crate) use self::delivery::{Budgets, Delivered, Delivery};
use self::{bundle::BundleDir, spool::pb, store::StoreError};
use crate::records::Owner;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Boxed: a store's error carries text; the variant stays small.
    #[error("{0}")]
    Store(Box<StoreError>),
    #[error(
        "{}: the bundle directory holds {used} bytes, its budget is {budget} (--bundle-dir-max-bytes): collect its records",
        .dir.display()
    )]
    Full {
        dir: PathBuf,
        used: u64,
        budget: u64,
    },
}

/// One record, as a sink is given it.
pub(crate) struct Item<'a> {
    pub(crate) task_id: &'a str,
    /// The roar bundle file name (the bundle directory's name for it).
    pub(crate) bundle_file: &'a str,
    pub(crate) owner: &'a Owner,
    pub(crate) bytes: &'a bytes::Bytes,
}

/// A store for records. Each kind of store is one small implementation.
pub(crate) trait Sink: Send + Sync {
    /// Stores one record, durably and atomically: a reader never sees
    /// half of it, and putting the same record again leaves one record
    /// (its name derives from the task's identity). Returns where it went.
    fn put(&self, item: &Item<'_>) -> Result<String, SinkError>;
    /// Whether records can go there now (start-up, readiness).
    fn check(&self) -> Result<(), SinkError>;
    /// Where records go, for logs and stats.
    fn describe(&self) -> String;
    /// Records put here are off the node (the node's copy may go).
    fn off_node(&self) -> bool;
    /// Bytes of records this sink holds on the node.
    fn local_bytes(&self) -> u64 {
        0
    }
}

impl From<&Owner> for pb::RecordOwner {
    fn from(o: &Owner) -> Self {
        pb::RecordOwner {
            namespace: o.namespace.clone(),
            workflow_id: o.workflow_id.clone(),
        }
    }
}

/// Where records go: the object store at `url`, or else the bundle
/// directory (with its budget). A bad URL still makes a sink, one that
/// refuses every record saying why, so the daemon keeps tracing and
/// spooling while the operator fixes it; `run` checks it first and stops.
pub(crate) fn make_sink(
    url: Option<&str>,
    bundle_dir: &std::path::Path,
    bundle_budget: Option<u64>,
) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match url {
        Some(url) => {
            Box::new(
                object_sink::ObjectSink::new(url).map_err(|source| SinkError::Io {
                    path: "(runtime)".into(),
                    source,
                })?,
            )
        }
        None => Box::new(BundleDir::new(bundle_dir)?.with_budget(bundle_budget)),
    })
}
