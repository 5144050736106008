//! Attribution's bookkeeping between events: what is known of a cgroup,
//! which trace-set entries it owns, and forgetting what is gone.

use std::time::{Duration, Instant};

use super::{Action, Attributor, CgState, TaskMeta, pods::RunState};

impl Attributor {
    pub(crate) fn cgroup_removed(&self, id: u64) -> bool {
        self.cgroups.get(&id).is_some_and(|c| c.removed.is_some())
    }

    /// The container's state per the API server, for a traced cgroup.
    pub(crate) fn run_state(&self, meta: &TaskMeta) -> Option<RunState> {
        self.pods
            .get(&meta.pod_uid)?
            .find_run(&meta.container_id)
            .map(|(_, r)| r.state.clone())
    }

    /// A task's record was written or dropped: forget its cgroup.
    pub(crate) fn forget(&mut self, id: u64) {
        if let Some(CgState::Pending { .. }) = self.states.remove(&id) {
            self.stats.waiting = self.stats.waiting.saturating_sub(1);
        }
        if self.cgroups.get(&id).is_some_and(|c| c.removed.is_some()) {
            self.cgroups.remove(&id);
        }
    }

    /// Whether the pod watch delivers now (listed, healthy, not held).
    /// While it does not, cgroups waiting for their pod are kept: nothing
    /// can be learnt about them, and dropping them would lose their record.
    pub(crate) fn set_watch_delivers(&mut self, delivers: bool, now: Instant) {
        match (delivers, self.watch_delivers_since) {
            (true, None) => self.watch_delivers_since = Some(now),
            (false, Some(_)) => self.watch_delivers_since = None,
            _ => {}
        }
    }

    /// Forgets removed cgroups that hold no task. A removed cgroup whose
    /// container has not resolved yet is kept until `pending_grace` has
    /// passed both since it was removed and since the pod watch delivers
    /// again (a short container's cgroup is often gone before the API
    /// server reports its container id; a watch that delivers nothing
    /// could not have said), then dropped as unattributed.
    pub(crate) fn sweep(&mut self, now: Instant, pending_grace: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        let delivers = self.watch_delivers_since;
        let expired = |removed: Instant| {
            delivers.is_some_and(|since| now.duration_since(removed.max(since)) > pending_grace)
        };
        let gone: Vec<u64> = self
            .cgroups
            .iter()
            .filter(|(id, c)| match (c.removed, self.states.get(id)) {
                (None, _) | (_, Some(CgState::Traced)) => false,
                (Some(t), Some(CgState::Pending { .. })) => expired(t),
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
    pub(crate) fn pending(&self) -> Vec<String> {
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

    /// The cgroups known and not removed, with their paths.
    pub(crate) fn live_cgroups(&self) -> Vec<(u64, String)> {
        self.cgroups
            .iter()
            .filter(|(_, c)| c.removed.is_none())
            .map(|(id, c)| (*id, c.path.clone()))
            .collect()
    }

    /// Whether this cgroup id is known (from an event or a walk).
    pub(crate) fn knows(&self, id: u64) -> bool {
        self.cgroups.contains_key(&id)
    }

    /// Whether a trace-set entry for `id` is one attribution put (or
    /// expects) there: a traced pod's cgroup, or a container cgroup being
    /// collected or traced.
    pub(crate) fn owns_trace_entry(&self, id: u64) -> bool {
        self.traced_pods.contains(&id)
            || matches!(
                self.states.get(&id),
                Some(
                    CgState::Traced
                        | CgState::Pending {
                            in_trace_set: true,
                            ..
                        }
                )
            )
    }

    /// The cgroup paths of the traced pods: where a container whose mkdir
    /// event was lost is looked for first.
    pub(crate) fn traced_pod_paths(&self) -> Vec<String> {
        self.traced_pods
            .iter()
            .filter_map(|id| self.cgroups.get(id).map(|c| c.path.clone()))
            .collect()
    }
}
