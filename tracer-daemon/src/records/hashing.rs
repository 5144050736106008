//! BLAKE3 of task files, off the event path.
//!
//! Worker threads hash files inside the mount namespace a job names
//! (`setns` per thread, after `unshare(CLONE_FS)`, which is what lets one
//! thread of a multi-threaded process switch namespaces). Results are
//! cached by file identity and version: (device, inode, size, mtime,
//! ctime).

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
};

use nix::sched::{CloneFlags, setns, unshare};

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

    fn set(&self, v: HashOutcome) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        self.ready.notify_all();
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
    pub(crate) slot: Arc<HashSlot>,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub(crate) struct HashStats {
    pub(crate) files: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
}

type CacheKey = (u64, u64, u64, i64, i64, i64, i64);

struct Cache {
    map: HashMap<CacheKey, String>,
    order: VecDeque<CacheKey>,
    cap: usize,
}

impl Cache {
    fn get(&self, k: &CacheKey) -> Option<String> {
        self.map.get(k).cloned()
    }

    fn put(&mut self, k: CacheKey, v: String) {
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

pub(crate) struct HashPool {
    tx: Option<SyncSender<HashJob>>,
    workers: Vec<JoinHandle<()>>,
    pub(crate) stats: Arc<HashStats>,
    queued: Arc<AtomicU64>,
}

impl HashPool {
    /// `workers` threads, `queue` jobs waiting at most, `cache` digests
    /// remembered.
    pub(crate) fn new(workers: usize, queue: usize, cache: usize) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<HashJob>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let cache = Arc::new(Mutex::new(Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cache,
        }));
        let stats = Arc::new(HashStats::default());
        let queued = Arc::new(AtomicU64::new(0));
        let own = Arc::new(MountNs::current()?);
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let (rx, cache, stats, own, queued) = (
                rx.clone(),
                cache.clone(),
                stats.clone(),
                own.clone(),
                queued.clone(),
            );
            handles.push(
                std::thread::Builder::new()
                    .name(format!("hash-{i}"))
                    .spawn(move || worker(rx, cache, stats, own, queued))?,
            );
        }
        Ok(Self {
            tx: Some(tx),
            workers: handles,
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
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(
    rx: Arc<Mutex<Receiver<HashJob>>>,
    cache: Arc<Mutex<Cache>>,
    stats: Arc<HashStats>,
    own: Arc<MountNs>,
    queued: Arc<AtomicU64>,
) {
    // A thread sharing its fs_struct with others may not change mount
    // namespace; give this one its own.
    let can_switch = unshare(CloneFlags::CLONE_FS).is_ok();
    let mut current = own.inum;
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        let want = job.ns.clone().unwrap_or_else(|| own.clone());
        let outcome = if want.inum != current {
            if !can_switch {
                HashOutcome::Unreadable("cannot switch mount namespace (unshare failed)".into())
            } else {
                match setns(want.fd(), CloneFlags::CLONE_NEWNS) {
                    Ok(()) => {
                        current = want.inum;
                        hash_file(&job, &cache, &stats)
                    }
                    Err(e) => HashOutcome::Unreadable(format!("cannot enter mount namespace: {e}")),
                }
            }
        } else {
            hash_file(&job, &cache, &stats)
        };
        job.slot.set(outcome);
        queued.fetch_sub(1, Ordering::Relaxed);
    }
}

fn version(m: &std::fs::Metadata) -> CacheKey {
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// Opens `path` for reading without following any symbolic link. Paths in
/// records come from the kernel's dentry walk, so they contain none; a link
/// found there now was put by the task after the fact, and following it
/// would let a task learn the hash of a file it cannot read (roar-node reads
/// with more privilege than the task).
fn open_no_symlinks(path: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(AT_FDCWD, path, how).map_err(std::io::Error::from)?;
    Ok(std::fs::File::from(fd))
}

fn hash_file(job: &HashJob, cache: &Mutex<Cache>, stats: &HashStats) -> HashOutcome {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(&job.path));
    let file = match open_no_symlinks(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashOutcome::Missing,
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return HashOutcome::Missing,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return HashOutcome::Unreadable(
                "a symbolic link is now on the path (not followed: the task could point it at a file it cannot read)"
                    .into(),
            );
        }
        Err(e) => return HashOutcome::Unreadable(e.to_string()),
    };
    for _attempt in 0..2 {
        let before = match file.metadata() {
            Ok(m) => m,
            Err(e) => return HashOutcome::Unreadable(e.to_string()),
        };
        if !before.file_type().is_file() {
            return HashOutcome::NotRegular;
        }
        if let Some((dev, ino)) = job.expect
            && (before.dev(), before.ino()) != (dev, ino)
        {
            return HashOutcome::Changed;
        }
        let key = version(&before);
        let cached = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key);
        if let Some(hex) = cached {
            stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return HashOutcome::Hashed(FileDigest {
                blake3: hex,
                size: before.size(),
                dev: before.dev(),
                ino: before.ino(),
            });
        }
        let hex = match digest(&file) {
            Ok((hex, n)) => {
                stats.bytes.fetch_add(n, Ordering::Relaxed);
                hex
            }
            Err(e) => return HashOutcome::Unreadable(e.to_string()),
        };
        let after = match file.metadata() {
            Ok(m) => m,
            Err(e) => return HashOutcome::Unreadable(e.to_string()),
        };
        if version(&after) != key {
            continue; // written to while we read it: once more
        }
        stats.files.fetch_add(1, Ordering::Relaxed);
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, hex.clone());
        return HashOutcome::Hashed(FileDigest {
            blake3: hex,
            size: after.size(),
            dev: after.dev(),
            ino: after.ino(),
        });
    }
    HashOutcome::Changed
}

fn digest(mut file: &File) -> std::io::Result<(String, u64)> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let r = file.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((h.finalize().to_hex().to_string(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(path: &Path, expect: Option<(u64, u64)>) -> (HashJob, Arc<HashSlot>) {
        use std::os::unix::ffi::OsStrExt;
        let slot = HashSlot::new();
        (
            HashJob {
                ns: None,
                path: path.as_os_str().as_bytes().to_vec(),
                expect,
                slot: slot.clone(),
            },
            slot,
        )
    }

    #[test]
    fn hashes_caches_and_reports_problems() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, b"hello").unwrap();
        let pool = HashPool::new(2, 16, 100).unwrap();

        let (j, slot) = job(&f, None);
        pool.submit(j);
        let HashOutcome::Hashed(d) = slot.wait() else {
            panic!()
        };
        assert_eq!(d.blake3, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(d.size, 5);

        let (j, slot) = job(&f, None);
        pool.submit(j);
        assert!(matches!(slot.wait(), HashOutcome::Hashed(_)));
        assert_eq!(pool.stats.cache_hits.load(Ordering::Relaxed), 1);

        let (j, slot) = job(&dir.path().join("nope"), None);
        pool.submit(j);
        assert_eq!(slot.wait(), HashOutcome::Missing);

        let (j, slot) = job(dir.path(), None);
        pool.submit(j);
        assert_eq!(slot.wait(), HashOutcome::NotRegular);

        let (j, slot) = job(&f, Some((d.dev, d.ino + 1)));
        pool.submit(j);
        assert_eq!(slot.wait(), HashOutcome::Changed);
    }
}
