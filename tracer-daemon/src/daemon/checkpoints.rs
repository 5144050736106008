//! Checkpoints of running tasks in the spool: after a crash, the next
//! daemon continues each task from its last checkpoint instead of from
//! nothing.

use std::time::{Duration, Instant};

use super::State;
use crate::proto as pb;

/// Spool bytes per second one task's checkpoints may take: a task with
/// 300,000 files is checkpointed every minute or so, a small one every 5 s,
/// so that a flooding pod cannot turn the spool into its own I/O load.
const BYTES_PER_SEC: u64 = 256 << 10;

/// When a task was last checkpointed, and how big that was.
#[derive(Default)]
pub(super) struct CheckpointPace {
    /// Events in the task at its last checkpoint.
    events: u64,
    at: Option<Instant>,
    bytes: u64,
}

impl CheckpointPace {
    /// Whether a task with `events` events is due now.
    fn due(&self, events: u64, now: Instant) -> bool {
        let pace = Duration::from_secs(self.bytes / BYTES_PER_SEC);
        events != self.events && self.at.is_none_or(|t| now.duration_since(t) >= pace)
    }
}

impl State {
    /// Checkpoints the running, resolved tasks that changed since their
    /// last checkpoint.
    pub(super) fn checkpoint_tasks(&mut self) {
        let at_ns = crate::sinks::spool::now_ns();
        let now = Instant::now();
        let due: Vec<u64> = self
            .engine
            .iter()
            .filter(|(_, e)| {
                e.lifecycle.meta.is_some()
                    && e.lifecycle.running()
                    && e.task()
                        .is_some_and(|t| e.lifecycle.checkpoint.due(t.stats.total_events(), now))
            })
            .map(|(id, _)| id)
            .collect();
        // One at a time: a big task's state is large, and only one is held.
        for id in due {
            let Some(e) = self.engine.get_mut(id) else {
                continue;
            };
            let (Some(meta), Some(task)) = (&e.lifecycle.meta, e.task()) else {
                continue;
            };
            let state = pb::TaskState::from(task);
            let c = pb::TaskCheckpoint {
                task_id: meta.task_id(),
                cgroup_id: id,
                at_ns,
                state: None,
            };
            e.lifecycle.checkpoint = CheckpointPace {
                events: task.stats.total_events(),
                at: Some(now),
                bytes: prost::Message::encoded_len(&state) as u64,
            };
            let c = pb::TaskCheckpoint {
                state: Some(state),
                ..c
            };
            self.spool_op("checkpoint", |s| s.checkpoint(c));
        }
    }
}
