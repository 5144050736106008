//! One hashing thread: takes a job, enters its mount namespace, hashes the
//! file within its budget, and tells the watchdog it is making progress.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns, unshare};

use super::{FileDigest, HashBudget, HashJob, HashOutcome, HashSlot, Shared, cache::CacheKey};

/// What the watchdog sees of a worker.
#[derive(Default)]
pub(super) struct WorkerState {
    busy: Mutex<Option<Busy>>,
    /// Set by the watchdog: the job was answered and a replacement
    /// started; this thread leaves when its blocked call returns.
    abandoned: AtomicBool,
    /// The device it was abandoned on, given back when its call returns.
    stuck_on: Mutex<Option<u64>>,
}

/// The job a worker is on.
struct Busy {
    slot: Arc<HashSlot>,
    started: Instant,
    /// When a call last returned.
    progress: Instant,
    /// The file's device, once known.
    dev: Option<u64>,
}

/// The job of a worker the watchdog gave up on.
pub(super) struct Stalled {
    pub(super) slot: Arc<HashSlot>,
}

impl WorkerState {
    fn begin(&self, job: &HashJob) {
        let now = Instant::now();
        *self.lock() = Some(Busy {
            slot: job.slot.clone(),
            started: now,
            progress: now,
            dev: job.dev,
        });
    }

    /// Ends the job; false when the watchdog abandoned it first.
    fn end(&self) -> bool {
        let mut busy = self.lock();
        *busy = None;
        !self.abandoned.load(Ordering::Acquire)
    }

    fn progress(&self, dev: Option<u64>) {
        if let Some(b) = self.lock().as_mut() {
            b.progress = Instant::now();
            b.dev = dev.or(b.dev);
        }
    }

    /// Gives up on the job if no call returned within the stall budget
    /// (or the whole file took its time budget and a stall more): a call
    /// blocked in the kernel cannot be cancelled. Marks its device hung
    /// and counts it stuck, under the lock its own `end` takes, so the
    /// thread gives both back exactly once when its call returns.
    pub(super) fn give_up_if_stalled(&self, shared: &Shared, now: Instant) -> Option<Stalled> {
        let budget = &shared.budget;
        let mut busy = self.lock();
        let b = busy.as_ref()?;
        let stalled = now.duration_since(b.progress) > budget.stall
            || now.duration_since(b.started) > budget.time + budget.stall;
        if !stalled {
            return None;
        }
        let b = busy.take()?;
        self.abandoned.store(true, Ordering::Release);
        shared
            .stats
            .workers_abandoned
            .fetch_add(1, Ordering::Relaxed);
        shared.stats.workers_stuck.fetch_add(1, Ordering::Relaxed);
        if let Some(dev) = b.dev {
            shared.mark_hung(dev, true);
            *self.stuck_on.lock().unwrap_or_else(|e| e.into_inner()) = Some(dev);
        }
        Some(Stalled { slot: b.slot })
    }

