//! No container without a record, even when the kernel could not tell:
//! a cgroup whose mkdir (or rmdir) event was lost (ring buffer full) is
//! found again, and a trace-set entry no task owns is either adopted as
//! the task it is or released.
//!
//! - An event of a cgroup attribution does not know, whose cgroup the
//!   kernel traces as a task root: its mkdir was lost. Its path is looked
//!   up (below the traced pods first, then the whole tree) and it becomes
//!   known before its event is routed.
//! - Cgroup events lost (the kernel counts them): the tree is walked again
//!   for cgroups made or removed meanwhile.
//! - Every 10 s, trace-set roots no task owns (seen twice, so one not read
//!   from the ring buffer yet is not taken for a leak): a live cgroup is
//!   handed to attribution; a gone one is released.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use roar_node_common::{event::EventKind, loss};

use super::State;
use crate::{
    attribution::cgroup_path::{self, CgroupDir},
    events::CgroupChange,
};

/// How long an id whose cgroup was not found is not looked for again.
const MISS_RETRY: Duration = Duration::from_secs(5);

/// What recovery remembers between calls, and what it did.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    /// Ids looked for and not found, and when.
    misses: HashMap<u64, Instant>,
    /// The kernel's count of lost cgroup events at the last check.
    cgroup_events_lost: u64,
    /// Unowned trace-set entries seen by the last sweep.
    unowned: HashSet<u64>,
    /// Cgroups found again after their event was lost.
    pub(super) recovered: u64,
    /// Walks of the tree because cgroup events were lost.
    pub(super) rescans: u64,
    /// Trace-set entries no task owned, released.
    pub(super) released: u64,
}

fn change_of(dir: &CgroupDir, traced_by_kernel: bool) -> CgroupChange {
    CgroupChange {
        created: true,
        id: dir.id,
        parent_id: 0,
        level: 0,
        path: dir.path.clone().into_bytes(),
        path_truncated: false,
        traced_by_kernel,
    }
}

impl State {
    /// Whether the kernel traces `id` as a task root of its own.
    fn kernel_root(&self, id: u64) -> bool {
        self.probes.traced.get(id).is_some_and(|e| e.root == id)
    }

