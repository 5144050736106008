//! The daemon's Prometheus metrics, in one registry.
//!
//! Two ways to feed a counter, never both on the same one:
//! - **counted**: `inc()` / `inc_by()` where the thing happens (records
//!   written, tasks started), when it happens rarely enough;
//! - **mirrored**: [`observe_total`] / [`observe_family_total`] with a total
//!   someone else keeps (the kernel's per-CPU counters, the engine's event
//!   counts). The event path stays as it is (plain integers, no atomics,
//!   no label lookups per event) and the loop copies its totals once a tick.

use std::{borrow::Cow, hash::Hash, sync::atomic::Ordering};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use roar_node_common::{event::EventKind, loss};

use crate::probes::LossCause;

/// Every family is exported under this prefix (`roar_node_events_total`).
pub(crate) const PREFIX: &str = "roar_node";

/// Content type of [`Metrics::encode`]'s output, for the HTTP response.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `kind` label of `events_total`. `Cow` so the usual `&'static str` names
/// cost no allocation when the loop mirrors its totals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: Cow<'static, str>,
}

/// `cause` label of `events_lost_total`: a [`LossCause`] name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CauseLabel {
    pub(crate) cause: Cow<'static, str>,
}

/// `counter` label of `kernel_counters_total`: the kernel counter's name,
/// as records' `kernel_counters` spell it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CounterLabel {
    pub(crate) counter: Cow<'static, str>,
}

/// `queue` label of `queue_depth`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabel {
    pub(crate) queue: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: Cow<'static, str>,
}

impl KindLabel {
    pub(crate) fn new(kind: impl Into<Cow<'static, str>>) -> Self {
        Self { kind: kind.into() }
    }
}

impl CauseLabel {
    pub(crate) fn new(cause: impl Into<Cow<'static, str>>) -> Self {
        Self {
            cause: cause.into(),
        }
    }
}

impl QueueLabel {
    pub(crate) fn new(queue: impl Into<Cow<'static, str>>) -> Self {
        Self {
            queue: queue.into(),
        }
    }
}

/// Queue names the daemon reports under `queue_depth{queue=...}`; shared
/// here so the dashboards and the daemon agree on the spelling.
pub(crate) mod queue {
    /// Bytes written by the kernel into the ring buffer and not yet read.
    pub(crate) const RING_BUFFER_UNREAD_BYTES: &str = "ring_buffer_unread_bytes";
    /// Pod watch events waiting for the loop.
    pub(crate) const POD_EVENTS: &str = "pod_events";
    /// Files waiting for a hashing thread.
    pub(crate) const HASH_JOBS: &str = "hash_jobs";
    /// Events held until their cgroup is attributed to a task.
    pub(crate) const PENDING_EVENTS: &str = "pending_events";

    pub(crate) const ALL: [&str; 4] = [
        RING_BUFFER_UNREAD_BYTES,
        POD_EVENTS,
        HASH_JOBS,
        PENDING_EVENTS,
    ];
    // Records pending have their own gauge, `records_pending`: not repeated
    // here, so a dashboard cannot pick the wrong one of two equal series.
}

