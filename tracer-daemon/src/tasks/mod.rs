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

pub(crate) use self::{
    files::{FileBudget, FileState, FileTable, FirstRead},
    process::{Process, ProcessTree},
};
use crate::events::{Body, Event};

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
}

impl TaskStats {
    pub(crate) fn total_events(&self) -> u64 {
        self.events.iter().sum()
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

    /// Applies one event; returns a first read of pre-existing content,
    /// which the caller hashes right away.
    pub fn apply(&mut self, ev: &Event) -> Option<FirstRead> {
        self.stats.events[ev.body.kind() as usize] += 1;
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
            Body::Cgroup(_) => {}
        }
        None
    }
}
