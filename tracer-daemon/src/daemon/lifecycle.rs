//! A task's life in the daemon: it begins when its cgroup is in the trace
//! set, learns who it is when its container resolves, ends when its cgroup
//! empties, and leaves when its record is written or it is discarded. What
//! attribution decides ([`Action`]s) is carried out here.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use roar_node_common::traced::TRACE_CHILDREN_ARE_ROOTS;
use tokio::sync::oneshot;

use super::State;
use crate::{
    attribution::{
        Action, Role, TaskMeta,
        cgroupfs::{pid_in_cgroup, populated},
        pods::RunState,
    },
    proto as pb,
    records::{ctrl_exit_code, mountns::MountNs, osmo_exec_started_a_command},
};

/// What the daemon keeps for a task besides what its events built.
#[derive(Default)]
pub(super) struct Lifecycle {
    /// Its cgroup, relative to the cgroup2 root.
    pub(super) path: String,
    /// It entered the trace set after its cgroup was made (its pod was
    /// not known yet): whether a process was in it then. `Some(false)`:
    /// nothing had run that is still running, so nothing was missed but a
    /// whole run that ended before (its record would show no process).
    populated_when_traced: Option<bool>,
    /// Who it is, once its container resolved.
    pub(super) meta: Option<TaskMeta>,
    /// When its cgroup was found empty or removed.
    gone_at: Option<Instant>,
    /// Drains of the ring buffer since then: the task closes after two,
    /// so the events its last processes sent are in.
    drains_since_gone: u32,
    /// Its record is being built: send who it was and its exit code here.
    closing: Option<oneshot::Sender<Final>>,
    /// When it closed, `osmo_exec` (if it ran) had started a command: if
    /// not, an OSMO user record waits for osmo-ctrl's exit code.
    osmo_command_started: bool,
    pub(super) checkpoint: super::checkpoints::CheckpointPace,
}

impl Lifecycle {
    pub(super) fn pod_uid(&self) -> Option<&str> {
        self.meta.as_ref().map(|m| m.pod_uid.as_str())
    }

    /// Still running (its cgroup has processes).
    pub(super) fn running(&self) -> bool {
        self.gone_at.is_none()
    }
}

/// What a closed task's record is still waiting for.
pub(super) enum Final {
    Write {
        meta: TaskMeta,
        pod: Option<Box<crate::attribution::pods::PodInfo>>,
        exit_code: Option<i32>,
    },
    Discard {
        unattributed: bool,
    },
}

/// Tasks a previous roar-node traced that ended while none ran, and their
/// last checkpoints: they get a record once their pods are known.
#[derive(Default)]
pub(super) struct Orphans {
    pub(super) tasks: Vec<pb::TaskOpened>,
    pub(super) checkpoints: std::collections::BTreeMap<String, pb::TaskCheckpoint>,
}

impl State {
    /// Carries out what attribution decided.
    pub(super) fn execute(&mut self, acts: Vec<Action>) {
        for act in acts {
            match act {
                Action::TracePod(id) => self.trace(id, TRACE_CHILDREN_ARE_ROOTS, "pod"),
                Action::TraceContainer(id) => self.trace(id, 0, "container"),
                Action::Untrace(id) => {
                    self.probes.traced.untrace(id);
                }
                Action::Warn(msg) => {
                    self.counters.warnings += 1;
                    tracing::warn!("{msg}");
                }
                Action::Begin { cgroup, path, late } => {
                    // Checked after it entered the trace set (the action
                    // before this one): a process that comes later is seen.
                    let populated_when_traced = late.then(|| populated(&self.ctx.cgroot, &path));
                    self.engine.register(
                        cgroup,
                        Lifecycle {
                            path,
                            populated_when_traced,
                            ..Lifecycle::default()
                        },
                    );
                }
                Action::Resolved(meta) => self.on_resolved(meta),
                Action::Discard {
                    cgroup,
                    unattributed,
                } => self.discard(cgroup, unattributed),
            }
        }
    }

    fn trace(&mut self, id: u64, flags: u32, what: &str) {
        if let Err(e) = self.probes.traced.trace(id, flags | self.ctx.trace_flags) {
            tracing::error!(cgroup = id, error = %e, "cannot add a {what} cgroup to the trace set");
        }
    }