/// Every metric the daemon exports. Fields are handles (`Arc` inside):
/// clone one into a thread or task and update it there; [`Metrics::encode`]
/// sees the change.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,

    /// `events_total{kind}`: events decoded from the ring buffer (mirrored
    /// from the engine's per-kind counts). Every kind exists from the start
    /// at 0, so `rate()` works before the first event.
    pub(crate) events: Family<KindLabel, Counter>,
    /// `events_lost_total{cause}`: events the kernel could not deliver or
    /// the decoder rejected (mirrored from the kernel's per-CPU counters),
    /// by [`LossCause`], the names records use in `lost_by_cause`. Every
    /// cause exists from the start at 0, so an alert on `increase()` sees
    /// the first loss.
    pub(crate) events_lost: Family<CauseLabel, Counter>,
    /// `kernel_counters_total{counter}`: every counter the eBPF programs
    /// keep (losses by kind, suppressed repeats, forced wakeups, ...), by
    /// the names records use in `kernel_counters`.
    pub(crate) kernel_counters: Family<CounterLabel, Counter>,
    /// Events of traced cgroups that never resolved to a task: nonzero means
    /// some task's record is missing things.
    pub(crate) unattributed_events: Counter,
    /// Events of cgroups that resolved to a container not opted in.
    pub(crate) ignored_events: Counter,
    /// Cgroups found again after the kernel lost their creation or removal
    /// event, or traced with no task owning them.
    pub(crate) cgroups_recovered: Counter,
    /// Trace-set entries no task owned, released.
    pub(crate) trace_set_released: Counter,
    /// `queue_depth{queue}`: see [`queue`] for the names (all present from
    /// the start).
    pub(crate) queue_depth: Family<QueueLabel, Gauge>,

    pub(crate) records_emitted: Counter,
    /// Records being built (hashing) or waiting for the task's identity or
    /// exit code.
    pub(crate) records_pending: Gauge,
    /// Records that could not be written where they should go (kept in the
    /// fallback directory instead, or lost if that failed too).
    pub(crate) record_errors: Counter,
    /// Records in the durable spool (fallback directory) not yet delivered.
    pub(crate) records_spooled: Gauge,
    pub(crate) spool_bytes: Gauge,
    /// How long the oldest record in the spool has waited for the sink.
    pub(crate) spool_oldest_record_age_seconds: Gauge,
    /// Records put into the sink from the spool, after a refusal or a
    /// restart.
    pub(crate) records_redelivered: Counter,
    /// Attempts to put a record that the sink refused.
    pub(crate) delivery_failures: Counter,
    /// Records kept in the fallback directory (the spool over its budget
    /// or failing, and the sink refusing): on the node, not in the sink.
    pub(crate) records_unsent: Counter,
    /// 1 while the sink takes records, 0 while it refuses them.
    pub(crate) sink_up: Gauge,
    /// Bytes of records on the node: the bundle directory, or the copies
    /// kept of records delivered to a store.
    pub(crate) local_records_bytes: Gauge,

    pub(crate) hash_bytes: Counter,
    pub(crate) hash_files: Counter,
    /// Files recorded unhashed: over their time or byte budget, or on a
    /// file system that stopped answering.
    pub(crate) hash_over_budget: Counter,
    /// Hashing threads abandoned to a read that did not return (each
    /// replaced), and those still blocked.
    pub(crate) hash_workers_abandoned: Counter,
    pub(crate) hash_workers_stuck: Gauge,

    /// Tasks (container runs) followed right now.
    pub(crate) active_tasks: Gauge,
    pub(crate) tasks_started: Counter,
    /// Tasks dropped without a record (never resolved, or not opted in).
    pub(crate) tasks_discarded: Counter,

    pub(crate) policy_reload_errors: Counter,
    /// Which policy version is in force: bumps on every successful reload,
    /// so a reload that did not take shows as a generation that did not move.
    pub(crate) policy_generation: Gauge,
    pub(crate) pod_watch_errors: Counter,
    /// 1 while the last API server call (list/watch) succeeded, else 0.
    pub(crate) api_server_reachable: Gauge,
    /// 1 once the programs are attached; 0 when this node cannot be
    /// traced (no cgroup v2, no BTF, programs refused: /readyz says why).
    pub(crate) node_supported: Gauge,
}

