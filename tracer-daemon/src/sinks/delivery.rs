//! [`Delivery`]: spool, sink, fallback directory; back-off while the sink
//! refuses; the spool's budget.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{
    Item, Sink, SinkError,
    backoff::Backoff,
    bundle::{BundleDir, LocalCopies, bundle_bytes},
    layout,
    spool::{self, SharedSpool, pb},
};
use crate::records::{Owner, Record};

/// Whose record a spool entry is. Entries from before the owner was
/// spooled have none: it is read from the record itself.
fn owner_of(r: &pb::RecordReady) -> Owner {
    match &r.owner {
        Some(o) => Owner {
            namespace: o.namespace.clone(),
            workflow_id: o.workflow_id.clone(),
        },
        None => layout::owner_from_bundle(&r.bundle_json),
    }
}

/// How a record was delivered.
#[derive(Debug)]
pub(crate) enum Delivered {
    /// In the sink, there.
    At(String),
    /// Durable in the spool; the sink is refusing records (why): it is put
    /// when the sink takes it.
    Waiting(String),
}

/// Why a record is not (yet) where it should be.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error("encoding the record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the record could not be written ({primary}); it was kept in {kept} instead")]
    Kept { primary: SinkError, kept: String },
    #[error("the record could not be written ({primary}) nor kept in {} ({fallback})", .dir.display())]
    Lost {
        primary: SinkError,
        dir: PathBuf,
        fallback: SinkError,
    },
}

/// What delivery did, for metrics and stats.
#[derive(Debug, Default)]
pub(crate) struct DeliveryStats {
    /// Records put into the sink on their first attempt.
    pub(crate) delivered: AtomicU64,
    /// Records put into the sink from the spool (after a refusal or a
    /// restart).
    pub(crate) redelivered: AtomicU64,
    /// Failed attempts to put a record or to write the spool.
    pub(crate) errors: AtomicU64,
    /// Records kept in the fallback directory (no spool, spool failed or
    /// over its budget, and the sink refused).
    pub(crate) unsent: AtomicU64,
    /// Records not spooled because the spool was over its budget.
    pub(crate) over_spool_budget: AtomicU64,
}

/// Limits on what delivery keeps on the node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budgets {
    /// Undelivered records the spool may hold (bytes); past it a record
    /// is put at once, or kept in the fallback directory if refused.
    pub(crate) spool_bytes: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            spool_bytes: 2 << 30,
        }
    }
}

pub(crate) struct Delivery {
    sink: Box<dyn Sink>,
    /// Where a record goes when the sink (and the spool) refuse it.
    fallback_dir: PathBuf,
    spool: Option<SharedSpool>,
    budgets: Budgets,
    /// Copies of delivered records kept on the node (object sinks).
    local_copies: Option<LocalCopies>,
    backoff: Mutex<Backoff>,
    /// The sink's last refusal, until it takes a record again.
    last_error: Mutex<Option<String>>,
    /// One retry pass at a time.
    retrying: AtomicBool,
    pub(crate) stats: DeliveryStats,
}

/// Records in the spool younger than this are being delivered by their
/// first attempt: a retry pass leaves them to it.
const RETRY_AFTER: Duration = Duration::from_secs(5);

impl Delivery {
    pub(crate) fn new(sink: Box<dyn Sink>, fallback_dir: PathBuf) -> Self {
        Self {
            sink,
            fallback_dir,
            spool: None,
            budgets: Budgets::default(),
            local_copies: None,
            backoff: Mutex::new(Backoff::default()),
            last_error: Mutex::new(None),
            retrying: AtomicBool::new(false),
            stats: DeliveryStats::default(),
        }
    }

    /// Records are made durable in `spool` before they are put.
    pub(crate) fn with_spool(mut self, spool: SharedSpool, budgets: Budgets) -> Self {
        self.spool = Some(spool);
        self.budgets = budgets;
        self
    }

    /// After a confirmed put into an off-node sink, a copy stays here.
    pub(crate) fn with_local_copies(mut self, copies: Option<LocalCopies>) -> Self {
        self.local_copies = copies;
        self
    }

    #[cfg(test)]
    fn spool(&self) -> Option<&SharedSpool> {
        self.spool.as_ref()
    }

    pub(crate) fn describe(&self) -> String {
        self.sink.describe()
    }