    /// A task's container is known: it is a task of record now.
    fn on_resolved(&mut self, mut meta: TaskMeta) {
        let id = meta.cgroup_id;
        // Traced late, but nothing ran in it then: whatever runs is seen
        // from its start (a run that had already ended shows as a record
        // with no process, partial).
        if self
            .engine
            .get(id)
            .is_some_and(|e| e.lifecycle.populated_when_traced == Some(false))
        {
            meta.started_before_agent = false;
        }
        let task_id = meta.task_id();
        // In the spool already: a task resumed after a restart (with its
        // gaps), whose entry stays.
        let spooled_gaps = self
            .spool
            .lock()
            .open_task(&task_id)
            .map(|t| !t.gaps.is_empty());
        if meta.started_before_agent || spooled_gaps == Some(true) {
            // No exec seen (running before this daemon traced it): hold the
            // namespace of a process that is in the container now.
            match pid_in_cgroup(&self.ctx.host_proc, &meta.cgroup_path)
                .map(|pid| MountNs::of_pid(&self.ctx.host_proc, pid))
            {
                Some(Ok(ns)) => self.engine.hold(id, Arc::new(ns)),
                other => tracing::warn!(
                    task = %task_id,
                    "no mount namespace for a container that was already running ({other:?}): its files are hashed from the daemon's view"
                ),
            }
        }
        tracing::info!(task = %task_id, role = %meta.role, cgroup = id, "task resolved");
        self.counters.tasks_started += 1;
        if spooled_gaps.is_none() {
            let opened = pb::TaskOpened {
                traced_since_ns: crate::sinks::spool::now_ns(),
                ..pb::TaskOpened::from(&meta)
            };
            self.spool_op("task opened", |s| s.task_opened(opened));
        }
        if let Some(e) = self.engine.get_mut(id) {
            e.lifecycle.meta = Some(meta);
        }
    }

    /// Drops a task that is not one (sandbox, osmo-init, not opted in) or
    /// never resolved: no record. Its events are counted as ignored or
    /// unattributed.
    fn discard(&mut self, id: u64, unattributed: bool) {
        let Some(entry) = self.engine.remove(id) else {
            return;
        };
        self.counters.tasks_discarded += 1;
        if let Some(t) = entry.task() {
            self.count_dropped(t.stats.total_events(), unattributed);
        }
        let l = entry.lifecycle;
        if let Some(m) = &l.meta {
            let task_id = m.task_id();
            self.spool_op("task closed", |s| s.task_closed(&task_id));
        }
        if let Some(tx) = l.closing {
            // The record being built counts its events when it is dropped.
            let _ = tx.send(Final::Discard { unattributed });
        }
    }

    fn count_dropped(&mut self, events: u64, unattributed: bool) {
        if unattributed {
            self.counters.record_threads.add_unattributed(events);
        } else {
            self.attr.stats.ignored += events;
        }
    }

    /// A process of task `id` exited: if it was the last, the cgroup is
    /// empty now (well before the runtime removes it).
    pub(super) fn on_exit(&mut self, id: u64, now: Instant) {
        let cgroot = &self.ctx.cgroot;
        if let Some(e) = self.engine.get_mut(id)
            && e.lifecycle.gone_at.is_none()
            && !populated(cgroot, &e.lifecycle.path)
        {
            e.lifecycle.gone_at = Some(now);
        }
    }

    /// Counts a drain for every task whose cgroup is gone; true if any.
    pub(super) fn count_drain(&mut self) -> bool {
        let mut any = false;
        for (_, e) in self.engine.iter_mut() {
            let l = &mut e.lifecycle;
            if l.gone_at.is_some() && l.closing.is_none() {
                l.drains_since_gone += 1;
                any = true;
            }
        }
        any
    }

    /// Closes tasks whose cgroup is empty or gone (after a grace and two
    /// drains), and writes the records of closed tasks once the API server
    /// has reported their exit code (or `status_wait` passed).
    /// `check_fs`: also look for cgroups removed without an event.
    pub(super) fn end_tasks(&mut self, check_fs: bool) {
        let now = Instant::now();
        self.mark_gone(now, check_fs);
        let mut closing = Vec::new();
        let mut settled = Vec::new();
        for (id, e) in self.engine.iter() {
            let l = &e.lifecycle;
            let Some(gone) = l.gone_at else { continue };
            if l.closing.is_none() {
                if now.duration_since(gone) >= self.ctx.grace && l.drains_since_gone >= 2 {
                    closing.push(id);
                }
            } else if let Some(code) = l.meta.as_ref().and_then(|m| self.settled(m, l, gone, now)) {
                settled.push((id, code));
            }
        }
        for id in closing {
            let started = self
                .engine
                .get(id)
                .and_then(|e| e.task())
                .is_none_or(|t| osmo_exec_started_a_command(&t.processes));
            match self.close(id, false) {
                Some(tx) => {
                    if let Some(e) = self.engine.get_mut(id) {
                        e.lifecycle.closing = Some(tx);
                        e.lifecycle.osmo_command_started = started;
                    }
                }
                None => self.discard(id, true),
            }
        }
        for (id, code) in settled {
            self.settle(id, code);
        }
    }

