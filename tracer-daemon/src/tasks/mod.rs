//! Per-task state machines: the process tree and the file accesses of
//! every traced task, built from events. Pure logic, no kernel, no I/O:
//! which task an event belongs to is already decided (`events` carries the
//! task's root cgroup), and when a task is over is decided by the caller
//! (`roar-node run` waits for its cgroup to empty; the daemon follows
//! container status).

pub(crate) mod checkpoint;
pub(crate) mod files;
pub(crate) mod process;

use roar_node_common::event::EventKind;

use roar_node_common::{
    event::{EXEC_ARGV_READ_ERROR, EXEC_MNT_NS_UNKNOWN, EXEC_PPID_UNKNOWN, EXEC_UID_UNKNOWN},
    path::PATH_INCOMPLETE,
};

pub(crate) use self::{
    files::{FileBudget, FileKey, FileState, FileTable, FirstRead},
    process::{Process, ProcessTree},
};
use crate::events::{Body, Event, FilePath};

/// Caps that bound one task's memory.
#[derive(Clone, Copy, Debug)]
pub struct TaskLimits {
    pub max_files: usize,
    pub max_processes: usize,
    /// argv bytes held over all the task's processes.
    pub max_argv_bytes: u64,
    /// Paths held over all tasks together (see `FileBudget`).
    pub max_files_total: usize,
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            max_files: 1_000_000,
            max_processes: 100_000,
            max_argv_bytes: 64 << 20,
            max_files_total: usize::MAX,
        }
    }
}

/// Counters that go into the task's record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskStats {
    /// Events applied, by `EventKind`.
    pub(crate) events: [u64; EventKind::COUNT],
    /// First reads not hashed promptly because the hash queue was full
    /// (hashed at the end instead).
    pub(crate) input_hash_deferred: u64,
    /// Events with a path the kernel could not read to the end.
    pub(crate) inexact_events: u64,
    /// Fields of events a failed kernel read left unknown.
    pub(crate) unreadable: UnreadableFields,
}

/// How many times each event field could not be read in the kernel (the
/// event was sent with the field flagged unknown, never a made-up value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UnreadableFields {
    /// An exec's parent process.
    pub(crate) ppid: u64,
    /// An exec's mount namespace (its files are looked up in the task's
    /// first namespace instead).
    pub(crate) mount_namespace: u64,
    pub(crate) uid: u64,
    pub(crate) argv: u64,
    /// An open's flags (whether it truncated the file).
    pub(crate) open_flags: u64,
    /// An open's file size.
    pub(crate) size: u64,
}

impl UnreadableFields {
    pub(crate) fn total(&self) -> u64 {
        self.ppid + self.mount_namespace + self.uid + self.argv + self.open_flags + self.size
    }

    fn count(&mut self, ev: &Body) {
        match ev {
            Body::Exec(e) => {
                let bit = |b: u32| u64::from(e.unknown & b != 0);
                self.ppid += bit(EXEC_PPID_UNKNOWN);
                self.mount_namespace += bit(EXEC_MNT_NS_UNKNOWN);
                self.uid += bit(EXEC_UID_UNKNOWN);
                self.argv += bit(EXEC_ARGV_READ_ERROR);
            }
            Body::Open(o) => {
                self.open_flags += u64::from(o.flags_unknown);
                self.size += u64::from(o.size_unknown);
            }
            _ => {}
        }
    }
}

impl TaskStats {
    pub(crate) fn total_events(&self) -> u64 {
        self.events.iter().sum()
    }
}

/// Whether an event carries a path the kernel could not read to the end
/// (on the event path: no allocation).
fn has_incomplete_path(body: &Body) -> bool {
    let incomplete = |p: &FilePath| p.inexact & PATH_INCOMPLETE != 0;
    match body {
        Body::Exec(e) => incomplete(&e.exe),
        Body::Open(o) => incomplete(&o.path),
        Body::Rename { old, new, .. } => incomplete(old) || incomplete(new),
        Body::Unlink { path, .. } => incomplete(path),
        Body::Link(l) => incomplete(&l.old) || incomplete(&l.new),
        Body::Fork { .. } | Body::Exit { .. } | Body::Cgroup(_) => false,
    }
}

#[derive(Debug)]
pub struct Task {
    pub(crate) processes: ProcessTree,
    pub(crate) files: FileTable,
    pub(crate) stats: TaskStats,
    pub(crate) first_ns: Option<u64>,
    pub(crate) last_ns: Option<u64>,
}

impl Task {
    pub fn new(limits: TaskLimits) -> Self {
        Self {
            processes: ProcessTree::with_argv_cap(limits.max_processes, limits.max_argv_bytes),
            files: FileTable::new(limits.max_files),
            stats: TaskStats::default(),
            first_ns: None,
            last_ns: None,
        }
    }

    /// Counts its paths against `budget` too (paths all tasks together may
    /// hold).
    pub(crate) fn with_budget(mut self, budget: Option<std::sync::Arc<FileBudget>>) -> Self {
        self.files = std::mem::take(&mut self.files).with_budget(budget);
        self
    }

    /// Every key of the task's file table, and whether it parses as an
    /// exact path (for the fuzzer: a key that is not a real absolute path
    /// must never be taken for one).
    pub fn file_keys(&self) -> Vec<(Vec<u8>, bool)> {
        self.files
            .iter()
            .map(|(k, _)| (k.clone(), matches!(FileKey::parse(k), FileKey::Exact(_))))
            .collect()
    }

    /// Applies one event; returns a first read of pre-existing content,
    /// which the caller hashes right away.
    pub fn apply(&mut self, ev: &Event) -> Option<FirstRead> {
        self.stats.events[ev.body.kind() as usize] += 1;
        if has_incomplete_path(&ev.body) {
            self.stats.inexact_events += 1;
        }
        self.stats.unreadable.count(&ev.body);
        self.first_ns.get_or_insert(ev.time_ns);
        self.last_ns = Some(self.last_ns.map_or(ev.time_ns, |t| t.max(ev.time_ns)));
        match &ev.body {
            Body::Exec(e) => self.processes.exec(ev.tgid, e, ev.time_ns),
            Body::Fork {
                child_tgid, thread, ..
            } => self
                .processes
                .fork(ev.tgid, *child_tgid, *thread, ev.time_ns),
            Body::Exit { status } => self.processes.exit(ev.tgid, *status, ev.time_ns),
            Body::Open(o) => {
                let ns = self.processes.mnt_ns(ev.tgid);
                return self.files.open(o, ev.time_ns, ns);
            }
            Body::Rename { old, new, exchange } => {
                self.files.rename(old, new, *exchange, ev.time_ns)
            }
            Body::Unlink { path, .. } => self.files.unlink(path),
            Body::Link(l) => self.files.link(l, ev.time_ns),
            Body::Cgroup(_) => {}
        }
        None
    }
}
