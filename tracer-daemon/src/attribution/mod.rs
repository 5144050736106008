//! Which task an event belongs to. In `run` mode that is simply the cgroup
//! roar-node made for the command. In `daemon` mode it is a container of
//! a pod on this node: [`Attributor`] joins the cgroup v2 tree (start-up
//! walk, then the kernel's mkdir/rmdir events) with the pods the API
//! server describes, applies the opt-in policy, and tells the daemon what
//! to put in the kernel trace set and which tasks to start. It does no I/O
//! and knows nothing of files: the daemon executes its [`Action`]s.
//!
//! How a traced container's first exec is caught: as soon as an opted-in
//! pod's own cgroup is known, it goes into the kernel trace set with
//! `TRACE_CHILDREN_ARE_ROOTS`, so the kernel makes every container cgroup
//! created below it a task root of its own at `mkdir`, before any process
//! runs there. Its events are collected as a task from that moment (the
//! engine's per-task state, bounded by its limits, is the queue): who it
//! is comes later, when the container's id appears in the pod's status,
//! which for a short container is often after it has ended. The sandbox
//! and containers the policy leaves out are then dropped from the trace set
//! and their events counted as ignored; containers that never resolve are
//! counted as unattributed.
//!
//! When the pod watch lags behind the kubelet, a container's cgroup can
//! exist before its pod is known: it waits outside the trace set, and goes
//! into it the moment its pod is known to be traced (`Begin { late }`),
//! not when its id shows. Its record says what that cost (the daemon
//! checks whether a process was already running). A waiting cgroup that
//! is gone is kept until its pod resolves it: the clock that drops it
//! (`sweep`) only runs while the pod watch is delivering.

pub(crate) mod cgroup_path;
pub(crate) mod cgroupfs;
mod housekeeping;
pub(crate) mod osmo;
pub(crate) mod pod_spec;
pub(crate) mod pods;
pub(crate) mod policy;
mod task;

pub(crate) use self::task::TaskMeta;
pub use self::task::{Role, TraceReason};

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use self::{
    cgroup_path::{CgroupPath, ContainerCgroup},
    pods::{PodIndex, PodInfo},
    policy::{Decision, Policy},
};
use crate::events::{CgroupChange, Event};

/// What the daemon must do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Put a pod's cgroup in the kernel trace set, its children as roots.
    TracePod(u64),
    /// Put a container cgroup in the kernel trace set as a task root (one
    /// that existed before its pod was known to be traced).
    TraceContainer(u64),
    /// Take a cgroup (and what the kernel added below it) out of the trace set.
    Untrace(u64),
    /// A container cgroup of a traced pod appeared in the trace set: collect
    /// its events as a task now, who it is comes later (`Resolved`) or it
    /// is dropped (`Discard`). `late`: it existed before it entered the
    /// trace set (its pod was not known yet), so processes may have run.
    Begin {
        cgroup: u64,
        path: String,
        late: bool,
    },
    /// The cgroup's container is known and traced.
    Resolved(TaskMeta),
    /// The cgroup is not a traced container (the sandbox, osmo-init, a pod
    /// the policy leaves out) or never resolved (`unattributed`): drop
    /// its task and record.
    Discard { cgroup: u64, unattributed: bool },
    /// Say it once: a pod's annotation is malformed.
    Warn(String),
}

/// Where an event goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// To its task in the engine (resolved, or waiting for its identity).
    Task,
    /// Dropped: the cgroup is known not to be traced. Counted.
    Ignored,
    /// Dropped: no task. Counted.
    Unattributed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AttributionStats {
    /// Events collected while their container was not resolved yet.
    pub(crate) before_resolution: u64,
    /// Events of cgroups that turned out not to be traced, dropped.
    pub(crate) ignored: u64,
    /// Events no task could be found for (including the events of
    /// containers that never resolved).
    pub(crate) unattributed: u64,
    /// Container cgroups waiting for their identity now (a gauge).
    pub(crate) waiting: u64,
}

#[derive(Debug)]
enum CgState {
    /// A container cgroup of a traced pod whose container is not known
    /// yet. `in_trace_set`: the kernel (or we) put it in the kernel trace
    /// set; `late`: after it was created.
    Pending {
        in_trace_set: bool,
        late: bool,
    },
    Traced,
    Ignored,
}

#[derive(Debug)]
struct CgroupInfo {
    path: String,
    parsed: CgroupPath,
    removed: Option<Instant>,
}

