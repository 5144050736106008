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

pub mod cgroup_path;
pub mod cgroupfs;
pub mod pods;
pub mod policy;
mod task;

pub(crate) use self::task::TaskMeta;
pub use self::task::{Role, TraceReason};

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use self::{
    cgroup_path::{CgroupPath, ContainerCgroup},
    pods::{PodIndex, PodInfo, RunState},
    policy::{Decision, Policy},
};
use crate::events::{CgroupChange, Event};

/// What the daemon must do.
#[derive(Debug)]
pub enum Action {
    /// Put a pod's cgroup in the kernel trace set, its children as roots.
    TracePod(u64),
    /// Put a container cgroup in the kernel trace set as a task root (one
    /// that existed before its pod was known to be traced).
    TraceContainer(u64),
    /// Take a cgroup (and what the kernel added below it) out of the trace set.
    Untrace(u64),
    /// A container cgroup of a traced pod appeared in the trace set: collect
    /// its events as a task now, who it is comes later (`Resolved`) or it
    /// is dropped (`Discard`).
    Begin { cgroup: u64, path: String },
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
pub enum Route {
    /// To its task in the engine (resolved, or waiting for its identity).
    Task,
    /// Dropped: the cgroup is known not to be traced. Counted.
    Ignored,
    /// Dropped: no task. Counted.
    Unattributed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttributionStats {
    /// Events collected while their container was not resolved yet.
    pub before_resolution: u64,
    /// Events of cgroups that turned out not to be traced, dropped.
    pub ignored: u64,
    /// Events no task could be found for (including the events of
    /// containers that never resolved).
    pub unattributed: u64,
    /// Container cgroups waiting for their identity now (a gauge).
    pub waiting: u64,
}

#[derive(Debug)]
enum CgState {
    /// A container cgroup of a traced pod whose container is not known
    /// yet. `in_trace_set`: the kernel (or we) put it in the kernel trace set.
    Pending {
        in_trace_set: bool,
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

pub struct Attributor {
    pub pods: PodIndex,
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
    pub stats: AttributionStats,
}

impl Attributor {
    pub fn new(policy: Policy) -> Self {
        Self {
            pods: PodIndex::default(),
            policy,
            cgroups: HashMap::new(),
            pod_cgroups: HashMap::new(),
            traced_pods: HashSet::new(),
            states: HashMap::new(),
            warned: HashSet::new(),
            first_container_cgroup: HashMap::new(),
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
        self.states.insert(id, CgState::Pending { in_trace_set });
        self.stats.waiting += 1;
        if in_trace_set {
            out.push(Action::Begin {
                cgroup: id,
                path: self.cgroups[&id].path.clone(),
            });
        }
    }

    /// A pod was added or changed (watch event or initial list).
    pub fn on_pod(&mut self, pod: PodInfo) -> Vec<Action> {
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
            self.resolve(id, &mut out);
        }
        out
    }

    /// The pod is gone from the API server.
    pub fn on_pod_deleted(&mut self, uid: &str, now: Instant) -> Vec<Action> {
        self.pods.delete(uid, now);
        self.first_container_cgroup.remove(uid);
        let mut out = Vec::new();
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
    pub fn on_cgroup(&mut self, c: &CgroupChange, now: Instant) -> Vec<Action> {
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
                // not traced: nothing to do.
                if c.traced_by_kernel || !known_untraced {
                    self.set_pending(c.id, c.traced_by_kernel, &mut out);
                    self.resolve(c.id, &mut out);
                }
            }
            _ => {}
        }
        out
    }

    /// Drops a pending cgroup: known not traced, or never resolved.
    fn drop_pending(&mut self, id: u64, unattributed: bool, out: &mut Vec<Action>) {
        if let Some(CgState::Pending { in_trace_set }) = self.states.insert(id, CgState::Ignored) {
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
        let Some(CgState::Pending { in_trace_set }) = self.states.get(&id) else {
            return;
        };
        let in_trace_set = *in_trace_set;
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
            role,
            reason,
            // Not in the trace set from its creation: known only from the
            // start-up walk, or created before its pod was known.
            started_before_agent: !in_trace_set,
        };
        self.states.insert(id, CgState::Traced);
        self.stats.waiting = self.stats.waiting.saturating_sub(1);
        if !in_trace_set {
            out.push(Action::TraceContainer(id));
            out.push(Action::Begin {
                cgroup: id,
                path: meta.cgroup_path.clone(),
            });
        }
        out.push(Action::Resolved(meta));
    }

    /// Routes a task event (not a cgroup one).
    pub fn route(&mut self, ev: &Event) -> Route {
        match self.states.get(&ev.task) {
            Some(CgState::Traced) => Route::Task,
            Some(CgState::Pending { in_trace_set: true }) => {
                self.stats.before_resolution += 1;
                Route::Task
            }
            Some(CgState::Ignored) => {
                self.stats.ignored += 1;
                Route::Ignored
            }
            Some(CgState::Pending {
                in_trace_set: false,
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
    pub fn resume(&mut self, id: u64) -> Vec<Action> {
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
    pub fn resume_gone(&mut self, id: u64, path: &str, now: Instant) -> Vec<Action> {
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
    pub fn set_policy(&mut self, policy: Policy) -> Vec<Action> {
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

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn cgroup_removed(&self, id: u64) -> bool {
        self.cgroups.get(&id).is_some_and(|c| c.removed.is_some())
    }

    /// The container's state per the API server, for a traced cgroup.
    pub fn run_state(&self, meta: &TaskMeta) -> Option<RunState> {
        self.pods
            .get(&meta.pod_uid)?
            .find_run(&meta.container_id)
            .map(|(_, r)| r.state.clone())
    }

    /// A task's record was written or dropped: forget its cgroup.
    pub fn forget(&mut self, id: u64) {
        if let Some(CgState::Pending { .. }) = self.states.remove(&id) {
            self.stats.waiting = self.stats.waiting.saturating_sub(1);
        }
        if self.cgroups.get(&id).is_some_and(|c| c.removed.is_some()) {
            self.cgroups.remove(&id);
        }
    }

    /// Forgets removed cgroups that hold no task. A removed cgroup whose
    /// container has not resolved yet is kept for `pending_grace` (a
    /// short container's cgroup is often gone before the API server
    /// reports its container id), then dropped as unattributed.
    pub fn sweep(&mut self, now: Instant, pending_grace: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        let gone: Vec<u64> = self
            .cgroups
            .iter()
            .filter(|(id, c)| match (c.removed, self.states.get(id)) {
                (None, _) | (_, Some(CgState::Traced)) => false,
                (Some(t), Some(CgState::Pending { .. })) => now.duration_since(t) > pending_grace,
                (Some(_), _) => true,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if matches!(self.states.get(&id), Some(CgState::Pending { .. })) {
                self.drop_pending(id, true, &mut out);
            }
            self.states.remove(&id);
            self.cgroups.remove(&id);
        }
        out
    }

    /// Pending container cgroups (for diagnostics).
    pub fn pending(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .states
            .iter()
            .filter(|(_, s)| matches!(s, CgState::Pending { .. }))
            .map(|(id, _)| {
                self.cgroups
                    .get(id)
                    .map(|c| c.path.clone())
                    .unwrap_or_else(|| id.to_string())
            })
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Body;

    const POD: &str = include_str!("testdata/osmo-pod.json");

    fn pod() -> PodInfo {
        PodInfo::from_pod(&serde_json::from_str(POD).unwrap()).unwrap()
    }

    fn mkdir(id: u64, path: &str, traced: bool) -> CgroupChange {
        CgroupChange {
            created: true,
            id,
            parent_id: 0,
            level: 0,
            path: path.as_bytes().to_vec(),
            path_truncated: false,
            traced_by_kernel: traced,
        }
    }

    fn exit_ev(task: u64) -> Event {
        Event {
            task,
            tgid: 1,
            pid: 1,
            time_ns: 1,
            body: Body::Exit { status: 0 },
        }
    }

    fn id_of(p: &PodInfo, name: &str) -> String {
        p.container(name).unwrap().runs[0].container_id.clone()
    }

    fn resolved(acts: &[Action], cgroup: u64) -> &TaskMeta {
        acts.iter()
            .find_map(|a| match a {
                Action::Resolved(m) if m.cgroup_id == cgroup => Some(m),
                _ => None,
            })
            .unwrap()
    }

    fn names(acts: &[Action]) -> Vec<String> {
        acts.iter()
            .map(|a| match a {
                Action::TracePod(id) => format!("trace-pod {id}"),
                Action::TraceContainer(id) => format!("trace {id}"),
                Action::Untrace(id) => format!("untrace {id}"),
                Action::Begin { cgroup, .. } => format!("begin {cgroup}"),
                Action::Resolved(m) => {
                    format!("resolved {} {} {}", m.cgroup_id, m.role, m.task_id())
                }
                Action::Discard {
                    cgroup,
                    unattributed,
                } => format!("discard {cgroup} {unattributed}"),
                Action::Warn(_) => "warn".into(),
            })
            .collect()
    }

    /// The order things happen on a node: pod known (no statuses yet), pod
    /// cgroup, sandbox + container cgroups with events, then statuses.
    #[test]
    fn pod_first_then_cgroups_then_ids() {
        let full = pod();
        let mut early = full.clone();
        early.phase = "Pending".into();
        for c in &mut early.containers {
            c.runs.clear();
        }
        let uid = full.uid.clone();
        let base = format!("/kubepods/besteffort/pod{uid}");
        let mut a = Attributor::new(Policy::default());
        let now = Instant::now();
        assert!(a.on_pod(early).is_empty(), "no cgroup yet");
        let acts = a.on_cgroup(&mkdir(10, &base, false), now);
        assert_eq!(names(&acts), ["trace-pod 10"]);
        // The kernel made these roots because their parent is traced.
        let sandbox = "a".repeat(64);
        for (id, cid) in [
            (11, sandbox.as_str()),
            (12, &id_of(&full, "osmo-init")),
            (13, &id_of(&full, "osmo-ctrl")),
            (14, &id_of(&full, "train")),
        ] {
            let acts = a.on_cgroup(&mkdir(id, &format!("{base}/{cid}"), true), now);
            assert_eq!(names(&acts), [format!("begin {id}")]);
            assert_eq!(a.route(&exit_ev(id)), Route::Task);
        }
        assert_eq!(a.stats.waiting, 4);
        assert_eq!(a.route(&exit_ev(99)), Route::Unattributed);
        let acts = a.on_pod(full);
        assert_eq!(
            names(&acts),
            [
                "untrace 11",
                "discard 11 false",
                "untrace 12",
                "discard 12 false",
                &format!("resolved 13 osmo-ctrl {uid}:osmo-ctrl:0:0"),
                &format!("resolved 14 user {uid}:train:0:0"),
            ]
        );
        assert_eq!(a.route(&exit_ev(14)), Route::Task);
        assert_eq!(a.route(&exit_ev(11)), Route::Ignored);
        assert_eq!(a.stats.before_resolution, 4);
        assert_eq!(a.stats.ignored, 1);
        assert_eq!(a.stats.unattributed, 1);
        assert_eq!(a.stats.waiting, 0);
        assert!(!resolved(&acts, 14).started_before_agent);
    }

    /// Start-up: cgroups walked before the pods are listed; running
    /// containers go into the trace set directly.
    #[test]
    fn startup_walk_then_list() {
        let full = pod();
        let uid = full.uid.clone();
        let base = format!("/kubepods/besteffort/pod{uid}");
        let mut a = Attributor::new(Policy::default());
        let now = Instant::now();
        a.on_cgroup(&mkdir(10, &base, false), now);
        a.on_cgroup(
            &mkdir(14, &format!("{base}/{}", id_of(&full, "train")), false),
            now,
        );
        let acts = a.on_pod(full);
        assert_eq!(
            names(&acts),
            [
                "trace-pod 10".to_string(),
                "trace 14".into(),
                "begin 14".into(),
                format!("resolved 14 user {uid}:train:0:0")
            ]
        );
        assert!(resolved(&acts, 14).started_before_agent);
    }

    /// A restarted container's new cgroup appears before the status shows
    /// its id (the previous run's id is there): it is not the sandbox.
    #[test]
    fn restarted_container_is_not_the_sandbox() {
        let full = pod();
        let uid = full.uid.clone();
        let base = format!("/kubepods/besteffort/pod{uid}");
        let mut a = Attributor::new(Policy::default());
        let t0 = Instant::now();
        let mut running = full.clone();
        running.phase = "Running".into();
        a.on_pod(running.clone());
        a.on_cgroup(&mkdir(10, &base, false), t0);
        a.on_cgroup(&mkdir(11, &format!("{base}/{}", "a".repeat(64)), true), t0);
        let first = id_of(&full, "train");
        a.on_cgroup(&mkdir(14, &format!("{base}/{first}"), true), t0);
        let second = "b".repeat(64);
        let acts = a.on_cgroup(&mkdir(15, &format!("{base}/{second}"), true), t0);
        assert_eq!(names(&acts), ["begin 15"], "waits for its id");
        assert_eq!(a.stats.waiting, 1);
        // The status now shows the new run, the old one in lastState.
        let c = running
            .containers
            .iter_mut()
            .find(|c| c.name == "train")
            .unwrap();
        c.runs.insert(
            0,
            pods::ContainerRun {
                container_id: second.clone(),
                restart_count: 1,
                state: RunState::Running,
            },
        );
        c.runs[1].restart_count = 0;
        let acts = a.on_pod(running);
        assert!(
            names(&acts).contains(&format!("resolved 15 user {uid}:train:0:1")),
            "{:?}",
            names(&acts)
        );
    }

    /// A container a previous daemon traced, found by the start-up walk:
    /// into the trace set at once, before its pod is known; it resolves as a
    /// task that was traced all along (the spool says what is missing).
    #[test]
    fn resumed_after_the_walk() {
        let p = pod();
        let base = format!("/kubepods/besteffort/pod{}", p.uid);
        let mut a = Attributor::new(Policy::default());
        let now = Instant::now();
        a.on_cgroup(&mkdir(1, &base, false), now);
        let sandbox = "a".repeat(64);
        a.on_cgroup(&mkdir(2, &format!("{base}/{sandbox}"), false), now);
        let train = mkdir(3, &format!("{base}/{}", id_of(&p, "train")), false);
        assert!(a.on_cgroup(&train, now).is_empty());
        assert_eq!(names(&a.resume(3)), ["trace 3", "begin 3"]);
        assert!(a.resume(3).is_empty(), "once");
        assert!(a.resume(99).is_empty(), "unknown cgroup");
        let acts = a.on_pod(p.clone());
        let resolved: Vec<_> = acts
            .iter()
            .filter_map(|x| match x {
                Action::Resolved(m) if m.cgroup_id == 3 => Some(m.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(resolved.len(), 1, "{:?}", names(&acts));
        assert!(!resolved[0].started_before_agent);
    }

    /// With the programs pinned, a container that ended while no daemon
    /// ran is a task again (its last events are in the ring buffer), known
    /// as removed; it resolves when its pod is known.
    #[test]
    fn resumed_after_it_ended() {
        let p = pod();
        let base = format!("/kubepods/besteffort/pod{}", p.uid);
        let mut a = Attributor::new(Policy::default());
        let now = Instant::now();
        a.on_cgroup(&mkdir(1, &base, false), now);
        a.on_cgroup(&mkdir(2, &format!("{base}/{}", "a".repeat(64)), false), now);
        let path = format!("{base}/{}", id_of(&p, "train"));
        assert_eq!(names(&a.resume_gone(3, &path, now)), ["begin 3"]);
        assert!(a.cgroup_removed(3));
        assert!(a.resume_gone(4, "/not/a/container", now).is_empty());
        let acts = a.on_pod(p.clone());
        assert!(
            acts.iter()
                .any(|x| matches!(x, Action::Resolved(m) if m.cgroup_id == 3)),
            "{:?}",
            names(&acts)
        );
    }

    #[test]
    fn never_resolved_is_unattributed() {
        let full = pod();
        let uid = full.uid.clone();
        let base = format!("/kubepods/besteffort/pod{uid}");
        let mut a = Attributor::new(Policy::default());
        let t0 = Instant::now();
        let mut early = full.clone();
        early.phase = "Pending".into();
        for c in &mut early.containers {
            c.runs.clear();
        }
        a.on_pod(early);
        a.on_cgroup(&mkdir(10, &base, false), t0);
        let id = id_of(&full, "train");
        a.on_cgroup(&mkdir(14, &format!("{base}/{id}"), true), t0);
        let mut rm = mkdir(14, &format!("{base}/{id}"), false);
        rm.created = false;
        a.on_cgroup(&rm, t0);
        assert!(
            a.sweep(t0 + Duration::from_secs(5), Duration::from_secs(60))
                .is_empty()
        );
        let acts = a.sweep(t0 + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(names(&acts), ["untrace 14", "discard 14 true"]);
        assert_eq!(a.stats.waiting, 0);
    }

    #[test]
    fn opted_out_and_malformed() {
        let mut p = pod();
        p.annotations
            .insert(policy::ANNOTATION.into(), "yes please".into());
        let uid = p.uid.clone();
        let mut a = Attributor::new(Policy {
            osmo: true,
            ..Default::default()
        });
        let acts = a.on_pod(p.clone());
        assert!(matches!(&acts[..], [Action::Warn(m)] if m.contains("yes please")));
        assert!(a.on_pod(p.clone()).is_empty(), "warned once");
        let acts = a.on_cgroup(
            &mkdir(10, &format!("/kubepods/besteffort/pod{uid}"), false),
            Instant::now(),
        );
        assert!(acts.is_empty());
        p.annotations
            .insert(policy::ANNOTATION.into(), "false".into());
        a.on_pod(p);
        let cid = id_of(&pod(), "train");
        let acts = a.on_cgroup(
            &mkdir(14, &format!("/kubepods/besteffort/pod{uid}/{cid}"), false),
            Instant::now(),
        );
        assert!(acts.is_empty());
        assert_eq!(a.route(&exit_ev(14)), Route::Unattributed);
    }
}