impl Metrics {
    /// All families registered; `version` goes into `build_info`.
    pub(crate) fn new(version: &'static str) -> Self {
        let mut m = Self {
            registry: Registry::with_prefix(PREFIX),
            events: Family::default(),
            events_lost: Family::default(),
            kernel_counters: Family::default(),
            unattributed_events: Counter::default(),
            ignored_events: Counter::default(),
            cgroups_recovered: Counter::default(),
            trace_set_released: Counter::default(),
            queue_depth: Family::default(),
            records_emitted: Counter::default(),
            records_pending: Gauge::default(),
            record_errors: Counter::default(),
            records_spooled: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_oldest_record_age_seconds: Gauge::default(),
            records_redelivered: Counter::default(),
            delivery_failures: Counter::default(),
            records_unsent: Counter::default(),
            sink_up: Gauge::default(),
            local_records_bytes: Gauge::default(),
            hash_bytes: Counter::default(),
            hash_files: Counter::default(),
            hash_over_budget: Counter::default(),
            hash_workers_abandoned: Counter::default(),
            hash_workers_stuck: Gauge::default(),
            active_tasks: Gauge::default(),
            tasks_started: Counter::default(),
            tasks_discarded: Counter::default(),
            policy_reload_errors: Counter::default(),
            policy_generation: Gauge::default(),
            pod_watch_errors: Counter::default(),
            api_server_reachable: Gauge::default(),
            node_supported: Gauge::default(),
        };
        // Series that exist from the start (an empty family is not
        // exported at all, and a series born at its first increment hides
        // that increment from `rate()`).
        for kind in EventKind::ALL {
            let _ = m.events.get_or_create(&KindLabel::new(kind.name()));
        }
        for c in LossCause::ALL {
            let _ = m.events_lost.get_or_create(&CauseLabel::new(c.name()));
        }
        for name in (0..loss::STATS_LEN).filter_map(loss::stat_name) {
            let _ = m.kernel_counters.get_or_create(&CounterLabel {
                counter: Cow::Borrowed(name),
            });
        }
        // Not the ring buffer's fill: it exists once it is known (a 0
        // would say "empty").
        for q in queue::ALL
            .into_iter()
            .filter(|q| *q != queue::RING_BUFFER_UNREAD_BYTES)
        {
            let _ = m.queue_depth.get_or_create(&QueueLabel::new(q));
        }
        m.register_event_families();
        m.register_record_families();
        m.register_daemon_families();
        let r = &mut m.registry;
        // The usual `*_build_info` gauge: constant 1, the facts in labels,
        // so it joins onto any other series by instance.
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: Cow::Borrowed(version),
            })
            .set(1);
        r.register("build_info", "roar-node build; the value is 1", build);
        m
    }

    /// Counter names carry no `_total`: the encoder appends it.
    fn register_event_families(&mut self) {
        self.registry.register(
            "events",
            "Events read from the kernel ring buffer, by kind",
            self.events.clone(),
        );
        self.registry.register(
            "events_lost",
            "Events lost before reaching a task (kernel ring buffer full, undecodable, ...), by cause",
            self.events_lost.clone(),
        );
        self.registry.register(
            "kernel_counters",
            "Counters of the eBPF programs (losses by event kind, suppressed repeat opens, ...), by name",
            self.kernel_counters.clone(),
        );
        self.registry.register(
            "unattributed_events",
            "Events of traced cgroups that never resolved to a task",
            self.unattributed_events.clone(),
        );
        self.registry.register(
            "ignored_events",
            "Events of cgroups that resolved to containers not opted in",
            self.ignored_events.clone(),
        );
        self.registry.register(
            "cgroups_recovered",
            "Cgroups found again after the kernel lost their creation or removal event",
            self.cgroups_recovered.clone(),
        );
        self.registry.register(
            "trace_set_released",
            "Kernel trace-set entries no task owned, released",
            self.trace_set_released.clone(),
        );
        self.registry.register(
            "queue_depth",
            "Items waiting in each internal queue (bytes for ring_buffer_unread_bytes)",
            self.queue_depth.clone(),
        );
    }

    fn register_record_families(&mut self) {
        self.registry.register(
            "records_emitted",
            "Records (roar fragment bundles) written",
            self.records_emitted.clone(),
        );
        self.registry.register(
            "records_pending",
            "Records being built or waiting for their task's identity or exit code",
            self.records_pending.clone(),
        );
        self.registry.register(
            "record_errors",
            "Records that could not be delivered nor kept in the spool (kept in the fallback directory, or lost if that failed too)",
            self.record_errors.clone(),
        );
        self.registry.register(
            "records_spooled",
            "Records in the durable spool not yet delivered",
            self.records_spooled.clone(),
        );
        self.registry.register_with_unit(
            "spool",
            "Size of the durable spool",
            Unit::Bytes,
            self.spool_bytes.clone(),
        );
        self.registry.register(
            "spool_oldest_record_age_seconds",
            "Seconds the oldest record in the spool has waited for the sink",
            self.spool_oldest_record_age_seconds.clone(),
        );
        self.registry.register(
            "records_redelivered",
            "Records put into the sink from the spool (after a refusal or a restart)",
            self.records_redelivered.clone(),
        );
        self.registry.register(
            "delivery_failures",
            "Attempts to put a record that the sink refused (the record stays in the spool)",
            self.delivery_failures.clone(),
        );
        self.registry.register(
            "records_unsent",
            "Records kept in the node's fallback directory instead of the sink (spool over budget or failing)",
            self.records_unsent.clone(),
        );
        self.registry.register(
            "sink_up",
            "1 while the sink takes records, 0 while it refuses them (/readyz says why)",
            self.sink_up.clone(),
        );
        self.registry.register_with_unit(
            "local_records",
            "Records kept on the node: the bundle directory, or copies of records delivered to a store",
            Unit::Bytes,
            self.local_records_bytes.clone(),
        );
        self.registry.register_with_unit(
            "hash",
            "File content hashed",
            Unit::Bytes,
            self.hash_bytes.clone(),
        );
        self.registry
            .register("hash_files", "Files hashed", self.hash_files.clone());
        self.registry.register(
            "hash_over_budget",
            "Files recorded unhashed: over their time or byte budget, or on a file system that stopped answering",
            self.hash_over_budget.clone(),
        );
        self.registry.register(
            "hash_workers_abandoned",
            "Hashing threads abandoned to a read that did not return (each replaced)",
            self.hash_workers_abandoned.clone(),
        );
        self.registry.register(
            "hash_workers_stuck",
            "Abandoned hashing threads still blocked in the kernel",
            self.hash_workers_stuck.clone(),
        );
    }

    fn register_daemon_families(&mut self) {
        self.registry.register(
            "active_tasks",
            "Tasks (container runs) being followed",
            self.active_tasks.clone(),
        );
        self.registry.register(
            "tasks_started",
            "Tasks resolved to an opted-in container",
            self.tasks_started.clone(),
        );
        self.registry.register(
            "tasks_discarded",
            "Tasks dropped without a record",
            self.tasks_discarded.clone(),
        );
        self.registry.register(
            "policy_reload_errors",
            "Policy reloads that failed (the previous policy stays in force)",
            self.policy_reload_errors.clone(),
        );
        self.registry.register(
            "policy_generation",
            "Generation of the policy in force",
            self.policy_generation.clone(),
        );
        self.registry.register(
            "pod_watch_errors",
            "Errors of the pod list/watch (each is retried)",
            self.pod_watch_errors.clone(),
        );
        self.registry.register(
            "api_server_reachable",
            "1 if the last call to the Kubernetes API server succeeded, else 0",
            self.api_server_reachable.clone(),
        );
        self.registry.register(
            "node_supported",
            "1 once the programs are attached; 0 if this node cannot be traced (/readyz says why)",
            self.node_supported.clone(),
        );
    }

    /// The OpenMetrics text exposition of every family, `# EOF` included.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail; the encoder's only error is
        // the writer's.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }

    /// Mirrors the engine's per-kind event count (see [`observe_total`]).
    pub(crate) fn observe_events(&self, kind: impl Into<Cow<'static, str>>, total: u64) {
        observe_family_total(&self.events, &KindLabel::new(kind), total);
    }

    /// Mirrors a loss counter (see [`observe_total`]).
    pub(crate) fn observe_lost(&self, cause: impl Into<Cow<'static, str>>, total: u64) {
        observe_family_total(&self.events_lost, &CauseLabel::new(cause), total);
    }

    /// Mirrors a kernel counter (see [`observe_total`]).
    pub(crate) fn observe_kernel_counter(&self, name: &'static str, total: u64) {
        let label = CounterLabel {
            counter: Cow::Borrowed(name),
        };
        observe_family_total(&self.kernel_counters, &label, total);
    }

    /// Drops a queue's series: its depth cannot be known (a gauge stuck at
    /// 0 would say "empty").
    pub(crate) fn forget_queue(&self, queue: &'static str) {
        self.queue_depth.remove(&QueueLabel::new(queue));
    }

    pub(crate) fn set_queue_depth(&self, queue: impl Into<Cow<'static, str>>, depth: u64) {
        self.queue_depth
            .get_or_create(&QueueLabel::new(queue))
            .set(gauge_value(depth));
    }
}

/// Brings a mirrored counter up to `total`, a running total kept elsewhere
/// (a kernel map, an engine field): it rises by what `total` gained since
/// the last observation and never falls. A `total` below the counter's
/// value (its source restarted) is ignored until the source catches up;
/// the daemon's sources live exactly as long as the process, so that does
/// not happen there. Atomic (`fetch_max`), so concurrent observers cannot
/// count a delta twice.
pub(crate) fn observe_total(counter: &Counter, total: u64) {
    counter.inner().fetch_max(total, Ordering::Relaxed);
}

/// [`observe_total`] for one series of a family (created on first use).
pub(crate) fn observe_family_total<L>(family: &Family<L, Counter>, label: &L, total: u64)
where
    L: EncodeLabelSet + Clone + Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    // Existing series (every tick after the first) take the read lock only.
    if let Some(c) = family.get(label) {
        observe_total(&c, total);
        return;
    }
    observe_total(&family.get_or_create(label), total);
}

/// Converts a count to a gauge value, saturating (gauges are `i64`).
pub(crate) fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
