//! The event path, shared by `run` and `daemon`: decode a ring-buffer
//! record, apply it to its task, and start work that must happen promptly
//! (hashing an input while it is still there, holding a new mount
//! namespace open while a process still lives in it). Never blocks: a full
//! hash queue defers the hash to the end of the task, and says so.
//!
//! Everything known about one task lives in one [`TaskEntry`], keyed by the
//! task's root cgroup id: its capture state until [`Engine::finish`] takes
//! it out for the record, and what the mode keeps for it until
//! [`Engine::remove`], the one place a task leaves.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use roar_node_common::{event::EventKind, traced::TracedCgroup};

use crate::{
    events::{Body, Event, parse},
    records::{
        CaptureFacts, FinishedTask,
        hashing::{HashJob, HashPool, HashSlot},
        mountns::{MountNs, Namespaces, NsView},
    },
    tasks::{FileBudget, Task, TaskLimits},
};

/// Counters over all tasks, for metrics and summaries.
#[derive(Clone, Debug, Default)]
pub(crate) struct EngineStats {
    /// Ring-buffer records read (each one event, or undecodable).
    pub(crate) ring_buffer_records: u64,
    pub(crate) by_kind: [u64; EventKind::COUNT],
    /// Ring-buffer records the decoder rejected, by reason.
    pub(crate) undecodable: HashMap<&'static str, u64>,
    /// Events of a cgroup no task was registered for.
    pub(crate) unattributed: u64,
}

impl EngineStats {
    pub(crate) fn undecodable_total(&self) -> u64 {
        self.undecodable.values().sum()
    }
}

/// One task: what its events built (until its record takes it) and what
/// the mode keeps for it (`L`: the daemon's lifecycle; nothing in `run`).
pub(crate) struct TaskEntry<L> {
    /// `None` once [`Engine::finish`] took it for the record: later events
    /// of the cgroup are counted as unattributed.
    capture: Option<Capturing>,
    pub(crate) lifecycle: L,
}

/// A task's state while its events are applied.
struct Capturing {
    task: Task,
    /// Mount namespaces its files are looked up in.
    namespaces: Namespaces,
    /// Inputs hashed when first read, by path.
    input_hashes: HashMap<Vec<u8>, Arc<HashSlot>>,
    /// Undecodable ring-buffer records before it began: those seen while
    /// it ran may have been its events.
    undecodable_at_start: u64,
    /// Children whose mount namespace was looked up.
    fork_probes: u32,
}

impl<L> TaskEntry<L> {
    /// The task's state, while it is captured.
    pub(crate) fn task(&self) -> Option<&Task> {
        self.capture.as_ref().map(|c| &c.task)
    }
}

/// A task's state taken out of the engine: what its record is built from.
pub(crate) struct Finished {
    pub(crate) task: Task,
    input_hashes: HashMap<Vec<u8>, Arc<HashSlot>>,
    namespaces: Namespaces,
    undecodable_during: u64,
}

impl Finished {
    /// What the record builder needs, with the events the kernel lost for
    /// the task (its last trace-set entry).
    pub(crate) fn into_task(self, kernel: Option<TracedCgroup>) -> FinishedTask {
        let kernel = kernel.unwrap_or_default();
        FinishedTask {
            task: self.task,
            input_hashes: self.input_hashes,
            namespaces: self.namespaces,
            capture: CaptureFacts {
                lost_in_kernel: kernel.lost,
                read_failed_in_kernel: kernel.read_failed.into(),
                decode_errors: self.undecodable_during,
            },
        }
    }
}

pub(crate) struct Engine<L = ()> {
    entries: HashMap<u64, TaskEntry<L>>,
    limits: TaskLimits,
    /// Paths all tasks together may hold (with `max_files_total`).
    budget: Option<Arc<FileBudget>>,
    pub(crate) stats: EngineStats,
    pool: Arc<HashPool>,
    /// Where process namespaces are opened (`/proc`, or the host's).
    proc_root: PathBuf,
    own_ns: u64,
    /// Tasks run in namespaces other than ours (the daemon's containers):
    /// a file in an unknown namespace is never looked up in ours.
    foreign_tasks: bool,
}

