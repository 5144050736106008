//! The event path, shared by `run` and `daemon`: decode a ring-buffer
//! record, apply it to its task, and start work that must happen promptly
//! (hashing an input while it is still there, holding a new mount
//! namespace open while a process still lives in it). Never blocks: a full
//! hash queue defers the hash to the end of the task, and says so.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use roar_node_common::{event::EventKind, filter::FilterEntry};

use crate::{
    events::{Body, Event, parse},
    records::{
        CaptureFacts, FinishedTask, TaskIdentity,
        hashing::{HashJob, HashPool, HashSlot},
        mountns::{MountNs, Namespaces, NsView},
    },
    tasks::{Task, TaskLimits, TaskTable},
};

/// Counters over all tasks, for metrics and summaries.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub records: u64,
    pub by_kind: [u64; EventKind::COUNT],
    /// Records the decoder rejected, by reason.
    pub undecodable: HashMap<&'static str, u64>,
}

impl EngineStats {
    pub fn undecodable_total(&self) -> u64 {
        self.undecodable.values().sum()
    }
}

/// A task taken out of the engine, with what its record needs.
pub struct Finished {
    pub task: Task,
    pub input_hashes: HashMap<Vec<u8>, Arc<HashSlot>>,
    pub namespaces: Namespaces,
    /// Undecodable records seen while the task ran: they may have been its
    /// events.
    pub undecodable_during: u64,
}

impl Finished {
    /// What the record builder needs: this state, the task's identity, and
    /// the events the kernel lost for it (its last filter entry).
    pub fn into_task(self, identity: TaskIdentity, kernel: Option<FilterEntry>) -> FinishedTask {
        let kernel = kernel.unwrap_or_default();
        FinishedTask {
            task: self.task,
            identity,
            input_hashes: self.input_hashes,
            namespaces: self.namespaces,
            capture: CaptureFacts {
                lost_in_kernel: kernel.lost,
                read_failed_in_kernel: kernel.read_failed.into(),
                decode_errors: self.undecodable_during,
                partial: None,
            },
        }
    }
}

pub struct Engine {
    pub table: TaskTable,
    pub stats: EngineStats,
    pool: Arc<HashPool>,
    /// Where process namespaces are opened (`/proc`, or the host's).
    proc_root: PathBuf,
    own_ns: u64,
    namespaces: HashMap<u64, Namespaces>,
    input_hashes: HashMap<u64, HashMap<Vec<u8>, Arc<HashSlot>>>,
    undecodable_at_start: HashMap<u64, u64>,
    /// Children whose mount namespace was looked up, per task.
    fork_probes: HashMap<u64, u32>,
    /// Tasks run in namespaces other than ours (the daemon's containers):
    /// a file in an unknown namespace is never looked up in ours.
    pub foreign_tasks: bool,
}

/// How many of a task's first children have their mount namespace held.
const FORK_PROBES: u32 = 16;

impl Engine {
    pub fn new(
        pool: Arc<HashPool>,
        proc_root: PathBuf,
        limits: TaskLimits,
    ) -> std::io::Result<Self> {
        Ok(Self {
            table: TaskTable::new(limits),
            stats: EngineStats::default(),
            pool,
            proc_root,
            own_ns: MountNs::current()?.inum,
            namespaces: HashMap::new(),
            input_hashes: HashMap::new(),
            undecodable_at_start: HashMap::new(),
            fork_probes: HashMap::new(),
            foreign_tasks: false,
        })
    }

    /// Starts a task. `ns`: the mount namespace its files are looked up in
    /// until its processes reveal their own.
    pub fn register(&mut self, key: u64, ns: Option<Arc<MountNs>>) {
        self.table.start(key);
        let own = self.own_ns;
        let unknown_is_gone = self.foreign_tasks;
        let nss = self
            .namespaces
            .entry(key)
            .or_insert_with(|| Namespaces::new(own).unknown_is_gone(unknown_is_gone));
        if let Some(ns) = ns {
            nss.add(ns);
        }
        self.undecodable_at_start
            .insert(key, self.stats.undecodable_total());
    }

    /// Continues a task from a checkpoint (right after `register`).
    pub fn restore(&mut self, key: u64, state: &crate::proto::TaskState) {
        let task = crate::tasks::checkpoint::from_state(key, self.table.limits(), state);
        self.table.restore(task);
    }

    /// The task's state for a checkpoint.
    pub fn checkpoint(&self, key: u64) -> Option<crate::proto::TaskState> {
        self.table.get(key).map(crate::tasks::checkpoint::to_state)
    }