    /// Whether the sink takes records now; remembered for [`Self::problem`].
    pub(crate) fn check(&self) -> Result<(), SinkError> {
        let r = self.sink.check();
        self.note(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        r
    }

    /// The sink's last refusal, while it lasts.
    pub(crate) fn problem(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Bytes of delivered records on the node: the bundle directory, or
    /// the copies kept of records in a store. Scans a directory.
    pub(crate) fn local_bytes(&self) -> u64 {
        self.sink.local_bytes() + self.local_copies.as_ref().map_or(0, |c| c.used_bytes())
    }

    /// Seconds until the next attempt while the sink refuses (0: trying).
    pub(crate) fn backoff_wait(&self) -> Duration {
        lock(&self.backoff).wait()
    }

    fn note(&self, outcome: Result<(), String>) {
        let mut b = lock(&self.backoff);
        match outcome {
            Ok(()) => {
                b.succeeded();
                *lock(&self.last_error) = None;
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                let wait = b.failed();
                let mut last = lock(&self.last_error);
                if last.as_deref() != Some(e.as_str()) {
                    tracing::warn!(sink = %self.sink.describe(), error = %e, retry_in_ms = wait.as_millis() as u64, "the sink refuses records: they wait in the spool");
                }
                *last = Some(e);
            }
        }
    }

    /// Puts one record, noting the outcome for the back-off.
    fn put(&self, item: &Item<'_>) -> Result<String, SinkError> {
        let r = self.sink.put(item);
        self.note(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if r.is_ok()
            && self.sink.off_node()
            && let Some(copies) = &self.local_copies
        {
            copies.keep(item.bundle_file, item.bytes);
        }
        r
    }

    /// Delivers one record of task `task_id`.
    pub(crate) fn deliver(
        &self,
        task_id: &str,
        record: &Record,
    ) -> Result<Delivered, DeliveryError> {
        let name = record.bundle.file_name();
        let bytes = bytes::Bytes::from(bundle_bytes(record)?);
        let item = Item {
            task_id,
            bundle_file: &name,
            owner: &record.owner,
            bytes: &bytes,
        };
        if let Some(spool) = &self.spool {
            match self.spool_record(spool, &item) {
                Ok(true) => return Ok(self.put_spooled(spool, &item)),
                Ok(false) => {}
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    // The spool's volume failed: deliver without it.
                    tracing::error!(task = task_id, error = %e, "spool: cannot keep a record; delivering it without the spool");
                }
            }
        }
        self.put_or_keep(&item).map(Delivered::At)
    }

    /// Makes the record durable in the spool; `false` when the spool is
    /// over its budget (the record is delivered without it, counted).
    fn spool_record(
        &self,
        spool: &SharedSpool,
        item: &Item<'_>,
    ) -> Result<bool, spool::SpoolError> {
        let mut s = spool.lock();
        if s.undelivered_bytes() + item.bytes.len() as u64 > self.budgets.spool_bytes {
            self.stats.over_spool_budget.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                task = item.task_id,
                waiting = s.undelivered_count(),
                bytes = s.undelivered_bytes(),
                budget = self.budgets.spool_bytes,
                "spool: over its budget (the sink has refused records for long): this record is put directly, or kept in the fallback directory; the waiting ones stay"
            );
            return Ok(false);
        }
        s.record_ready(pb::RecordReady {
            task_id: item.task_id.into(),
            bundle_file: item.bundle_file.into(),
            bundle_json: item.bytes.clone(),
            owner: Some(item.owner.into()),
        })?;
        Ok(true)
    }

    fn put_spooled(&self, spool: &SharedSpool, item: &Item<'_>) -> Delivered {
        if !lock(&self.backoff).due() {
            // The sink is refusing: do not wait on it, the retry pass will.
            return Delivered::Waiting(self.problem().unwrap_or_default());
        }
        match self.put(item) {
            Ok(at) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = spool.lock().delivered(item.bundle_file) {
                    tracing::warn!(error = %e, "spool: cannot mark a record delivered (it may be put again, under the same name)");
                }
                Delivered::At(at)
            }
            Err(e) => Delivered::Waiting(e.to_string()),
        }
    }

    /// Puts into the sink; if that fails (store down, directory full,
    /// read-only, removed), keeps the record in the fallback directory so
    /// it is not lost, and says where.
    fn put_or_keep(&self, item: &Item<'_>) -> Result<String, DeliveryError> {
        let primary = match self.put(item) {
            Ok(at) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                return Ok(at);
            }
            Err(e) => e,
        };
        self.stats.unsent.fetch_add(1, Ordering::Relaxed);
        match BundleDir::new(&self.fallback_dir).and_then(|d| d.put(item)) {
            Ok(kept) => Err(DeliveryError::Kept { primary, kept }),
            Err(fallback) => Err(DeliveryError::Lost {
                primary,
                dir: self.fallback_dir.clone(),
                fallback,
            }),
        }
    }

    /// Puts every record the spool holds undelivered that was spooled
    /// more than `older_than` ago (younger ones are still with their first
    /// attempt), blocking; stops at the first refusal (the rest would fail
    /// the same way) and backs off.
    pub(crate) fn deliver_spooled(&self, older_than: Duration) {
        let Some(spool) = &self.spool else { return };
        // Not in the `for` header: the guard would live through the loop.
        let waiting = spool.lock().undelivered(older_than);
        for r in waiting {
            let owner = owner_of(&r);
            let item = Item {
                task_id: &r.task_id,
                bundle_file: &r.bundle_file,
                owner: &owner,
                bytes: &r.bundle_json,
            };
            match self.put(&item) {
                Ok(at) => {
                    self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = spool.lock().delivered(&r.bundle_file) {
                        tracing::warn!(error = %e, "spool: cannot mark a record delivered");
                    }
                    tracing::info!(task = %r.task_id, at = %at, "record delivered from the spool");
                }
                Err(e) => {
                    tracing::debug!(task = %r.task_id, error = %e, "record still undeliverable: kept in the spool");
                    return;
                }
            }
        }
    }

    /// Called every second: starts a retry pass off the caller's thread
    /// when records wait and the back-off allows, unless one runs.
    pub(crate) fn retry(self: &Arc<Self>) {
        let due = lock(&self.backoff).due()
            && self
                .spool
                .as_ref()
                .is_some_and(|s| s.lock().undelivered_count() > 0);
        if !due || self.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        // While the sink refuses, every record waiting is fair game (none
        // has a first attempt under way that would race it).
        let older_than = if me.problem().is_some() {
            Duration::ZERO
        } else {
            RETRY_AFTER
        };
        tokio::task::spawn_blocking(move || {
            me.deliver_spooled(older_than);
            me.retrying.store(false, Ordering::Release);
        });
    }
}

/// A poisoned lock's data is still what it was: use it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod tests;
