//! What the daemon reports about itself, from one place: the loop's
//! counters are gathered into a [`Report`] once a second, and that one
//! report is rendered both to `/metrics` ([`Report::publish`]) and to the
//! stats file ([`write_stats`], the same report as JSON).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use roar_node_common::event::EventKind;
use serde::Serialize;

use super::State;
use crate::{
    observability::{
        Metrics,
        metrics::{gauge_value, observe_total},
        queue,
    },
    probes::LossCause,
    records::Clock,
};

/// Counters the loop keeps (plain integers: only the loop writes them).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) tasks_started: u64,
    pub(super) tasks_discarded: u64,
    /// Malformed opt-in annotations warned about.
    pub(super) warnings: u64,
    pub(super) policy_errors: u64,
    pub(super) policy_generation: u64,
    pub(super) spool_errors: u64,
    /// Spool entries found damaged at start-up (checksum or decoding
    /// failed): each may have been a record or a task's state.
    pub(super) spool_damaged: u64,
    pub(super) spool_torn_bytes: u64,
    /// Bytes of records on the node (scanned every few seconds).
    pub(super) local_bytes: u64,
    /// Shared with the threads that build and deliver records.
    pub(super) record_threads: std::sync::Arc<RecordThreads>,
}

/// Counters of the record threads.
#[derive(Debug, Default)]
pub(super) struct RecordThreads {
    written: AtomicU64,
    /// Records being built or waiting for their identity and exit code.
    pending: AtomicU64,
    errors: AtomicU64,
    /// Events of tasks dropped because their container never resolved.
    unattributed: AtomicU64,
}