pub(crate) struct Attributor {
    pub(crate) pods: PodIndex,
    policy: Policy,
    cgroups: HashMap<u64, CgroupInfo>,
    /// Pod UID -> its pod-level cgroup.
    pod_cgroups: HashMap<String, u64>,
    /// Pod cgroups in the kernel trace set.
    traced_pods: HashSet<u64>,
    states: HashMap<u64, CgState>,
    warned: HashSet<String>,
    /// Pod UID -> its first (smallest id) container cgroup: the sandbox.
    first_container_cgroup: HashMap<String, u64>,
    /// Since when the pod watch delivers (`None`: it does not now): the
    /// clock that drops cgroups waiting for their pod runs only then.
    watch_delivers_since: Option<Instant>,
    pub(crate) stats: AttributionStats,
}

impl Attributor {
    pub(crate) fn new(policy: Policy) -> Self {
        Self {
            pods: PodIndex::default(),
            policy,
            cgroups: HashMap::new(),
            pod_cgroups: HashMap::new(),
            traced_pods: HashSet::new(),
            states: HashMap::new(),
            warned: HashSet::new(),
            first_container_cgroup: HashMap::new(),
            watch_delivers_since: Some(Instant::now()),
            stats: AttributionStats::default(),
        }
    }

    fn traced_reason(&mut self, pod: &PodInfo, out: &mut Vec<Action>) -> Option<TraceReason> {
        match self.policy.decide(pod) {
            Decision::Trace(why) => Some(why),
            Decision::Skip => None,
            Decision::Invalid(msg) => {
                if self.warned.insert(pod.uid.clone()) {
                    out.push(Action::Warn(msg));
                }
                None
            }
        }
    }

    fn set_pending(&mut self, id: u64, in_trace_set: bool, out: &mut Vec<Action>) {
        // Seen twice (the start-up walk and a mkdir event racing it):
        // the first state stands.
        if self.states.contains_key(&id) {
            return;
        }
        self.states.insert(
            id,
            CgState::Pending {
                in_trace_set,
                late: false,
            },
        );
        self.stats.waiting += 1;
        if in_trace_set {
            out.push(Action::Begin {
                cgroup: id,
                path: self.cgroups[&id].path.clone(),
                late: false,
            });
        }
    }

    /// A container cgroup that waited for its pod outside the trace set:
    /// its pod is known to be traced, so into the trace set it goes now,
    /// before its id shows (while it still exists).
    fn trace_late(&mut self, id: u64, out: &mut Vec<Action>) {
        let Some(CgState::Pending {
            in_trace_set: false,
            ..
        }) = self.states.get(&id)
        else {
            return;
        };
        if self.cgroups.get(&id).is_none_or(|c| c.removed.is_some()) {
            return;
        }
        self.states.insert(
            id,
            CgState::Pending {
                in_trace_set: true,
                late: true,
            },
        );
        out.push(Action::TraceContainer(id));
        out.push(Action::Begin {
            cgroup: id,
            path: self.cgroups[&id].path.clone(),
            late: true,
        });
    }

    /// A pod was added or changed (watch event or initial list).
    pub(crate) fn on_pod(&mut self, pod: PodInfo) -> Vec<Action> {
        let mut out = Vec::new();
        let uid = pod.uid.clone();
        let traced = self.traced_reason(&pod, &mut out).is_some();
        self.pods.upsert(pod);
        if traced
            && let Some(&pcg) = self.pod_cgroups.get(&uid)
            && self.traced_pods.insert(pcg)
        {
            out.push(Action::TracePod(pcg));
        }
        if !traced
            && let Some(pcg) = self.pod_cgroups.get(&uid).copied()
            && self.traced_pods.remove(&pcg)
        {
            out.push(Action::Untrace(pcg));
        }
        // Containers of this pod seen before the pod (or before their ids).
        let mut mine: Vec<u64> = self
            .cgroups
            .iter()
            .filter(|(_, c)| {
                matches!(&c.parsed, CgroupPath::Container(cc)
                    if cc.pod_uid == uid && cc.depth_below_container == 0)
            })
            .map(|(id, _)| *id)
            .collect();
        mine.sort_unstable();
        for id in mine {
            if !self.states.contains_key(&id) {
                if !traced || self.cgroups[&id].removed.is_some() {
                    continue;
                }
                self.set_pending(id, false, &mut out);
            }
            if traced {
                self.trace_late(id, &mut out);
            }
            self.resolve(id, &mut out);
        }
        out
    }