    /// Notes the time a task's cgroup is found removed (an rmdir event, or
    /// with `check_fs` its directory missing).
    fn mark_gone(&mut self, now: Instant, check_fs: bool) {
        let cgroot = &self.ctx.cgroot;
        let attr = &self.attr;
        for (id, e) in self.engine.iter_mut() {
            let l = &mut e.lifecycle;
            if l.gone_at.is_none()
                && (attr.cgroup_removed(id)
                    || (check_fs && !cgroot.join(l.path.trim_start_matches('/')).exists()))
            {
                l.gone_at = Some(now);
            }
        }
    }

    /// Whether a closed task's record can be named now: `Some(exit code
    /// from its status)` once the API server reported it, `Some(None)` when
    /// it will not (pod deleted, or `status_wait` passed). An OSMO user
    /// container whose `osmo_exec` ran no command and exited 0 also waits
    /// for osmo-ctrl's exit code (within `status_wait`): the command never
    /// ran, and the record must say why.
    fn settled(
        &self,
        meta: &TaskMeta,
        l: &Lifecycle,
        gone: Instant,
        now: Instant,
    ) -> Option<Option<i32>> {
        let waited_enough = self.attr.pods.is_deleted(&meta.pod_uid)
            || now.duration_since(gone) >= self.ctx.status_wait;
        match self.attr.run_state(meta) {
            Some(RunState::Terminated { exit_code: 0 })
                if meta.role == Role::User
                    && !l.osmo_command_started
                    && ctrl_exit_code(self.attr.pods.get(&meta.pod_uid)).is_none()
                    && !waited_enough =>
            {
                None
            }
            Some(RunState::Terminated { exit_code }) => Some(Some(exit_code)),
            _ if waited_enough => Some(None),
            _ => None,
        }
    }

    /// Names the record of a closed task and lets it be written; the task
    /// leaves.
    pub(super) fn settle(&mut self, id: u64, code: Option<i32>) {
        let Some(entry) = self.engine.remove(id) else {
            return;
        };
        let (Some(tx), Some(meta)) = (entry.lifecycle.closing, entry.lifecycle.meta) else {
            return;
        };
        let pod = self.attr.pods.get(&meta.pod_uid).cloned().map(Box::new);
        self.attr.forget(meta.cgroup_id);
        let _ = tx.send(Final::Write {
            meta,
            pod,
            exit_code: code,
        });
    }

    /// Shutting down. Tasks that ended get their record. Tasks still
    /// running do not: the next roar-node on this node picks them up
    /// (marked partial) and writes their one record; writing one here too
    /// would give roar two records of one container run.
    pub(super) async fn shut_down(&mut self, reader: &mut crate::events::reader::EventReader) {
        self.drain(reader);
        for id in self.engine.keys() {
            let Some(e) = self.engine.get(id) else {
                continue;
            };
            if e.lifecycle.running() {
                if let Some(m) = &e.lifecycle.meta {
                    tracing::info!(task = %m.task_id(), "still running: left to the next roar-node on this node");
                }
                continue;
            }
            if e.lifecycle.closing.is_none()
                && let Some(tx) = self.close(id, false)
                && let Some(e) = self.engine.get_mut(id)
            {
                e.lifecycle.closing = Some(tx);
            }
            let code = self
                .engine
                .get(id)
                .and_then(|e| e.lifecycle.meta.as_ref())
                .map(|m| match self.attr.run_state(m) {
                    Some(RunState::Terminated { exit_code }) => Some(exit_code),
                    _ => None,
                });
            match code {
                Some(code) => self.settle(id, code),
                None => self.discard(id, true),
            }
        }
        // Let the records being built finish (hashing), within reason.
        let t0 = Instant::now();
        while self.counters.record_threads.pending() > 0 && t0.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The gap of the tasks left running starts here.
        self.spool_op("heartbeat", |s| s.heartbeat());
        // A normal stop: nothing stays attached after we exit.
        self.probes.unpin();
        let report = self.report(0);
        if let Some(p) = &self.ctx.stats_file {
            super::reporting::write_stats(p, &report);
        }
        tracing::info!(
            tasks = self.counters.tasks_started,
            records = report.tasks.records_written,
            unattributed = report.attribution.unattributed,
            "stopped"
        );
    }
}