impl RecordThreads {
    pub(super) fn started(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn finished(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
    pub(super) fn written(&self) {
        self.written.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn add_unattributed(&self, events: u64) {
        self.unattributed.fetch_add(events, Ordering::Relaxed);
    }
    pub(super) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }
}

/// Everything the daemon reports, at one instant.
#[derive(Debug, Default, Serialize)]
pub(super) struct Report {
    time: f64,
    /// Ring-buffer records read.
    events: u64,
    events_by_kind: BTreeMap<&'static str, u64>,
    /// Events lost before reaching their task, over all tasks, by
    /// [`LossCause`] name (records say the same per task).
    lost_by_cause: BTreeMap<&'static str, u64>,
    pub(super) attribution: AttributionReport,
    pub(super) tasks: TasksReport,
    spool: SpoolReport,
    sink: SinkReport,
    queues: BTreeMap<&'static str, u64>,
    hashing: HashingReport,
    files_held: Option<usize>,
    pods_known: usize,
    policy_warnings: u64,
    policy: PolicyReport,
    probes: ProbesReport,
    api_reachable: bool,
    watch_healthy: bool,
    watch_errors: u64,
    /// The test-only hold is holding the pod watch's events back.
    watch_held: bool,
    /// How long a removed container cgroup waits for its pod while the
    /// watch delivers (`--pending-grace-secs`).
    pending_grace_secs: u64,
    /// The kernel's counters that are not zero, by name (all of them reach
    /// /metrics as `kernel_counters_total{counter}`, the losses also as
    /// `events_lost_total{cause}`).
    #[serde(serialize_with = "nonzero")]
    kernel_counters: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct AttributionReport {
    before_resolution: u64,
    ignored: u64,
    /// Every event of a traced cgroup that reached no task (the three
    /// below, added up).
    pub(super) unattributed: u64,
    /// Of those: events of a cgroup attribution did not know.
    unknown_cgroup: u64,
    /// Events of containers that never resolved, dropped with their task.
    never_resolved: u64,
    /// Events that came after their task's record was started.
    after_task_ended: u64,
    waiting: u64,
    /// Cgroups found again after their creation or removal event was lost,
    /// or traced with no task owning them.
    recovered: u64,
    /// Walks of the cgroup tree because cgroup events were lost.
    rescans: u64,
    /// Trace-set entries no task owned, released.
    trace_set_released: u64,
    /// Container cgroups waiting for their identity, by path.
    pending: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct TasksReport {
    active: usize,
    resolved: u64,
    discarded: u64,
    pub(super) records_written: u64,
    records_pending: u64,
    record_errors: u64,
}

#[derive(Debug, Default, Serialize)]
struct SpoolReport {
    undelivered: usize,
    open_tasks: usize,
    bytes: u64,
    errors: u64,
    damaged_entries_at_start: u64,
    torn_bytes_at_start: u64,
    undelivered_bytes: u64,
    /// Seconds the oldest undelivered record has waited.
    oldest_waiting_seconds: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct SinkReport {
    to: String,
    /// Why it refuses records, while it does.
    problem: Option<String>,
    /// Seconds before the next attempt (back-off).
    retry_in_seconds: f64,
    delivered: u64,
    redelivered: u64,
    failures: u64,
    unsent: u64,
    over_spool_budget: u64,
    /// Bytes of records kept on the node (bundle directory or copies).
    local_bytes: u64,
}

#[derive(Debug, Default, Serialize)]
struct HashingReport {
    bytes: u64,
    files: u64,
    /// Files not hashed: over budget or on a hung file system.
    over_budget: u64,
    /// Hashing threads abandoned to a call that did not return, and of
    /// those, the ones still blocked.
    workers_abandoned: u64,
    workers_stuck: u64,
    hung_skipped: u64,
}

#[derive(Debug, Default, Serialize)]
struct PolicyReport {
    in_force: String,
    generation: u64,
    errors: u64,
}

#[derive(Debug, Default, Serialize)]
struct ProbesReport {
    adopted: bool,
    pinned: bool,
    pin_error: Option<String>,
}

fn nonzero<S: serde::Serializer>(m: &BTreeMap<&'static str, u64>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().filter(|(_, v)| **v > 0))
}

impl State {
    /// Gathers every counter. `pod_events`: the watch's channel depth.
    pub(super) fn report(&self, pod_events: usize) -> Report {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rt = &self.counters.record_threads;
        let dstats = &self.delivery.stats;
        let spool = self.spool.lock();
        let engine = &self.engine.stats;
        let kernel = self.probes.stats.read();
        Report {
            time: Clock::new().wall(Clock::now_boot_ns()),
            events: engine.ring_buffer_records,
            events_by_kind: EventKind::ALL
                .iter()
                .map(|k| (k.name(), engine.by_kind[*k as usize]))
                .collect(),
            lost_by_cause: self.lost_by_cause(&kernel),
            attribution: self.attribution_report(),
            tasks: TasksReport {
                active: self.engine.len(),
                resolved: self.counters.tasks_started,
                discarded: self.counters.tasks_discarded,
                records_written: load(&rt.written),
                records_pending: load(&rt.pending),
                record_errors: load(&rt.errors),
            },
            spool: SpoolReport {
                undelivered: spool.undelivered_count(),
                open_tasks: spool.open_tasks().count(),
                bytes: spool.bytes(),
                errors: self.counters.spool_errors,
                damaged_entries_at_start: self.counters.spool_damaged,
                torn_bytes_at_start: self.counters.spool_torn_bytes,
                undelivered_bytes: spool.undelivered_bytes(),
                oldest_waiting_seconds: spool.oldest_waiting().map(|d| d.as_secs_f64()),
            },
            sink: SinkReport {
                to: self.delivery.describe(),
                problem: self.delivery.problem(),
                retry_in_seconds: self.delivery.backoff_wait().as_secs_f64(),
                delivered: load(&dstats.delivered),
                redelivered: load(&dstats.redelivered),
                failures: load(&dstats.errors),
                unsent: load(&dstats.unsent),
                over_spool_budget: load(&dstats.over_spool_budget),
                local_bytes: self.counters.local_bytes,
            },
            queues: self.queues(pod_events),
            hashing: HashingReport {
                bytes: load(&self.ctx.pool.stats.bytes),
                files: load(&self.ctx.pool.stats.files),
                over_budget: load(&self.ctx.pool.stats.over_budget),
                workers_abandoned: load(&self.ctx.pool.stats.workers_abandoned),
                workers_stuck: load(&self.ctx.pool.stats.workers_stuck),
                hung_skipped: load(&self.ctx.pool.stats.hung_skipped),
            },
            files_held: self.engine.files_held(),
            pods_known: self.attr.pods.len(),
            policy_warnings: self.counters.warnings,
            policy: PolicyReport {
                in_force: self.attr.policy().describe(),
                generation: self.counters.policy_generation,
                errors: self.counters.policy_errors,
            },
            probes: ProbesReport {
                adopted: self.probes.adopted,
                pinned: self.probes.options.pin_dir.is_some() && self.probes.pin_error.is_none(),
                pin_error: self.probes.pin_error.clone(),
            },
            api_reachable: self.api.reachable,
            watch_healthy: self.api.watch_healthy,
            watch_errors: self.api.watch_errors,
            watch_held: self.api.held.load(Ordering::Relaxed),
            pending_grace_secs: self.ctx.pending_grace.as_secs(),
            kernel_counters: kernel.named().into_iter().collect(),
        }
    }
}

impl State {
    /// Events lost before reaching their task, over all tasks, by cause.
    fn lost_by_cause(&self, kernel: &crate::probes::KernelStats) -> BTreeMap<&'static str, u64> {
        let mut by: BTreeMap<&'static str, u64> = kernel
            .lost_by_cause()
            .into_iter()
            .map(|(c, n)| (c.name(), n))
            .collect();
        by.insert(
            LossCause::Undecodable.name(),
            self.engine.stats.undecodable_total(),
        );
        by
    }

    fn attribution_report(&self) -> AttributionReport {
        let attr = &self.attr.stats;
        let never_resolved = self
            .counters
            .record_threads
            .unattributed
            .load(Ordering::Relaxed);
        let after_task_ended = self.engine.stats.unattributed;
        AttributionReport {
            before_resolution: attr.before_resolution,
            ignored: attr.ignored,
            unattributed: attr.unattributed + never_resolved + after_task_ended,
            unknown_cgroup: attr.unattributed,
            never_resolved,
            after_task_ended,
            waiting: attr.waiting,
            recovered: self.recovery.recovered,
            rescans: self.recovery.rescans,
            trace_set_released: self.recovery.released,
            pending: self.attr.pending(),
        }
    }

    /// Every queue's depth; the ring buffer's only when it is known.
    fn queues(&self, pod_events: usize) -> BTreeMap<&'static str, u64> {
        let mut queues = BTreeMap::from([
            (queue::POD_EVENTS, pod_events as u64),
            (queue::HASH_JOBS, self.ctx.pool.depth()),
            (queue::PENDING_EVENTS, self.attr.stats.waiting),
        ]);
        if let Some(fill) = &self.probes.ring_fill {
            queues.insert(queue::RING_BUFFER_UNREAD_BYTES, fill.unread_bytes());
        }
        queues
    }
}

impl Report {
    /// Mirrors the report into /metrics.
    pub(super) fn publish(&self, m: &Metrics) {
        for (kind, n) in &self.events_by_kind {
            m.observe_events(*kind, *n);
        }
        for (cause, n) in &self.lost_by_cause {
            m.observe_lost(*cause, *n);
        }
        for (name, n) in &self.kernel_counters {
            m.observe_kernel_counter(name, *n);
        }
        observe_total(&m.unattributed_events, self.attribution.unattributed);
        observe_total(&m.ignored_events, self.attribution.ignored);
        observe_total(&m.cgroups_recovered, self.attribution.recovered);
        observe_total(&m.trace_set_released, self.attribution.trace_set_released);
        for (q, depth) in &self.queues {
            m.set_queue_depth(*q, *depth);
        }
        if !self.queues.contains_key(queue::RING_BUFFER_UNREAD_BYTES) {
            m.forget_queue(queue::RING_BUFFER_UNREAD_BYTES);
        }
        let t = &self.tasks;
        observe_total(&m.records_emitted, t.records_written);
        m.records_pending.set(gauge_value(t.records_pending));
        // A damaged spool entry may have been a record: counted as one
        // that could not be delivered.
        observe_total(
            &m.record_errors,
            t.record_errors + self.spool.damaged_entries_at_start,
        );
        m.records_spooled
            .set(gauge_value(self.spool.undelivered as u64));
        m.spool_bytes.set(gauge_value(self.spool.bytes));
        m.spool_oldest_record_age_seconds.set(gauge_value(
            self.spool.oldest_waiting_seconds.unwrap_or(0.0) as u64,
        ));
        let sink = &self.sink;
        observe_total(&m.records_redelivered, sink.redelivered);
        observe_total(&m.delivery_failures, sink.failures);
        observe_total(&m.records_unsent, sink.unsent);
        m.sink_up.set(i64::from(sink.problem.is_none()));
        m.local_records_bytes.set(gauge_value(sink.local_bytes));
        observe_total(&m.hash_bytes, self.hashing.bytes);
        observe_total(&m.hash_files, self.hashing.files);
        observe_total(&m.hash_over_budget, self.hashing.over_budget);
        observe_total(&m.hash_workers_abandoned, self.hashing.workers_abandoned);
        m.hash_workers_stuck
            .set(gauge_value(self.hashing.workers_stuck));
        m.active_tasks.set(gauge_value(t.active as u64));
        observe_total(&m.tasks_started, t.resolved);
        observe_total(&m.tasks_discarded, t.discarded);
        observe_total(&m.policy_reload_errors, self.policy.errors);
        m.policy_generation.set(gauge_value(self.policy.generation));
        observe_total(&m.pod_watch_errors, self.watch_errors);
        m.api_server_reachable
            .set(i64::from(self.api_reachable && self.watch_healthy));
    }
}

/// Writes the report as JSON, atomically (a reader never sees half).
pub(super) fn write_stats(path: &Path, report: &Report) {
    let tmp = path.with_extension("tmp");
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let bytes = serde_json::to_vec_pretty(report).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::debug!(path = %path.display(), error = %e, "cannot write the stats file");
    }
}

#[cfg(test)]
mod tests {
    use roar_node_common::loss;

    use super::*;

    fn series(text: &str, prefix: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' ')?.parse().ok())
    }

