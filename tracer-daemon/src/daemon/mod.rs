//! `roar-node daemon`: trace the opted-in pods of this node, one roar
//! record per container run.
//!
//! One loop owns everything that changes. Like Tetragon's observer it knows
//! little of what events mean: it waits for the ring buffer, the pod
//! watch, two timers and signals, and hands each to the module that knows:
//! `route` (ring-buffer records to tasks), `watch` (pods, policy),
//! `lifecycle` (tasks from start to record), `reporting` (metrics and
//! stats). `startup` builds the state; records are built (hashes awaited)
//! and delivered on blocking threads, off the loop.

mod checkpoints;
mod closing;
mod lifecycle;
mod recovery;
mod reporting;
mod route;
mod startup;
mod watch;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use tokio::sync::mpsc;

use self::{
    lifecycle::Lifecycle,
    reporting::Counters,
    watch::{ApiState, PodEvent},
};
use crate::{
    attribution::{Attributor, policy::PolicyDir},
    engine::Engine,
    events::reader::EventReader,
    observability::{self, Health, Metrics},
    probes::Probes,
    records::{hashing::HashPool, path_filters::PathFilterConfig},
    sinks::{Delivery, spool::SharedSpool},
    tasks::TaskLimits,
};

/// Where the opt-in policy comes from.
#[derive(Clone, Debug)]
pub(crate) enum PolicySource {
    /// A mounted ConfigMap, re-read when it changes.
    Dir(PathBuf),
    /// Fixed settings (command line or environment).
    Settings {
        namespaces: Vec<String>,
        selectors: Vec<String>,
        presets: Vec<String>,
    },
}

/// Everything the daemon is told at start-up.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) node_name: String,
    pub(crate) kubeconfig: Option<PathBuf>,
    pub(crate) bundle_dir: PathBuf,
    pub(crate) fallback_dir: PathBuf,
    pub(crate) sinks: SinkConfig,
    pub(crate) spool_dir: PathBuf,
    pub(crate) policy: PolicySource,
    pub(crate) metrics_addr: SocketAddr,
    pub(crate) stats_file: Option<PathBuf>,
    pub(crate) host_cgroup: PathBuf,
    pub(crate) host_proc: PathBuf,
    /// How long a task stays open after its cgroup was removed.
    pub(crate) grace: Duration,
    /// How long to wait for the API server to report a container's exit.
    pub(crate) status_wait: Duration,
    /// How long a removed container cgroup waits for its pod (while the
    /// watch delivers).
    pub(crate) pending_grace: Duration,
    /// Tests only: hold the pod watch while this file exists.
    pub(crate) test_hold_pod_watch: Option<PathBuf>,
    pub(crate) pin_dir: Option<PathBuf>,
    pub(crate) limits: TaskLimits,
    pub(crate) ring_buffer_bytes: u32,
    /// Report every open (debugging, benchmarks).
    pub(crate) no_suppress: bool,
    pub(crate) hash_workers: usize,
    pub(crate) hash_budget: crate::records::hashing::HashBudget,
}

/// Where records go and what the node keeps.
#[derive(Clone, Debug, Default)]
pub(crate) struct SinkConfig {
    /// An object store URL (`s3://`, `gs://`, `az://`, `file://`); `None`:
    /// the bundle directory.
    pub(crate) url: Option<String>,
    /// Without a store: bytes the bundle directory may hold.
    pub(crate) bundle_dir_max_bytes: Option<u64>,
    /// With a store: copies of delivered records kept in the bundle
    /// directory, up to this many bytes and this age (0: none).
    pub(crate) keep_local_bytes: u64,
    pub(crate) keep_local_age: Option<Duration>,
    pub(crate) budgets: crate::sinks::Budgets,
}

/// What does not change while the daemon runs.
struct Ctx {
    cgroot: PathBuf,
    host_proc: PathBuf,
    node: String,
    grace: Duration,
    status_wait: Duration,
    pending_grace: Duration,
    /// `TRACE_*` flags every task gets.
    trace_flags: u32,
    pool: Arc<HashPool>,
    filters: Arc<PathFilterConfig>,
    stats_file: Option<PathBuf>,
}

