//! The daemon's durable spool: what must survive a `kill -9`.
//!
//! An append-only journal (`journal.pb`) of checksummed, length-delimited
//! protobuf entries (schema: `proto/spool.proto`): tasks being traced,
//! heartbeats, finished records (before anyone else sees them) and their
//! delivery. After a crash the next daemon replays it: records not yet
//! delivered are delivered (exactly once: the bundle's name and bytes are
//! fixed, the write is an atomic rename), tasks that were open are known
//! to have a gap, from the last heartbeat to the restart.
//!
//! A torn last entry (the crash hit mid-write) is cut off; an entry whose
//! checksum does not match is skipped and counted. Both are reported.

use std::{
    collections::BTreeMap,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

pub(crate) use crate::proto as pb;

mod journal;

pub(crate) use self::journal::now_ns;
use self::journal::{Live, boot_id, decode_journal, frame};
use pb::entry::Kind;

pub(crate) const FILE_NAME: &str = "journal.pb";
const VERSION: u32 = 1;
/// Rewrite the journal once it is this much larger than what is live.
const COMPACT_SLACK: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "spool {path} was written for node {found:?}, this is node {expected:?}: refusing to mix them"
    )]
    OtherNode {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// What a previous daemon left.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Tasks it was tracing (their capture has a gap now).
    pub(crate) open_tasks: Vec<pb::TaskOpened>,
    /// The last checkpoint of each, by task id.
    pub(crate) checkpoints: BTreeMap<String, pb::TaskCheckpoint>,
    /// Records it finished but did not deliver.
    pub(crate) undelivered: Vec<pb::RecordReady>,
    /// Its last sign of life (unix ns), if it left any.
    pub(crate) last_alive_ns: Option<u64>,
    /// The node rebooted since: cgroup ids of open tasks mean nothing.
    pub(crate) rebooted: bool,
    /// Entries skipped: checksum or decoding failed.
    pub(crate) corrupt_entries: u64,
    /// Bytes of a torn last entry, cut off.
    pub(crate) torn_bytes: u64,
}

/// The spool, shared by the daemon's loop (tasks, checkpoints,
/// heartbeats) and delivery (records), each holding the lock briefly.
#[derive(Clone)]
pub(crate) struct SharedSpool(std::sync::Arc<std::sync::Mutex<Spool>>);

