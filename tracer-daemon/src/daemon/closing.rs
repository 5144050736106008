//! From a closed task to a delivered roar record, off the loop: the record
//! is built (outputs hashed) on a blocking thread as soon as the task's
//! cgroup is empty, while the loop waits for the API server to say who the
//! task was and how it exited; then it is named and delivered.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{State, lifecycle::Final, reporting::RecordThreads};
use crate::sinks::{Delivered, Delivery};
use crate::{
    attribution::{TaskMeta, pods::RunState},
    records::{Clock, FinishedTask, PodTask, Record, RecordBuilder, TaskIdentity},
};

/// What a record thread needs from the daemon.
struct RecordJob {
    task: FinishedTask,
    builder: BuilderParts,
    node: String,
    kernel_counters: crate::probes::KernelStats,
    ended_while_down: bool,
    delivery: Arc<crate::sinks::Delivery>,
    spool: crate::sinks::spool::SharedSpool,
    counters: Arc<RecordThreads>,
}

struct BuilderParts {
    pool: Arc<crate::records::hashing::HashPool>,
    filters: Arc<crate::records::path_filters::PathFilterConfig>,
}

impl State {
    /// Takes a task's state out of the engine and the trace set and starts
    /// building its record on a blocking thread (hashing its outputs now).
    /// The record is named and delivered when the returned sender says who
    /// the task was and its exit code. `ended_while_down`: a task a
    /// previous daemon traced, recorded from its checkpoint.
    pub(super) fn close(
        &mut self,
        id: u64,
        ended_while_down: bool,
    ) -> Option<oneshot::Sender<Final>> {
        let entry = self.probes.traced.untrace(id);
        let finished = self.engine.finish(id)?;
        let job = RecordJob {
            task: finished.into_task(entry),
            builder: BuilderParts {
                pool: self.ctx.pool.clone(),
                filters: self.ctx.filters.clone(),
            },
            node: self.ctx.node.clone(),
            kernel_counters: self.probes.stats.read(),
            ended_while_down,
            delivery: self.delivery.clone(),
            spool: self.spool.clone(),
            counters: self.counters.record_threads.clone(),
        };
        let (tx, rx) = oneshot::channel::<Final>();
        job.counters.started();
        tokio::task::spawn_blocking(move || {
            job.run(rx);
        });
        Some(tx)
    }

    /// Records for tasks a previous roar-node traced that ended while no
    /// roar-node ran: what is known of them (who, the gap, the last
    /// checkpoint), marked partial.
    pub(super) fn write_orphans(&mut self) {
        for (i, t) in std::mem::take(&mut self.orphans.tasks)
            .into_iter()
            .enumerate()
        {
            let meta = match TaskMeta::try_from(&t) {
                Ok(m) => m,
                Err(e) => {
                    // A spool from another version: never silent.
                    self.counters.record_threads.error();
                    tracing::error!(task = %t.task_id, error = %e, "cannot read a task the previous roar-node left: no record");
                    continue;
                }
            };
            // Its cgroup is gone: a key no live cgroup can have.
            let key = u64::MAX - i as u64;
            self.engine.register(key, Default::default());
            if let Some(state) = self
                .orphans
                .checkpoints
                .remove(&t.task_id)
                .and_then(|c| c.state)
            {
                self.engine.restore(key, &state);
            }
            let tx = self.close(key, true);
            self.engine.remove(key);
            let Some(tx) = tx else {
                // Registered just above, so not expected; never silent.
                self.counters.record_threads.error();
                tracing::error!(task = %t.task_id, "no record could be started for a task that ended while roar-node was down");
                continue;
            };
            let code = match self.attr.run_state(&meta) {
                Some(RunState::Terminated { exit_code }) => Some(exit_code),
                _ => None,
            };
            let pod = self.attr.pods.get(&meta.pod_uid).cloned().map(Box::new);
            tracing::info!(task = %t.task_id, "writing the record of a task that ended while roar-node was down");
            let _ = tx.send(Final::Write {
                meta,
                pod,
                exit_code: code,
            });
        }
    }
}

impl RecordJob {
    fn run(self, rx: oneshot::Receiver<Final>) {
        let events = self.task.task.stats.total_events();
        let builder = RecordBuilder {
            pool: &self.builder.pool,
            filters: &self.builder.filters,
            clock: Clock::new(),
        };
        let unnamed = builder.build(self.task);
        let (meta, pod, exit_code) = match rx.blocking_recv() {
            Ok(Final::Write {
                meta,
                pod,
                exit_code,
            }) => (meta, pod, exit_code),
            Ok(Final::Discard { unattributed: true }) | Err(_) => {
                self.counters.add_unattributed(events);
                self.counters.finished();
                return;
            }
            Ok(Final::Discard { .. }) => {
                self.counters.finished();
                return;
            }
        };
        let task_id = meta.task_id();
        let gaps = self
            .spool
            .lock()
            .open_task(&task_id)
            .map(|t| t.gaps.clone())
            .unwrap_or_default();
        let record = unnamed.name(TaskIdentity::Pod(Box::new(PodTask {
            meta,
            pod: pod.map(|p| *p),
            exit_code,
            node: self.node,
            kernel_counters: self.kernel_counters,
            gaps,
            ended_while_down: self.ended_while_down,
        })));
        deliver(&self.delivery, &self.counters, &task_id, record);
        self.counters.finished();
    }
}

fn deliver(delivery: &Delivery, counters: &RecordThreads, task_id: &str, record: Record) {
    let big = record.summary.reads + record.summary.writes > 10_000;
    let s = &record.summary;
    match delivery.deliver(task_id, &record) {
        Ok(Delivered::At(at)) => {
            counters.written();
            tracing::info!(
                task = task_id,
                namespace = record.owner.namespace.as_deref(),
                workflow = record.owner.workflow_id.as_deref(),
                exit_code = record.fragment.exit_code,
                processes = s.processes,
                reads = s.reads,
                writes = s.writes,
                events = s.events,
                lost = s.lost,
                at = %at,
                "record written"
            );
        }
        Ok(Delivered::Waiting(why)) => {
            // Not an error of the record: the sink's refusal is counted
            // and reported by delivery; the record is durable.
            counters.written();
            tracing::warn!(
                task = task_id,
                namespace = record.owner.namespace.as_deref(),
                workflow = record.owner.workflow_id.as_deref(),
                error = %why,
                "record waiting in the spool for the sink"
            );
        }
        Err(e) => {
            counters.error();
            tracing::error!(task = task_id, error = %e, "writing the record failed");
        }
    }
    if big {
        // A big record's buffers are freed now: give the heap back to the
        // kernel rather than keep the peak resident.
        drop(record);
        // SAFETY: malloc_trim only releases free memory.
        unsafe { libc::malloc_trim(0) };
    }
}