    /// After its abandoned call returned: gives back its device and its
    /// place among the stuck.
    fn leave(&self, shared: &Shared) {
        if let Some(dev) = self
            .stuck_on
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            shared.mark_hung(dev, false);
        }
        shared.stats.workers_stuck.fetch_sub(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Busy>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The worker thread's loop, until the queue is closed or the watchdog
/// abandons it.
pub(super) fn run(shared: Arc<Shared>, me: Arc<WorkerState>) {
    // A thread sharing its fs_struct with others may not change mount
    // namespace; give this one its own.
    let can_switch = unshare(CloneFlags::CLONE_FS).is_ok();
    let mut current = shared.own.inum;
    loop {
        let job = {
            let rx = shared.rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        if let Some(dev) = job.dev
            && shared.is_hung(dev)
        {
            shared.stats.hung_skipped.fetch_add(1, Ordering::Relaxed);
            shared.stats.over_budget.fetch_add(1, Ordering::Relaxed);
            shared.finish(&job.slot, HashOutcome::OverBudget(HUNG_BEFORE.into()));
            continue;
        }
        me.begin(&job);
        let want = job.ns.clone().unwrap_or_else(|| shared.own.clone());
        let outcome = if want.inum == current {
            hash_file(&job, &shared, &me)
        } else if !can_switch {
            HashOutcome::Unreadable("cannot switch mount namespace (unshare failed)".into())
        } else {
            match setns(want.fd(), CloneFlags::CLONE_NEWNS) {
                Ok(()) => {
                    current = want.inum;
                    hash_file(&job, &shared, &me)
                }
                Err(e) => HashOutcome::Unreadable(format!("cannot enter mount namespace: {e}")),
            }
        };
        if !me.end() {
            // The watchdog answered for this job and replaced this thread.
            me.leave(&shared);
            return;
        }
        if matches!(outcome, HashOutcome::OverBudget(_)) {
            shared.stats.over_budget.fetch_add(1, Ordering::Relaxed);
        }
        shared.finish(&job.slot, outcome);
    }
}

const HUNG_BEFORE: &str = "its file system stopped answering while another of its files was read (a hung network or FUSE mount?)";

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

/// Time and bytes of one file against its budget; every returned call
/// is progress the watchdog sees.
struct Meter<'a> {
    me: &'a WorkerState,
    budget: HashBudget,
    started: Instant,
}

impl Meter<'_> {
    fn tick(&self, dev: Option<u64>) {
        self.me.progress(dev);
    }

    fn over_time(&self) -> Option<HashOutcome> {
        (self.started.elapsed() > self.budget.time).then(|| {
            HashOutcome::OverBudget(format!(
                "reading it took longer than the {} hashing budget for one file",
                secs(self.budget.time)
            ))
        })
    }
}

pub(super) fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn hash_file(job: &HashJob, shared: &Shared, me: &WorkerState) -> HashOutcome {
    use std::os::unix::ffi::OsStrExt;
    let meter = Meter {
        me,
        budget: shared.budget,
        started: Instant::now(),
    };
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
    meter.tick(None);
    for _attempt in 0..2 {
        match hash_open_file(&file, job, shared, &meter) {
            Attempt::Done(outcome) => return outcome,
            Attempt::ChangedWhileRead => continue,
        }
    }
    HashOutcome::Changed
}

/// One try at hashing an open file.
enum Attempt {
    Done(HashOutcome),
    /// Written to while it was read: worth once more.
    ChangedWhileRead,
}

fn hash_open_file(file: &File, job: &HashJob, shared: &Shared, meter: &Meter<'_>) -> Attempt {
    let done = Attempt::Done;
    let before = match file.metadata() {
        Ok(m) => m,
        Err(e) => return done(HashOutcome::Unreadable(e.to_string())),
    };
    meter.tick(Some(before.dev()));
    if !before.file_type().is_file() {
        return done(HashOutcome::NotRegular);
    }
    if let Some((dev, ino)) = job.expect
        && (before.dev(), before.ino()) != (dev, ino)
    {
        return done(HashOutcome::Changed);
    }
    if before.size() > meter.budget.bytes {
        return done(HashOutcome::OverBudget(format!(
            "{} bytes, over the {} byte hashing budget for one file",
            before.size(),
            meter.budget.bytes
        )));
    }
    let key = version(&before);
    let digest_of = |hex: String, m: &std::fs::Metadata| {
        HashOutcome::Hashed(FileDigest {
            blake3: hex,
            size: m.size(),
            dev: m.dev(),
            ino: m.ino(),
        })
    };
    let cached = shared
        .cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key);
    if let Some(hex) = cached {
        shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        return done(digest_of(hex, &before));
    }
    let hex = match digest(file, before.size(), meter) {
        Ok(Ok((hex, n))) => {
            shared.stats.bytes.fetch_add(n, Ordering::Relaxed);
            hex
        }
        Ok(Err(over)) => return done(over),
        Err(e) => return done(HashOutcome::Unreadable(e.to_string())),
    };
    let after = match file.metadata() {
        Ok(m) => m,
        Err(e) => return done(HashOutcome::Unreadable(e.to_string())),
    };
    if version(&after) != key {
        return Attempt::ChangedWhileRead;
    }
    shared.stats.files.fetch_add(1, Ordering::Relaxed);
    shared
        .cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .put(key, hex.clone());
    done(digest_of(hex, &after))
}

/// BLAKE3 of the file's first `size` bytes (its size when hashing began:
/// a file that keeps growing is not followed; the version check after
/// says it changed). `Ok(Err(..))`: the time budget ran out.
fn digest(
    mut file: &File,
    size: u64,
    meter: &Meter<'_>,
) -> std::io::Result<Result<(String, u64), HashOutcome>> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    while n < size {
        let want = buf.len().min((size - n) as usize);
        let r = file.read(&mut buf[..want])?;
        meter.tick(None);
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
        if let Some(over) = meter.over_time() {
            return Ok(Err(over));
        }
    }
    Ok(Ok((h.finalize().to_hex().to_string(), n)))
}
