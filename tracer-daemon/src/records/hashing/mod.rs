//! BLAKE3 of task files, off the event path.
//!
//! Worker threads hash files inside the mount namespace a job names
//! (`setns` per thread, after `unshare(CLONE_FS)`, which is what lets one
//! thread of a multi-threaded process switch namespaces). Results are
//! cached by file identity and version: (device, inode, size, mtime,
//! ctime).
//!
//! A file may never finish reading: a hung network or FUSE mount, a file
//! that keeps growing. Every file has a time and a byte budget
//! ([`HashBudget`]); past them it is recorded unhashed with the reason.
//! A read blocked in the kernel cannot be cancelled (NFS and FUSE wait
//! uninterruptibly once the request is sent), so the watchdog
//! ([`watchdog`]) answers for a worker that stopped making progress,
//! abandons it to its blocked call and starts a replacement: the pool and
//! every other task's records go on. Each step is counted
//! ([`HashStats`]).

mod cache;
#[cfg(test)]
mod tests;
mod watchdog;
mod worker;

use std::{
    collections::HashMap,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

use self::{cache::Cache, watchdog::Watchdog};
use super::mountns::MountNs;

/// What hashing one file gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HashOutcome {
    Hashed(FileDigest),
    /// No file at that path (deleted or renamed away).
    Missing,
    /// Something other than a regular file is there now.
    NotRegular,
    /// A different file than the one the task read is at the path now, or
    /// it kept changing while being hashed.
    Changed,
    /// Could not be read (permissions, I/O error, namespace gone).
    Unreadable(String),
    /// Given up past the file's time or byte budget, or its file system
    /// hung (the reason says which).
    OverBudget(String),
}