impl SharedSpool {
    /// [`Spool::open`], shared.
    pub(crate) fn open(dir: &Path, node: &str) -> Result<(Self, Recovered), SpoolError> {
        let (spool, recovered) = Spool::open(dir, node)?;
        Ok((
            Self(std::sync::Arc::new(std::sync::Mutex::new(spool))),
            recovered,
        ))
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Spool> {
        // A panic while holding the lock leaves the spool's state as the
        // journal has it: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Spool {
    path: PathBuf,
    file: File,
    node: String,
    boot_id: String,
    bytes: u64,
    open: BTreeMap<String, pb::TaskOpened>,
    undelivered: BTreeMap<String, pb::RecordReady>,
    /// The last checkpoint of each open task, as its encoded frame (what
    /// compaction writes back; smaller than the decoded state).
    checkpoints: BTreeMap<String, Vec<u8>>,
    /// Their encoded size.
    checkpoints_bytes: u64,
    /// When this process spooled each undelivered record (absent: a
    /// previous daemon did).
    spooled_at: BTreeMap<String, std::time::Instant>,
    /// Bytes of the undelivered records' bundles.
    undelivered_bytes: u64,
    /// When this process opened the spool (the earliest it knows a record
    /// a previous daemon left was waiting).
    opened_at: std::time::Instant,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir` (0700; the journal 0600),
    /// replays what a previous daemon left, and rewrites the journal with
    /// only what is still live. The open tasks it returns are still open
    /// in the spool (with the gap added): close them with `record_ready`
    /// or `task_closed`.
    pub(crate) fn open(dir: &Path, node: &str) -> Result<(Self, Recovered), SpoolError> {
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        let path = dir.join(FILE_NAME);
        let old = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let (entries, corrupt, valid) = decode_journal(&old);
        let boot = boot_id();
        let mut live =
            Live::replay(entries, node, &boot).map_err(|found| SpoolError::OtherNode {
                path: path.clone(),
                found,
                expected: node.into(),
            })?;
        live.add_restart_gaps(now_ns());
        let rec = Recovered {
            open_tasks: live.open.values().cloned().collect(),
            checkpoints: live.checkpoints.clone(),
            undelivered: live.undelivered.values().cloned().collect(),
            last_alive_ns: live.last_alive,
            rebooted: live.rebooted,
            corrupt_entries: corrupt,
            torn_bytes: (old.len() - valid) as u64,
        };
        let frames: BTreeMap<String, Vec<u8>> = live
            .checkpoints
            .into_values()
            .map(|c| (c.task_id.clone(), frame(Kind::TaskCheckpoint(c))))
            .collect();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut spool = Self {
            path,
            file,
            node: node.into(),
            boot_id: boot,
            bytes: 0,
            open: live.open,
            undelivered: live.undelivered,
            checkpoints_bytes: frames.values().map(|f| f.len() as u64).sum(),
            checkpoints: frames,
            spooled_at: BTreeMap::new(),
            undelivered_bytes: 0,
            opened_at: std::time::Instant::now(),
        };
        spool.undelivered_bytes = spool
            .undelivered
            .values()
            .map(|r| r.bundle_json.len() as u64)
            .sum();
        spool.compact()?;
        Ok((spool, rec))
    }

    /// Rewrites the journal with what is live (atomically: a new file
    /// renamed over the old one).
    pub(crate) fn compact(&mut self) -> Result<(), SpoolError> {
        let mut buf = frame(Kind::Header(pb::Header {
            version: VERSION,
            node: self.node.clone(),
            boot_id: self.boot_id.clone(),
        }));
        for t in self.open.values() {
            buf.extend(frame(Kind::TaskOpened(t.clone())));
        }
        for f in self.checkpoints.values() {
            buf.extend_from_slice(f);
        }
        for r in self.undelivered.values() {
            buf.extend(frame(Kind::RecordReady(r.clone())));
        }
        buf.extend(frame(Kind::Heartbeat(pb::Heartbeat {})));
        let tmp = self.path.with_extension("pb.tmp");
        let path = self.path.clone();
        let write = || -> io::Result<File> {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            OpenOptions::new().append(true).open(&path)
        };
        self.file = write().map_err(io_err(&self.path))?;
        self.bytes = buf.len() as u64;
        Ok(())
    }

    fn append(&mut self, kind: Kind, durable: bool) -> Result<(), SpoolError> {
        let buf = frame(kind);
        self.write_frame(&buf, durable)?;
        self.maybe_compact()
    }

    fn write_frame(&mut self, buf: &[u8], durable: bool) -> Result<(), SpoolError> {
        // One write per entry (O_APPEND): a crash leaves at most one torn
        // entry, at the end.
        self.file.write_all(buf).map_err(io_err(&self.path))?;
        if durable {
            self.file.sync_data().map_err(io_err(&self.path))?;
        }
        self.bytes += buf.len() as u64;
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), SpoolError> {
        let live: u64 = self
            .undelivered
            .values()
            .map(|r| r.bundle_json.len() as u64 + 128)
            .sum::<u64>()
            + self.open.len() as u64 * 512
            + self.checkpoints_bytes;
        if self.bytes > live + COMPACT_SLACK {
            self.compact()?;
        }
        Ok(())
    }

    /// A task is traced: from now on a crash leaves a known gap.
    pub(crate) fn task_opened(&mut self, t: pb::TaskOpened) -> Result<(), SpoolError> {
        self.open.insert(t.task_id.clone(), t.clone());
        self.append(Kind::TaskOpened(t), false)
    }

    /// What the daemon knows of an open task now (replaces the previous
    /// checkpoint of it).
    pub(crate) fn checkpoint(&mut self, c: pb::TaskCheckpoint) -> Result<(), SpoolError> {
        if !self.open.contains_key(&c.task_id) {
            return Ok(());
        }
        let task_id = c.task_id.clone();
        let buf = frame(Kind::TaskCheckpoint(c));
        self.forget_checkpoint(&task_id);
        self.checkpoints_bytes += buf.len() as u64;
        self.write_frame(&buf, false)?;
        self.checkpoints.insert(task_id, buf);
        self.maybe_compact()
    }

    /// The programs stayed attached while no daemon ran (adopted from
    /// their pins): the restart gaps just added end at the dead daemon's
    /// last sign of life `alive_ns`, not at the restart. What it read from
    /// the ring buffer after its last checkpoint is all that is missing.
    pub(crate) fn capture_continued(&mut self, alive_ns: u64) {
        let mut changed = false;
        for t in self.open.values_mut() {
            let Some(g) = t.gaps.last_mut() else { continue };
            if g.to_ns < alive_ns {
                continue; // an older gap: this restart added none
            }
            changed = true;
            if g.from_ns >= alive_ns {
                t.gaps.pop();
                continue;
            }
            g.to_ns = alive_ns;
            g.why = "roar-node crashed; its programs stayed attached (pinned) and the next one read on: only the events it had read after its last checkpoint of this task were lost".into();
        }
        if changed && let Err(e) = self.compact() {
            tracing::warn!(error = %e, "spool: cannot rewrite the gaps");
        }
    }

    /// The open task with this id (from this run or a previous one).
    pub(crate) fn open_task(&self, task_id: &str) -> Option<&pb::TaskOpened> {
        self.open.get(task_id)
    }

    pub(crate) fn open_tasks(&self) -> impl Iterator<Item = &pb::TaskOpened> {
        self.open.values()
    }

    /// A task ends without a record.
    pub(crate) fn task_closed(&mut self, task_id: &str) -> Result<(), SpoolError> {
        self.forget_checkpoint(task_id);
        if self.open.remove(task_id).is_none() {
            return Ok(());
        }
        self.append(
            Kind::TaskClosed(pb::TaskClosed {
                task_id: task_id.into(),
            }),
            false,
        )
    }

    /// A finished record, on disk (synced) before it is delivered.
    pub(crate) fn record_ready(&mut self, r: pb::RecordReady) -> Result<(), SpoolError> {
        self.open.remove(&r.task_id);
        self.forget_checkpoint(&r.task_id);
        self.undelivered_bytes += r.bundle_json.len() as u64;
        if let Some(old) = self.undelivered.insert(r.bundle_file.clone(), r.clone()) {
            self.undelivered_bytes -= old.bundle_json.len() as u64;
        }
        self.spooled_at
            .insert(r.bundle_file.clone(), std::time::Instant::now());
        self.append(Kind::RecordReady(r), true)
    }

    /// The record is in its bundle file.
    pub(crate) fn delivered(&mut self, bundle_file: &str) -> Result<(), SpoolError> {
        self.spooled_at.remove(bundle_file);
        let Some(old) = self.undelivered.remove(bundle_file) else {
            return Ok(());
        };
        self.undelivered_bytes -= old.bundle_json.len() as u64;
        self.append(
            Kind::RecordDelivered(pb::RecordDelivered {
                bundle_file: bundle_file.into(),
            }),
            false,
        )
    }

    fn forget_checkpoint(&mut self, task_id: &str) {
        if let Some(old) = self.checkpoints.remove(task_id) {
            self.checkpoints_bytes -= old.len() as u64;
        }
    }

    /// Records waiting for delivery that nobody is delivering: left by a
    /// previous daemon, or spooled by this one more than `age` ago (the
    /// writer delivers right after spooling; this is for its failures).
    pub(crate) fn undelivered(&self, age: std::time::Duration) -> Vec<pb::RecordReady> {
        self.undelivered
            .values()
            .filter(|r| {
                self.spooled_at
                    .get(&r.bundle_file)
                    .is_none_or(|t| t.elapsed() >= age)
            })
            .cloned()
            .collect()
    }

    pub(crate) fn undelivered_count(&self) -> usize {
        self.undelivered.len()
    }

    /// Bytes of the records waiting for delivery.
    pub(crate) fn undelivered_bytes(&self) -> u64 {
        self.undelivered_bytes
    }

    /// How long the oldest record has been waiting (for a record a
    /// previous daemon left: at least since this one started).
    pub(crate) fn oldest_waiting(&self) -> Option<std::time::Duration> {
        self.undelivered
            .keys()
            .map(|k| {
                self.spooled_at
                    .get(k)
                    .copied()
                    .unwrap_or(self.opened_at)
                    .elapsed()
            })
            .max()
    }

    pub(crate) fn heartbeat(&mut self) -> Result<(), SpoolError> {
        self.append(Kind::Heartbeat(pb::Heartbeat {}), false)
    }

    /// The journal's size on disk.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;
