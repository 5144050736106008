//! Where finished roar records go, by one delivery path for both modes.
//!
//! [`Delivery::deliver`] makes a record durable in the spool first (the
//! daemon has one; `run` does not), then puts it into the sink (today the
//! bundle directory). A record the sink refuses stays in the spool and is
//! put again later ([`Delivery::retry`]); without a spool (or if the spool
//! itself fails) it is kept in the fallback directory. Never dropped.

pub(crate) mod bundle;
pub(crate) mod spool;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use self::{
    bundle::{BundleDir, bundle_bytes},
    spool::{SharedSpool, pb},
};
use crate::records::Record;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A store for records. Each kind of store is one small implementation.
pub(crate) trait Sink: Send + Sync {
    /// Stores one record's bytes under `name`, durably and atomically: a
    /// reader never sees half of it, and putting the same name and bytes
    /// again leaves one record. Returns where it went.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<String, SinkError>;
}

/// Why a record is not (yet) where it should be.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error("encoding the record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(
        "{source}: the record stays in the spool ({}) and is written when the sink takes it",
        .spool.display()
    )]
    Spooled { source: SinkError, spool: PathBuf },
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
}

pub(crate) struct Delivery {
    sink: Box<dyn Sink>,
    /// Where a record goes when the sink (and the spool) refuse it.
    fallback_dir: PathBuf,
    spool: Option<SharedSpool>,
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
            retrying: AtomicBool::new(false),
            stats: DeliveryStats::default(),
        }
    }

    /// Records are made durable in `spool` before they are put.
    pub(crate) fn with_spool(mut self, spool: SharedSpool) -> Self {
        self.spool = Some(spool);
        self
    }

    #[cfg(test)]
    fn spool(&self) -> Option<&SharedSpool> {
        self.spool.as_ref()
    }

    /// Delivers one record of task `task_id`; returns where it went.
    pub(crate) fn deliver(&self, task_id: &str, record: &Record) -> Result<String, DeliveryError> {
        let name = record.bundle.file_name();
        let bytes = bytes::Bytes::from(bundle_bytes(record)?);
        if let Some(spool) = &self.spool {
            let ready = pb::RecordReady {
                task_id: task_id.into(),
                bundle_file: name.clone(),
                bundle_json: bytes.clone(),
            };
            // Bound first: a guard in the `match` scrutinee would live
            // through the arms, and `put_spooled` locks the spool again.
            let spooled = spool.lock().record_ready(ready);
            match spooled {
                Ok(()) => return self.put_spooled(spool, &name, &bytes),
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    // The spool's volume failed: deliver without it.
                    tracing::error!(task = task_id, error = %e, "spool: cannot keep a record; delivering it without the spool");
                }
            }
        }
        self.put_or_keep(&name, &bytes)
    }

    fn put_spooled(
        &self,
        spool: &SharedSpool,
        name: &str,
        bytes: &[u8],
    ) -> Result<String, DeliveryError> {
        match self.sink.put(name, bytes) {
            Ok(at) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = spool.lock().delivered(name) {
                    tracing::warn!(error = %e, "spool: cannot mark a record delivered (it may be put again, under the same name)");
                }
                Ok(at)
            }
            Err(source) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(DeliveryError::Spooled {
                    source,
                    spool: spool.lock().path().to_path_buf(),
                })
            }
        }
    }

    /// Puts into the sink; if that fails (directory full, read-only,
    /// removed), keeps the record in the fallback directory so it is not
    /// lost, and says where.
    fn put_or_keep(&self, name: &str, bytes: &[u8]) -> Result<String, DeliveryError> {
        let primary = match self.sink.put(name, bytes) {
            Ok(at) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                return Ok(at);
            }
            Err(e) => e,
        };
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        match BundleDir::new(&self.fallback_dir).and_then(|d| d.put(name, bytes)) {
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
    /// the same way).
    pub(crate) fn deliver_spooled(&self, older_than: Duration) {
        let Some(spool) = &self.spool else { return };
        // Not in the `for` header: the guard would live through the loop.
        let waiting = spool.lock().undelivered(older_than);
        for r in waiting {
            match self.sink.put(&r.bundle_file, &r.bundle_json) {
                Ok(at) => {
                    self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = spool.lock().delivered(&r.bundle_file) {
                        tracing::warn!(error = %e, "spool: cannot mark a record delivered");
                    }
                    tracing::info!(task = %r.task_id, at = %at, "record delivered from the spool");
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(task = %r.task_id, error = %e, "record still undeliverable: kept in the spool");
                    return;
                }
            }
        }
    }

    /// Starts a retry pass off the caller's thread, unless one runs or none
    /// is due.
    pub(crate) fn retry(self: &Arc<Self>) {
        let due = self
            .spool
            .as_ref()
            .is_some_and(|s| s.lock().undelivered_count() > 0);
        if !due || self.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.deliver_spooled(RETRY_AFTER);
            me.retrying.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::records::{BundleName, Record, Summary, fragment::Fragment};

    fn record(pod: &str) -> Record {
        Record {
            fragment: Fragment::example(),
            bundle: BundleName {
                pod: pod.into(),
                container: "c".into(),
                attempt: "0".into(),
            },
            owner: Default::default(),
            summary: Summary::default(),
        }
    }

    /// Through the spool into a sink that takes it: delivered once, marked
    /// delivered in the spool (this deadlocked when the spool's lock was
    /// still held while marking it).
    #[test]
    fn spooled_records_are_delivered_and_marked() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("bundles");
        let (spool, _) = SharedSpool::open(&root.path().join("spool"), "n").unwrap();
        let d = Delivery::new(
            Box::new(BundleDir::new(&dir).unwrap()),
            root.path().join("unsent"),
        )
        .with_spool(spool.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(d.deliver("t", &record("a")).is_ok()).unwrap());
        let delivered = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("delivery through the spool did not finish (deadlock?)");
        assert!(delivered);
        assert!(dir.join("roar-fragments-a-c-0.json").exists());
        assert_eq!(spool.lock().undelivered_count(), 0);
    }

    /// Without a spool, a record the sink refuses is kept in the fallback
    /// directory; with one, it stays in the spool and a retry puts it once
    /// the sink takes it.
    #[test]
    fn refused_records_are_kept_then_delivered() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("bundles");
        let fallback = root.path().join("unsent");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();
        // Root ignores directory modes: only test what the machine enforces.
        let enforced = std::fs::write(dir.join("probe"), b"").is_err();
        let plain = Delivery::new(Box::new(BundleDir::new(&dir).unwrap()), fallback.clone());
        let spooled = Delivery::new(Box::new(BundleDir::new(&dir).unwrap()), fallback.clone())
            .with_spool(
                SharedSpool::open(&root.path().join("spool"), "n")
                    .unwrap()
                    .0,
            );
        if enforced {
            let e = plain.deliver("t", &record("a")).unwrap_err();
            assert!(matches!(e, DeliveryError::Kept { .. }), "{e}");
            assert!(fallback.join("roar-fragments-a-c-0.json").exists());
            let e = spooled.deliver("t2", &record("b")).unwrap_err();
            assert!(matches!(e, DeliveryError::Spooled { .. }), "{e}");
            assert_eq!(spooled.spool().unwrap().lock().undelivered_count(), 1);
        } else {
            assert!(plain.deliver("t", &record("a")).is_ok());
            // Make the spooled path retry: put it in the spool by hand.
            let bytes = bundle_bytes(&record("b")).unwrap();
            spooled
                .spool()
                .unwrap()
                .lock()
                .record_ready(pb::RecordReady {
                    task_id: "t2".into(),
                    bundle_file: record("b").bundle.file_name(),
                    bundle_json: bytes.into(),
                })
                .unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        spooled.deliver_spooled(Duration::ZERO);
        assert_eq!(spooled.spool().unwrap().lock().undelivered_count(), 0);
        assert!(dir.join("roar-fragments-b-c-0.json").exists());
        assert_eq!(spooled.stats.redelivered.load(Ordering::Relaxed), 1);
    }
}