impl HashOutcome {
    /// A short reason for records, for anything but `Hashed`.
    pub(crate) fn reason(&self) -> String {
        match self {
            Self::Hashed(_) => "hashed".into(),
            Self::Missing => "missing".into(),
            Self::NotRegular => "not a regular file".into(),
            Self::Changed => "replaced or modified before it could be hashed".into(),
            Self::Unreadable(e) => format!("unreadable: {e}"),
            Self::OverBudget(e) => format!("not hashed: {e}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileDigest {
    /// Lowercase hex BLAKE3.
    pub(crate) blake3: String,
    pub(crate) size: u64,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// Where a job's result lands; waited on by whoever builds the record.
#[derive(Debug, Default)]
pub(crate) struct HashSlot {
    value: Mutex<Option<HashOutcome>>,
    ready: Condvar,
}

impl HashSlot {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A slot that already holds its outcome (nothing to hash).
    pub(crate) fn ready(v: HashOutcome) -> Arc<Self> {
        let slot = Self::new();
        slot.set(v);
        slot
    }

    /// Sets the outcome unless one is set already (the watchdog may have
    /// answered for a worker that was too slow): whether this one counts.
    fn set(&self, v: HashOutcome) -> bool {
        let mut g = self.value.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_some() {
            return false;
        }
        *g = Some(v);
        self.ready.notify_all();
        true
    }

    pub(crate) fn wait(&self) -> HashOutcome {
        let mut g = self.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = g.as_ref() {
                return v.clone();
            }
            g = self.ready.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

pub(crate) struct HashJob {
    /// Namespace to look the path up in; `None`: the daemon's own.
    pub(crate) ns: Option<Arc<MountNs>>,
    pub(crate) path: Vec<u8>,
    /// (dev, ino) the file must still have (an input that was read).
    pub(crate) expect: Option<(u64, u64)>,
    /// `stat` device the file was on when the task used it, if known: a
    /// file system known to hang is not tried again.
    pub(crate) dev: Option<u64>,
    pub(crate) slot: Arc<HashSlot>,
}

/// How much one file may cost to hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HashBudget {
    /// From opening the file to its last byte.
    pub(crate) time: Duration,
    /// Bytes read.
    pub(crate) bytes: u64,
    /// Longest one call (open, stat, read) may block before its file
    /// system is taken for hung: the worker is abandoned and replaced.
    pub(crate) stall: Duration,
}

impl Default for HashBudget {
    /// Generous for big checkpoints on network storage (10 minutes, 1 TiB
    /// a file); a minute without a read returning is a hung mount.
    fn default() -> Self {
        Self {
            time: Duration::from_secs(600),
            bytes: 1 << 40,
            stall: Duration::from_secs(60),
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub(crate) struct HashStats {
    pub(crate) files: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    /// Files not hashed past their time or byte budget, or on a file
    /// system that hung.
    pub(crate) over_budget: AtomicU64,
    /// Workers abandoned to a call that did not return (each replaced).
    pub(crate) workers_abandoned: AtomicU64,
    /// Of those, still blocked in the kernel.
    pub(crate) workers_stuck: AtomicU64,
    /// Of `over_budget`, files not tried because their file system had
    /// hung on another.
    pub(crate) hung_skipped: AtomicU64,
}

/// What workers and the watchdog share.
struct Shared {
    rx: Mutex<std::sync::mpsc::Receiver<HashJob>>,
    cache: Mutex<Cache>,
    stats: Arc<HashStats>,
    own: Arc<MountNs>,
    /// Jobs waiting or running.
    queued: Arc<AtomicU64>,
    budget: HashBudget,
    /// Devices with a worker blocked on them, and how many.
    hung: Mutex<HashMap<u64, u32>>,
}

impl Shared {
    /// Sets a job's outcome, once: the first answer (a worker's or the
    /// watchdog's) ends the job.
    fn finish(&self, slot: &HashSlot, outcome: HashOutcome) {
        if slot.set(outcome) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn is_hung(&self, dev: u64) -> bool {
        self.hung
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&dev)
    }

    /// A worker is blocked on `dev` (`+1`), or returned from it (`-1`).
    fn mark_hung(&self, dev: u64, blocked: bool) {
        let mut hung = self.hung.lock().unwrap_or_else(|e| e.into_inner());
        let n = hung.entry(dev).or_default();
        if blocked {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                hung.remove(&dev);
            }
        }
    }
}

pub(crate) struct HashPool {
    tx: Option<SyncSender<HashJob>>,
    watchdog: Option<Watchdog>,
    pub(crate) stats: Arc<HashStats>,
    queued: Arc<AtomicU64>,
}

impl HashPool {
    /// `workers` threads, `queue` jobs waiting at most, `cache` digests
    /// remembered, each file within `budget`.
    pub(crate) fn new(
        workers: usize,
        queue: usize,
        cache: usize,
        budget: HashBudget,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<HashJob>(queue);
        let stats = Arc::new(HashStats::default());
        let queued = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            rx: Mutex::new(rx),
            cache: Mutex::new(Cache::new(cache)),
            stats: stats.clone(),
            own: Arc::new(MountNs::current()?),
            queued: queued.clone(),
            budget,
            hung: Mutex::new(HashMap::new()),
        });
        Ok(Self {
            tx: Some(tx),
            watchdog: Some(Watchdog::start(shared, workers.max(1))?),
            stats,
            queued,
        })
    }

    /// Queues a job unless the queue is full (the caller never blocks).
    pub(crate) fn try_submit(&self, job: HashJob) -> Result<(), HashJob> {
        let Some(tx) = &self.tx else { return Err(job) };
        self.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Err(j)
            }
        }
    }

    /// Queues a job, waiting for room (for record building, off the event
    /// path).
    pub(crate) fn submit(&self, job: HashJob) {
        let slot = job.slot.clone();
        let Some(tx) = &self.tx else {
            slot.set(HashOutcome::Unreadable("hashing stopped".into()));
            return;
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        if tx.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            slot.set(HashOutcome::Unreadable("hashing stopped".into()));
        }
    }

    /// Jobs waiting or running.
    pub(crate) fn depth(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        // Workers leave once the queue is closed and empty; one blocked in
        // a hung file system is abandoned by the watchdog, not waited for.
        self.tx = None;
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
    }
}