    /// Every loss cause and every kernel counter of a report reaches
    /// /metrics under the name records use, with its value; so does every
    /// way an event can end up unattributed; an unknown ring-buffer fill
    /// is no series rather than a 0.
    #[test]
    fn every_counter_of_a_report_reaches_metrics() {
        let mut kernel = vec![0u64; loss::STATS_LEN as usize];
        for (i, v) in kernel.iter_mut().enumerate() {
            *v = 100 + i as u64;
        }
        let stats = crate::probes::KernelStats { counters: kernel };
        let mut lost: BTreeMap<&'static str, u64> = stats
            .lost_by_cause()
            .into_iter()
            .map(|(c, n)| (c.name(), n))
            .collect();
        lost.insert(LossCause::Undecodable.name(), 7);
        let report = Report {
            lost_by_cause: lost.clone(),
            kernel_counters: stats.named().into_iter().collect(),
            attribution: AttributionReport {
                unattributed: 3 + 4 + 5,
                unknown_cgroup: 3,
                never_resolved: 4,
                after_task_ended: 5,
                recovered: 6,
                trace_set_released: 8,
                ..Default::default()
            },
            queues: BTreeMap::from([(queue::RING_BUFFER_UNREAD_BYTES, 4096)]),
            ..Default::default()
        };
        let m = Metrics::new("0");
        report.publish(&m);
        let text = m.encode();
        for c in LossCause::ALL {
            let want = lost[c.name()];
            assert!(want > 0);
            let got = series(
                &text,
                &format!("roar_node_events_lost_total{{cause=\"{}\"}}", c.name()),
            );
            assert_eq!(got, Some(want), "{}", c.name());
        }
        for (name, v) in stats.named() {
            let got = series(
                &text,
                &format!("roar_node_kernel_counters_total{{counter=\"{name}\"}}"),
            );
            assert_eq!(got, Some(v), "{name}");
        }
        assert_eq!(
            series(&text, "roar_node_unattributed_events_total"),
            Some(12)
        );
        assert_eq!(series(&text, "roar_node_cgroups_recovered_total"), Some(6));
        assert_eq!(series(&text, "roar_node_trace_set_released_total"), Some(8));
        assert_eq!(
            series(
                &text,
                "roar_node_queue_depth{queue=\"ring_buffer_unread_bytes\"}"
            ),
            Some(4096)
        );
        let unknown = Report::default();
        unknown.publish(&m);
        assert!(
            !m.encode().contains("queue=\"ring_buffer_unread_bytes\""),
            "an unknown fill must not read as 0"
        );
    }
}