/// Everything the loop changes.
struct State {
    ctx: Ctx,
    probes: Probes,
    engine: Engine<Lifecycle>,
    attr: Attributor,
    delivery: Arc<Delivery>,
    spool: SharedSpool,
    orphans: lifecycle::Orphans,
    policy_dir: Option<PolicyDir>,
    api: ApiState,
    recovery: recovery::Recovery,
    counters: Counters,
    started: Instant,
    /// Seconds ticked (paces the once-every-few-seconds work).
    seconds: u64,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub(crate) async fn run(config: Config) -> anyhow::Result<i32> {
    // First, so that the kubelet's probes get answers during start-up.
    let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
    let health = Arc::new(Health::new(observability::DEFAULT_STALENESS));
    let (addr, _server) =
        observability::serve(config.metrics_addr, metrics.clone(), health.clone()).await?;
    tracing::info!(addr = %addr, "serving /metrics, /healthz, /readyz");
    let Some(started) = startup::start(&config, &health, &metrics).await? else {
        // This node cannot be served: stay up, not ready, saying why,
        // instead of restarting hot.
        startup::idle_until_stopped(&health).await?;
        return Ok(0);
    };
    let startup::Started {
        mut state,
        mut reader,
        mut pod_rx,
    } = started;
    state
        .run_loop(&mut reader, &mut pod_rx, &metrics, &health)
        .await?;
    state.shut_down(&mut reader).await;
    Ok(0)
}

impl State {
    async fn run_loop(
        &mut self,
        reader: &mut EventReader,
        pod_rx: &mut mpsc::Receiver<PodEvent>,
        metrics: &Metrics,
        health: &Health,
    ) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut second = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = reader.wait() => {}
                msg = pod_rx.recv() => {
                    let Some(msg) = msg else { bail!("the pod watch ended") };
                    self.on_pod_event(msg, health);
                }
                _ = tick.tick() => {
                    health.beat();
                    self.on_tick(reader);
                }
                _ = second.tick() => self.on_second(metrics, health, pod_rx.len()),
                _ = sigint.recv() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
            self.drain(reader);
        }
    }

    /// Every 200 ms: tasks that ended, cgroups and pods to forget.
    fn on_tick(&mut self, reader: &mut EventReader) {
        // Drain first: a task ends only after its events are in.
        self.drain(reader);
        self.rescan_if_cgroup_events_lost();
        self.end_tasks(true);
        let now = Instant::now();
        self.attr.set_watch_delivers(self.api.delivers(), now);
        let acts = self.attr.sweep(now, self.ctx.pending_grace);
        self.execute(acts);
        let engine = &self.engine;
        self.attr.pods.expire(now, Duration::from_secs(120), |uid| {
            engine
                .iter()
                .any(|(_, e)| e.lifecycle.pod_uid() == Some(uid))
        });
    }

    /// Every second: the spool's heartbeat, the policy, retries,
    /// checkpoints, and reporting.
    fn on_second(&mut self, metrics: &Metrics, health: &Health, pod_events: usize) {
        self.spool_op("heartbeat", |s| s.heartbeat());
        self.reload_policy();
        // Records the sink refused: tried again when its back-off allows.
        self.delivery.retry();
        health.set_sink_problem(self.delivery.problem());
        if self.seconds.is_multiple_of(5) {
            self.counters.local_bytes = self.delivery.local_bytes();
        }
        if self.seconds % 5 == 2 {
            self.checkpoint_tasks();
        }
        if self.seconds % 10 == 7 {
            self.release_unowned_trace_entries();
        }
        self.seconds += 1;
        // Pods never listed (API server down since start): the tasks that
        // ended while no roar-node ran get their record without pod
        // details rather than never.
        if !self.api.listed_once && self.started.elapsed() > self.ctx.status_wait * 4 {
            self.write_orphans();
        }
        let report = self.report(pod_events);
        report.publish(metrics);
        if let Some(path) = &self.ctx.stats_file {
            reporting::write_stats(path, &report);
        }
    }

    /// A spool write the daemon can live without for a moment (heartbeat,
    /// task opened, checkpoint): counted and logged, never fatal.
    fn spool_op(
        &mut self,
        what: &str,
        op: impl FnOnce(&mut crate::sinks::spool::Spool) -> Result<(), crate::sinks::spool::SpoolError>,
    ) {
        if let Err(e) = op(&mut self.spool.lock()) {
            self.counters.spool_errors += 1;
            tracing::error!(error = %e, "spool: {what} failed");
        }
    }
}