/// How many of a task's first children have their mount namespace held.
const FORK_PROBES: u32 = 16;

/// Where the tasks of an engine run, relative to roar-node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskHome {
    /// Started by us, in our mount namespace (`run`).
    OurNamespace,
    /// Containers: never in our view.
    Foreign,
}

impl<L> Engine<L> {
    pub(crate) fn new(
        pool: Arc<HashPool>,
        proc_root: PathBuf,
        limits: TaskLimits,
        home: TaskHome,
    ) -> std::io::Result<Self> {
        Ok(Self {
            entries: HashMap::new(),
            limits,
            budget: (limits.max_files_total != usize::MAX)
                .then(|| FileBudget::new(limits.max_files_total)),
            stats: EngineStats::default(),
            pool,
            proc_root,
            own_ns: MountNs::current()?.inum,
            foreign_tasks: home == TaskHome::Foreign,
        })
    }

    /// Starts a task (a second call for the same key keeps the first).
    pub(crate) fn register(&mut self, key: u64, lifecycle: L) -> &mut TaskEntry<L> {
        let (limits, budget) = (self.limits, self.budget.clone());
        let namespaces = Namespaces::new(self.own_ns).unknown_is_gone(self.foreign_tasks);
        let undecodable_at_start = self.stats.undecodable_total();
        self.entries.entry(key).or_insert_with(|| TaskEntry {
            capture: Some(Capturing {
                task: Task::new(limits).with_budget(budget),
                namespaces,
                input_hashes: HashMap::new(),
                undecodable_at_start,
                fork_probes: 0,
            }),
            lifecycle,
        })
    }

    /// Continues a task from a checkpoint (right after `register`, before
    /// any event of it is applied).
    pub(crate) fn restore(&mut self, key: u64, state: &crate::proto::TaskState) {
        let (limits, budget) = (self.limits, self.budget.clone());
        if let Some(c) = self.capturing(key) {
            c.task = Task::from_checkpoint(limits, state).with_budget(budget);
        }
    }

    fn capturing(&mut self, key: u64) -> Option<&mut Capturing> {
        self.entries.get_mut(&key)?.capture.as_mut()
    }

    pub(crate) fn get(&self, key: u64) -> Option<&TaskEntry<L>> {
        self.entries.get(&key)
    }

    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut TaskEntry<L>> {
        self.entries.get_mut(&key)
    }

    pub(crate) fn contains(&self, key: u64) -> bool {
        self.entries.contains_key(&key)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn keys(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut TaskEntry<L>)> {
        self.entries.iter_mut().map(|(k, e)| (*k, e))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &TaskEntry<L>)> {
        self.entries.iter().map(|(k, e)| (*k, e))
    }

    /// Paths held by all tasks (with a budget).
    pub(crate) fn files_held(&self) -> Option<usize> {
        self.budget.as_ref().map(|b| b.used())
    }

    /// Adds a mount namespace a task's files may be looked up in (one held
    /// while the task's events waited for attribution, or a running
    /// container's).
    pub(crate) fn hold(&mut self, key: u64, ns: Arc<MountNs>) {
        let own = self.own_ns;
        if let Some(c) = self.capturing(key)
            && !c.namespaces.knows(ns.inum)
            && ns.inum != own
        {
            c.namespaces.add(ns);
        }
    }

    /// Handles one ring-buffer record. Returns the event when it is not a
    /// task's (cgroup lifecycle), for attribution to look at.
    pub(crate) fn handle(&mut self, bytes: &[u8]) -> Option<Event> {
        let ev = self.decode(bytes)?;
        if matches!(ev.body, Body::Cgroup(_)) {
            return Some(ev);
        }
        self.apply(&ev);
        None
    }

    /// Decodes one ring-buffer record and counts it, without applying it:
    /// for callers that route events themselves (the daemon drops events
    /// of cgroups attribution says are not traced).
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> Option<Event> {
        self.stats.ring_buffer_records += 1;
        let ev = match parse(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                *self.stats.undecodable.entry(e.reason()).or_default() += 1;
                tracing::warn!(error = %e, "undecodable ring-buffer record");
                return None;
            }
        };
        self.stats.by_kind[ev.body.kind() as usize] += 1;
        Some(ev)
    }

