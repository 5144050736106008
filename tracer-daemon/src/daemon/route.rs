//! From the ring buffer to tasks: every ring-buffer record is decoded once;
//! cgroup events go to attribution (a new container must be a task before
//! its first event is routed), the others to their task or, counted, away.

use std::{collections::HashSet, time::Instant};

use super::State;
use crate::{
    attribution::Route,
    events::{Body, reader::EventReader},
};

impl State {
    /// Hands every waiting ring-buffer record to its task.
    pub(super) fn drain(&mut self, reader: &mut EventReader) {
        let mut exited: HashSet<u64> = HashSet::new();
        let mut removed_task = false;
        reader.drain(|bytes| {
            let Some(ev) = self.engine.decode(bytes) else {
                return;
            };
            if let Body::Cgroup(c) = &ev.body {
                let acts = self.attr.on_cgroup(c, Instant::now());
                removed_task |= !c.created && self.engine.contains(c.id);
                self.execute(acts);
                return;
            }
            if !self.attr.knows(ev.task) {
                self.recover_unknown(ev.task);
            }
            match self.attr.route(&ev) {
                Route::Task => {
                    self.engine.apply(&ev);
                    if matches!(ev.body, Body::Exit { .. }) {
                        exited.insert(ev.task);
                    }
                }
                Route::Ignored | Route::Unattributed => {}
            }
        });
        let now = Instant::now();
        for id in exited {
            self.on_exit(id, now);
        }
        if self.count_drain() || removed_task {
            // Close soon: outputs in emptyDir volumes must be hashed before
            // the kubelet tears the volumes down.
            self.end_tasks(false);
        }
    }
}