    /// The pod is gone from the API server. `last`: its final state, as
    /// the watch's Delete event carries it (the terminated containers'
    /// ids that may not have been seen before): what waits for it is
    /// resolved with it first. `None`: it vanished while not watched.
    pub(crate) fn on_pod_deleted(
        &mut self,
        uid: &str,
        last: Option<PodInfo>,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = match last.filter(|p| p.uid == uid) {
            Some(p) => self.on_pod(p),
            None => Vec::new(),
        };
        self.pods.delete(uid, now);
        self.first_container_cgroup.remove(uid);
        if let Some(pcg) = self.pod_cgroups.get(uid).copied()
            && self.traced_pods.remove(&pcg)
        {
            out.push(Action::Untrace(pcg));
        }
        // Whatever still waits for this pod never resolves.
        let pending: Vec<u64> = self
            .states
            .iter()
            .filter(|(id, s)| {
                matches!(s, CgState::Pending { .. })
                    && self
                        .container_cgroup(**id)
                        .is_some_and(|c| c.pod_uid == uid)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            tracing::warn!(cgroup = id, "pod deleted before its container resolved");
            self.drop_pending(id, true, &mut out);
        }
        out
    }

    fn container_cgroup(&self, id: u64) -> Option<&ContainerCgroup> {
        match &self.cgroups.get(&id)?.parsed {
            CgroupPath::Container(cc) if cc.depth_below_container == 0 => Some(cc),
            _ => None,
        }
    }

    /// A cgroup appeared (kernel event or start-up walk) or went away.
    pub(crate) fn on_cgroup(&mut self, c: &CgroupChange, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let path = String::from_utf8_lossy(&c.path).into_owned();
        if !c.created {
            if let Some(info) = self.cgroups.get_mut(&c.id)
                && info.path == path
            {
                info.removed = Some(now);
            }
            if let Some(uid) = self
                .pod_cgroups
                .iter()
                .find(|(_, id)| **id == c.id)
                .map(|(u, _)| u.clone())
            {
                self.pod_cgroups.remove(&uid);
                if self.traced_pods.remove(&c.id) {
                    out.push(Action::Untrace(c.id));
                }
            }
            return out;
        }
        let parsed = cgroup_path::parse(&c.path);
        self.cgroups.insert(
            c.id,
            CgroupInfo {
                path,
                parsed: parsed.clone(),
                removed: None,
            },
        );
        match parsed {
            CgroupPath::PodLevel { pod_uid, .. } => {
                self.pod_cgroups.insert(pod_uid.clone(), c.id);
                let traced = match self.pods.get(&pod_uid).cloned() {
                    Some(pod) => self.traced_reason(&pod, &mut out).is_some(),
                    None => false,
                };
                if traced && self.traced_pods.insert(c.id) {
                    out.push(Action::TracePod(c.id));
                }
            }
            CgroupPath::Container(cc) if cc.depth_below_container == 0 => {
                let first = self
                    .first_container_cgroup
                    .entry(cc.pod_uid.clone())
                    .or_insert(c.id);
                *first = (*first).min(c.id);
                let pod = self.pods.get(&cc.pod_uid).cloned();
                let known_untraced = match &pod {
                    Some(p) => self.traced_reason(p, &mut out).is_none(),
                    None => false,
                };
                // The kernel traces it already (its pod is traced), or its
                // pod is not known yet: wait for the pod. A pod we know is
                // not traced: nothing to do. One found by a walk below a
                // pod known to be traced goes into the trace set now.
                if c.traced_by_kernel || !known_untraced {
                    self.set_pending(c.id, c.traced_by_kernel, &mut out);
                    if pod.is_some() && !c.traced_by_kernel {
                        self.trace_late(c.id, &mut out);
                    }
                    self.resolve(c.id, &mut out);
                }
            }
            _ => {}
        }
        out
    }

    /// Drops a pending cgroup: known not traced, or never resolved.
    fn drop_pending(&mut self, id: u64, unattributed: bool, out: &mut Vec<Action>) {
        if let Some(CgState::Pending { in_trace_set, .. }) =
            self.states.insert(id, CgState::Ignored)
        {
            self.stats.waiting = self.stats.waiting.saturating_sub(1);
            if in_trace_set {
                out.push(Action::Untrace(id));
                out.push(Action::Discard {
                    cgroup: id,
                    unattributed,
                });
            }
        }
    }

    fn ignore(&mut self, id: u64, why: &'static str, out: &mut Vec<Action>) {
        tracing::debug!(cgroup = id, "not traced: {why}");
        self.drop_pending(id, false, out);
    }

    /// Tries to settle a pending container cgroup.
    fn resolve(&mut self, id: u64, out: &mut Vec<Action>) {
        let Some(CgState::Pending { in_trace_set, late }) = self.states.get(&id) else {
            return;
        };
        let (in_trace_set, late) = (*in_trace_set, *late);
        let Some(cc) = self.container_cgroup(id).cloned() else {
            return; // path not known yet
        };
        let Some(pod) = self.pods.get(&cc.pod_uid).cloned() else {
            return;
        };
        let Some(reason) = self.traced_reason(&pod, out) else {
            self.ignore(id, "pod not selected by the policy", out);
            return;
        };
        let Some((container, run)) = pod.find_run(&cc.container_id) else {
            // Not (yet) in the pod's status. The kubelet makes the sandbox
            // (pause) container before any other, so the pod's first
            // container cgroup is the sandbox once some container shows
            // an id. Any later one is a container (a restart's new run,
            // say) whose id will show.
            let first = self.first_container_cgroup.get(&cc.pod_uid) == Some(&id);
            let any_id = pod.containers.iter().any(|c| !c.runs.is_empty());
            if (first && any_id) || pod.is_finished() {
                self.ignore(id, "sandbox (pause) container", out);
            }
            return;
        };
        let Some(role) = policy::container_role(&pod, &container.name) else {
            self.ignore(id, "container not traced (osmo-init, ephemeral)", out);
            return;
        };
        let meta = TaskMeta {
            cgroup_id: id,
            cgroup_path: self.cgroups[&id].path.clone(),
            pod_uid: pod.uid.clone(),
            container: container.name.clone(),
            container_id: run.container_id.clone(),
            restart_count: run.restart_count,
            completion_index: pod.completion_index(&container.name).value,
            role,
            reason,
            // Not in the trace set from its creation: known only from the
            // start-up walk, or created before its pod was known.
            started_before_agent: !in_trace_set || late,
        };
        self.states.insert(id, CgState::Traced);
        self.stats.waiting = self.stats.waiting.saturating_sub(1);
        if !in_trace_set {
            out.push(Action::TraceContainer(id));
            out.push(Action::Begin {
                cgroup: id,
                path: meta.cgroup_path.clone(),
                late: true,
            });
        }
        out.push(Action::Resolved(meta));
    }

    /// Routes a task event (not a cgroup one).
    pub(crate) fn route(&mut self, ev: &Event) -> Route {
        match self.states.get(&ev.task) {
            Some(CgState::Traced) => Route::Task,
            Some(CgState::Pending {
                in_trace_set: true, ..
            }) => {
                self.stats.before_resolution += 1;
                Route::Task
            }
            Some(CgState::Ignored) => {
                self.stats.ignored += 1;
                Route::Ignored
            }
            Some(CgState::Pending {
                in_trace_set: false,
                ..
            })
            | None => {
                self.stats.unattributed += 1;
                Route::Unattributed
            }
        }
    }

    /// Traces a container cgroup before its pod is known: one a previous
    /// roar-node was tracing (the spool says so), so that capture resumes
    /// at start-up even while the API server is unreachable. It resolves
    /// (or is dropped) when its pod is known.
    pub(crate) fn resume(&mut self, id: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.container_cgroup(id).is_none() {
            return out;
        }
        match self.states.get(&id) {
            None => {}
            // Found by the start-up walk, waiting for its pod outside the
            // trace set: into it now.
            Some(CgState::Pending {
                in_trace_set: false,
                ..
            }) => {
                self.states.remove(&id);
                self.stats.waiting = self.stats.waiting.saturating_sub(1);
            }
            Some(_) => return out,
        }
        out.push(Action::TraceContainer(id));
        self.set_pending(id, true, &mut out);
        out
    }

    /// A container a crashed daemon traced that ended while no daemon ran,
    /// with the programs pinned: its last events wait in the ring buffer.
    /// Known by the spool's path and already removed, it becomes a task
    /// again (to take those events), resolves when its pod is known, and
    /// closes then.
    pub(crate) fn resume_gone(&mut self, id: u64, path: &str, now: Instant) -> Vec<Action> {
        if self.cgroups.contains_key(&id) {
            return self.resume(id);
        }
        let parsed = cgroup_path::parse(path.as_bytes());
        if !matches!(&parsed, CgroupPath::Container(cc) if cc.depth_below_container == 0) {
            return Vec::new();
        }
        self.cgroups.insert(
            id,
            CgroupInfo {
                path: path.to_string(),
                parsed,
                removed: Some(now),
            },
        );
        let mut out = Vec::new();
        self.set_pending(id, true, &mut out);
        out
    }

    /// A new policy. Pods it selects now are traced from here on; a pod
    /// it no longer selects keeps its running containers traced to their
    /// end (a record cut short would be worse), new ones are not.
    pub(crate) fn set_policy(&mut self, policy: Policy) -> Vec<Action> {
        self.policy = policy;
        self.warned.clear();
        let now_traced: Vec<PodInfo> = self
            .pods
            .live()
            .filter(|p| matches!(self.policy.decide(p), Decision::Trace(_)))
            .cloned()
            .collect();
        now_traced
            .into_iter()
            .flat_map(|p| self.on_pod(p))
            .collect()
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }
}

#[cfg(test)]
mod tests;