    /// Applies an event to its task.
    pub(crate) fn apply(&mut self, ev: &Event) {
        let Some(entry) = self
            .entries
            .get_mut(&ev.task)
            .and_then(|e| e.capture.as_mut())
        else {
            self.stats.unattributed += 1;
            return;
        };
        match &ev.body {
            Body::Exec(e) => hold_namespace(
                entry,
                &self.proc_root,
                self.own_ns,
                ev.tgid,
                e.mnt_ns as u64,
            ),
            // A container's first processes (runc init) enter its mount
            // namespace long before the entrypoint execs, and short tasks
            // are gone before userspace sees their exec: hold the
            // namespace of the first children too.
            Body::Fork {
                child_tgid,
                thread: false,
                ..
            } => hold_child_namespace(entry, &self.proc_root, self.own_ns, *child_tgid),
            _ => {}
        }
        let Some(first) = entry.task.apply(ev) else {
            return;
        };
        let ns = match namespace_for(entry, self.own_ns, first.mnt_ns as u64) {
            // The record says why it has no hash.
            NsView::Gone => return,
            view => view.held(),
        };
        let slot = HashSlot::new();
        let job = HashJob {
            ns,
            path: first.path.clone(),
            expect: Some((first.dev, first.ino)),
            dev: Some(first.dev),
            slot: slot.clone(),
        };
        match self.pool.try_submit(job) {
            Ok(()) => {
                entry.input_hashes.insert(first.path, slot);
            }
            Err(_) => entry.task.stats.input_hash_deferred += 1,
        }
    }

    /// Takes a task's state out for its record (once); the entry stays
    /// until [`Engine::remove`].
    pub(crate) fn finish(&mut self, key: u64) -> Option<Finished> {
        let c = self.entries.get_mut(&key)?.capture.take()?;
        Some(Finished {
            task: c.task,
            input_hashes: c.input_hashes,
            namespaces: c.namespaces,
            undecodable_during: self.stats.undecodable_total() - c.undecodable_at_start,
        })
    }

    /// The task leaves: the one place its entry goes. Returns what it held.
    pub(crate) fn remove(&mut self, key: u64) -> Option<TaskEntry<L>> {
        self.entries.remove(&key)
    }
}

/// Opens the mount namespace of a process that just exec'd, if its task
/// has not seen it yet, so the task's files can be hashed there after the
/// process is gone.
fn hold_namespace(e: &mut Capturing, proc_root: &std::path::Path, own: u64, tgid: u32, inum: u64) {
    if inum == 0 || inum == own || e.namespaces.knows(inum) {
        return;
    }
    match MountNs::of_pid(proc_root, tgid) {
        Ok(ns) if ns.inum == inum => e.namespaces.add(Arc::new(ns)),
        other => {
            tracing::debug!(tgid, inum, result = ?other.map(|n| n.inum), "mount namespace not held");
            e.namespaces.missed += 1
        }
    }
}

/// Holds the namespace of one of a task's first children.
fn hold_child_namespace(e: &mut Capturing, proc_root: &std::path::Path, own: u64, child: u32) {
    if e.fork_probes >= FORK_PROBES {
        return;
    }
    e.fork_probes += 1;
    if let Ok(ns) = MountNs::of_pid(proc_root, child)
        && ns.inum != own
        && !e.namespaces.knows(ns.inum)
    {
        e.namespaces.add(Arc::new(ns));
    }
}

fn namespace_for(e: &Capturing, own: u64, inum: u64) -> NsView {
    if inum == own {
        return NsView::Own;
    }
    e.namespaces.resolve(inum)
}