    /// Adds a mount namespace a task's files may be looked up in (one held
    /// while the task's events waited for attribution).
    pub fn hold(&mut self, key: u64, ns: Arc<MountNs>) {
        let own = self.own_ns;
        let unknown_is_gone = self.foreign_tasks;
        let nss = self
            .namespaces
            .entry(key)
            .or_insert_with(|| Namespaces::new(own).unknown_is_gone(unknown_is_gone));
        if !nss.knows(ns.inum) && ns.inum != self.own_ns {
            nss.add(ns);
        }
    }

    /// Handles one ring-buffer record. Returns the event when it is not a
    /// task's (cgroup lifecycle), for attribution to look at.
    pub fn handle(&mut self, bytes: &[u8]) -> Option<Event> {
        let ev = self.decode(bytes)?;
        if matches!(ev.body, Body::Cgroup(_)) {
            return Some(ev);
        }
        self.apply(&ev);
        None
    }

    /// Decodes one ring-buffer record and counts it, without applying it:
    /// for callers that route events themselves (the daemon holds events
    /// of cgroups it has not attributed yet).
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Event> {
        self.stats.records += 1;
        let ev = match parse(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                *self.stats.undecodable.entry(e.reason()).or_default() += 1;
                tracing::warn!(error = %e, "undecodable event");
                return None;
            }
        };
        self.stats.by_kind[ev.body.kind() as usize] += 1;
        Some(ev)
    }

    /// Applies an event to its task.
    pub fn apply(&mut self, ev: &Event) {
        if !self.table.contains(ev.task) {
            self.table.unattributed += 1;
            return;
        }
        match &ev.body {
            Body::Exec(e) => self.hold_namespace(ev.task, ev.tgid, e.mnt_ns as u64),
            // A container's first processes (runc init) enter its mount
            // namespace long before the entrypoint execs, and short tasks
            // are gone before userspace sees their exec: hold the
            // namespace of the first children too.
            Body::Fork {
                child_tgid,
                thread: false,
                ..
            } => self.hold_child_namespace(ev.task, *child_tgid),
            _ => {}
        }
        let Some(first) = self.table.apply(ev) else {
            return;
        };
        let ns = match self.namespace_for(ev.task, first.mnt_ns as u64) {
            // The record says why it has no hash.
            NsView::Gone => return,
            view => view.held(),
        };
        let slot = HashSlot::new();
        let job = HashJob {
            ns,
            path: first.path.clone(),
            expect: Some((first.dev, first.ino)),
            slot: slot.clone(),
        };
        match self.pool.try_submit(job) {
            Ok(()) => {
                self.input_hashes
                    .entry(ev.task)
                    .or_default()
                    .insert(first.path, slot);
            }
            Err(_) => {
                if let Some(t) = self.table.get_mut(ev.task) {
                    t.stats.input_hash_deferred += 1;
                }
            }
        }
    }

    /// Opens the mount namespace of a process that just exec'd, if its
    /// task has not seen it yet, so the task's files can be hashed there
    /// after the process is gone.
    fn hold_namespace(&mut self, task: u64, tgid: u32, inum: u64) {
        if inum == 0 || inum == self.own_ns {
            return;
        }
        let own = self.own_ns;
        let unknown_is_gone = self.foreign_tasks;
        let nss = self
            .namespaces
            .entry(task)
            .or_insert_with(|| Namespaces::new(own).unknown_is_gone(unknown_is_gone));
        if nss.knows(inum) {
            return;
        }
        match MountNs::of_pid(&self.proc_root, tgid) {
            Ok(ns) if ns.inum == inum => nss.add(Arc::new(ns)),
            other => {
                tracing::debug!(tgid, inum, result = ?other.map(|n| n.inum), "mount namespace not held");
                nss.missed += 1
            }
        }
    }

    /// Holds the namespace of one of a task's first children.
    fn hold_child_namespace(&mut self, task: u64, child: u32) {
        let tried = self.fork_probes.entry(task).or_default();
        if *tried >= FORK_PROBES {
            return;
        }
        *tried += 1;
        if let Ok(ns) = MountNs::of_pid(&self.proc_root, child) {
            self.hold(task, Arc::new(ns));
        }
    }

    fn namespace_for(&self, task: u64, inum: u64) -> NsView {
        if inum == self.own_ns {
            return NsView::Own;
        }
        self.namespaces
            .get(&task)
            .map_or(NsView::Own, |n| n.resolve(inum))
    }

    /// Takes a task out for its record.
    pub fn finish(&mut self, key: u64) -> Option<Finished> {
        let task = self.table.finish(key)?;
        let start = self.undecodable_at_start.remove(&key).unwrap_or(0);
        self.fork_probes.remove(&key);
        Some(Finished {
            task,
            input_hashes: self.input_hashes.remove(&key).unwrap_or_default(),
            namespaces: self.namespaces.remove(&key).unwrap_or_default(),
            undecodable_during: self.stats.undecodable_total() - start,
        })
    }
}