    /// The cgroup `id`, looked for below the traced pods, then everywhere.
    fn find_cgroup(&self, id: u64) -> Option<CgroupDir> {
        use std::os::unix::fs::MetadataExt;
        for pod in self.attr.traced_pod_paths() {
            let dir = self.ctx.cgroot.join(pod.trim_start_matches('/'));
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.metadata().is_ok_and(|m| m.is_dir() && m.ino() == id) {
                    let path = format!("{pod}/{}", e.file_name().to_string_lossy());
                    return Some(CgroupDir { id, path });
                }
            }
        }
        cgroup_path::walk(&self.ctx.cgroot)
            .ok()?
            .into_iter()
            .find(|d| d.id == id)
    }

    /// An event of cgroup `id`, which attribution does not know. If the
    /// kernel traces it as a root, its mkdir event was lost: it is found
    /// and made known now. (Not a root: a task's late event after its
    /// record began, counted as unattributed.) Either answer is kept for a
    /// few seconds, so a burst of such events costs one look.
    pub(super) fn recover_unknown(&mut self, id: u64) {
        let now = Instant::now();
        if self
            .recovery
            .misses
            .get(&id)
            .is_some_and(|t| now.duration_since(*t) < MISS_RETRY)
        {
            return;
        }
        let found = if self.kernel_root(id) {
            self.find_cgroup(id)
        } else {
            None
        };
        match found {
            Some(dir) => {
                self.recovery.misses.remove(&id);
                self.recovery.recovered += 1;
                tracing::warn!(cgroup = id, path = %dir.path, "a traced cgroup whose creation event was lost: found again");
                let acts = self.attr.on_cgroup(&change_of(&dir, true), now);
                self.execute(acts);
            }
            None => {
                if self.recovery.misses.len() > 10_000 {
                    self.recovery.misses.clear();
                }
                self.recovery.misses.insert(id, now);
            }
        }
    }

    /// Cgroup events the kernel lost (ring buffer full, unreadable): so
    /// many cgroups made or removed that attribution did not hear of.
    fn cgroup_events_lost(&self) -> u64 {
        let c = self.probes.stats.read().counters;
        [
            loss::ringbuf_full(EventKind::CgroupMkdir),
            loss::ringbuf_full(EventKind::CgroupRmdir),
            loss::CGROUP_READ_FAILED,
            loss::SCRATCH_UNAVAILABLE,
        ]
        .iter()
        .map(|i| c.get(*i as usize).copied().unwrap_or(0))
        .sum()
    }

    /// If cgroup events were lost since the last check, walks the tree:
    /// cgroups not known are made known, known ones gone are removed.
    pub(super) fn rescan_if_cgroup_events_lost(&mut self) {
        let lost = self.cgroup_events_lost();
        if lost == self.recovery.cgroup_events_lost {
            return;
        }
        self.recovery.cgroup_events_lost = lost;
        let Ok(dirs) = cgroup_path::walk(&self.ctx.cgroot) else {
            return;
        };
        self.recovery.rescans += 1;
        let now = Instant::now();
        let live: HashSet<u64> = dirs.iter().map(|d| d.id).collect();
        let mut found = 0;
        for d in &dirs {
            if !self.attr.knows(d.id) {
                found += 1;
                let acts = self
                    .attr
                    .on_cgroup(&change_of(d, self.kernel_root(d.id)), now);
                self.execute(acts);
            }
        }
        let mut gone = 0;
        for (id, path) in self.attr.live_cgroups() {
            if !live.contains(&id) {
                gone += 1;
                let removed = CgroupChange {
                    created: false,
                    ..change_of(&CgroupDir { id, path }, false)
                };
                let acts = self.attr.on_cgroup(&removed, now);
                self.execute(acts);
            }
        }
        self.recovery.recovered += found + gone;
        tracing::warn!(
            lost,
            found,
            gone,
            "cgroup events were lost: walked the cgroup tree again"
        );
    }

    /// Trace-set entries no task owns, seen unowned by two sweeps in a
    /// row: a live cgroup is handed to attribution (a container whose
    /// creation event was lost becomes a task), a gone one is released.
    pub(super) fn release_unowned_trace_entries(&mut self) {
        let entries = self.probes.traced.entries();
        let roots: HashSet<u64> = entries
            .iter()
            .filter(|(id, e)| e.root == *id)
            .map(|(id, _)| *id)
            .collect();
        let owned = |s: &Self, id: u64| s.engine.contains(id) || s.attr.owns_trace_entry(id);
        let mut unowned = HashSet::new();
        for (id, e) in &entries {
            let unowned_now = if e.root == *id {
                !owned(self, *id)
            } else {
                // A sub-cgroup's entry: its task's root went away.
                !roots.contains(&e.root)
            };
            if unowned_now {
                unowned.insert(*id);
            }
        }
        let again: Vec<u64> = unowned
            .intersection(&self.recovery.unowned)
            .copied()
            .collect();
        let now = Instant::now();
        for id in again {
            if roots.contains(&id)
                && let Some(dir) = self.find_cgroup(id)
            {
                self.recovery.recovered += 1;
                tracing::warn!(cgroup = id, path = %dir.path, "a traced cgroup no task owned: handed to attribution");
                let acts = self.attr.on_cgroup(&change_of(&dir, true), now);
                self.execute(acts);
                if owned(self, id) {
                    unowned.remove(&id);
                    continue;
                }
            }
            if roots.contains(&id) {
                self.probes.traced.untrace(id);
            } else {
                self.probes.traced.remove(id);
            }
            self.recovery.released += 1;
            unowned.remove(&id);
            tracing::info!(cgroup = id, "released a trace-set entry no task owned");
        }
        self.recovery.unowned = unowned;
    }
}
