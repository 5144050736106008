//! `roar-node daemon`: trace the opted-in pods of this node, one roar
//! record per container run.
//!
//! One loop owns everything that changes: it drains the ring buffer,
//! routes events (to their task, to a pending queue, or counted away),
//! applies pod watch events, executes what attribution decides (kernel
//! filter, task start) and ends tasks. Records are built (hashes awaited)
//! and written on blocking threads, off the loop.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use roar_node_common::filter::{FILTER_CHILDREN_ARE_ROOTS, FILTER_NO_SUPPRESS};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use roar_node_common::{event::EventKind, loss};

use super::capture::{Capture, kernel_counters};
use crate::{
    attribution::{
        Action, Attributor, Route, TaskMeta, cgroup_path,
        pods::{PodInfo, RunState},
        policy::{Policy, PolicyDir, is_osmo},
    },
    engine::Engine,
    events::{Body, CgroupChange, reader::EventReader},
    observability::{
        self,
        health::Health,
        metrics::{Metrics, gauge_value, observe_total},
    },
    probes::{ProbeOptions, Probes},
    records::{
        BundleName, Clock, RecordBuilder, TaskIdentity, filters::FilterConfig, hashing::HashPool,
        job_uid, mountns::MountNs,
    },
    sinks::{
        bundle::{BundleDir, bundle_bytes},
        spool::{Spool, pb},
    },
    tasks::{Task, TaskLimits},
};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// A kubeconfig file; without it, the in-cluster configuration.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Where bundles are written (a hostPath in a DaemonSet).
    #[arg(
        long,
        default_value = "/var/lib/roar-node/bundles",
        env = "ROAR_NODE_BUNDLE_DIR"
    )]
    pub bundle_dir: PathBuf,
    /// Where a record is kept if the bundle directory cannot take it (full,
    /// read-only): on the node's state volume, never lost.
    #[arg(
        long,
        default_value = "/var/lib/roar-node/unsent",
        env = "ROAR_NODE_FALLBACK_DIR"
    )]
    pub fallback_dir: PathBuf,
    /// The durable spool: tasks being traced and records not yet
    /// delivered survive a crash here (on the node's state volume).
    #[arg(
        long,
        default_value = "/var/lib/roar-node/spool",
        env = "ROAR_NODE_SPOOL_DIR"
    )]
    pub spool_dir: PathBuf,
    /// The policy as a mounted ConfigMap (files `namespaces`, `selectors`,
    /// `presets`), re-read when it changes; an invalid update is reported
    /// and the policy in force is kept. Replaces --namespace, --selector
    /// and --preset.
    #[arg(long, env = "ROAR_NODE_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = observability::DEFAULT_METRICS_ADDR, env = observability::METRICS_ADDR_ENV)]
    pub metrics_addr: std::net::SocketAddr,
    /// Counters (events, queues, unattributed), rewritten every second.
    #[arg(long, env = "ROAR_NODE_STATS_FILE")]
    pub stats_file: Option<PathBuf>,
    /// The host's cgroup tree (`/sys/fs/cgroup`, or its v2 mount; on a
    /// hybrid host its `unified/` is used).
    #[arg(long, default_value = "/sys/fs/cgroup", env = "ROAR_NODE_HOST_CGROUP")]
    pub host_cgroup: PathBuf,
    /// The host's /proc (mounted elsewhere in a pod: runc refuses /proc).
    #[arg(long, default_value = "/proc", env = "ROAR_NODE_HOST_PROC")]
    pub host_proc: PathBuf,
    /// Trace every pod of these namespaces (comma-separated).
    #[arg(long = "namespace", env = "ROAR_NODE_NAMESPACES")]
    pub namespaces: Vec<String>,
    /// Trace pods matching this label selector (`a=b,c!=d,e,!f`; several
    /// separated by `;`).
    #[arg(long = "selector", env = "ROAR_NODE_SELECTORS")]
    pub selectors: Vec<String>,
    /// Built-in selections: `osmo` (every pod with an osmo.task_uuid label).
    #[arg(long = "preset", env = "ROAR_NODE_PRESETS")]
    pub presets: Vec<String>,
    /// How long a task stays open after its cgroup was removed. Its
    /// processes are all gone then and their events already in the ring
    /// buffer, ahead of the removal: 0 closes it at once, which matters
    /// for outputs in emptyDir volumes (the kubelet deletes them soon
    /// after the pod ends).
    #[arg(long, default_value_t = 0, env = "ROAR_NODE_GRACE_MS")]
    pub grace_ms: u64,
    /// How long to wait for the API server to report a container's exit
    /// once its cgroup is gone, before taking the exit code from the
    /// kernel.
    #[arg(long, default_value_t = 15, env = "ROAR_NODE_STATUS_WAIT_SECS")]
    pub status_wait_secs: u64,
    /// Pin the programs and maps here (a directory on the host's bpffs):
    /// after a crash they stay attached, capture goes on, and the next
    /// daemon adopts them. Removed on a normal stop. Without it, capture
    /// stops while no daemon runs.
    #[arg(long, env = "ROAR_NODE_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Paths one task may hold; more are counted (`files_over_cap`) and
    /// the record is partial. With --max-files-total, what bounds the
    /// daemon's memory: about 1.5 KiB per path at the peak (a record being
    /// built), measured by `cargo xtask bench-flood`.
    #[arg(long, default_value_t = 400_000, env = "ROAR_NODE_MAX_FILES_PER_TASK")]
    pub max_files_per_task: usize,
    /// Paths all tasks together may hold.
    #[arg(long, default_value_t = 500_000, env = "ROAR_NODE_MAX_FILES_TOTAL")]
    pub max_files_total: usize,
    /// Ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = 16 << 20, env = "ROAR_NODE_RING_BUFFER_BYTES")]
    pub ring_buffer_bytes: u32,
    /// Report every open (debugging, benchmarks).
    #[arg(long)]
    pub no_suppress: bool,
    /// Hashing threads.
    #[arg(long, default_value_t = 2, env = "ROAR_NODE_HASH_WORKERS")]
    pub hash_workers: usize,
}

/// A pod watch event, reduced to what the loop needs.
enum PodEvent {
    Apply(PodInfo),
    Delete(String),
    /// A (re-)list finished: these UIDs exist.
    Listed(HashSet<String>),
    Error(String),
}

async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", p.display()))?
        }
        None => Config::incluster().context(
            "no in-cluster configuration (KUBERNETES_SERVICE_HOST and the service account token); pass --kubeconfig outside a pod",
        )?,
    };
    Client::try_from(config).context("Kubernetes client")
}

/// One list+watch of the pods on `node`, forwarded to the loop. Restarts
/// with backoff on errors (each restart re-lists).
fn spawn_pod_watch(client: Client, node: String, tx: mpsc::Sender<PodEvent>) {
    tokio::spawn(async move {
        let api: Api<Pod> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        let mut listing: HashSet<String> = HashSet::new();
        while let Some(ev) = stream.next().await {
            let msg = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                    match PodInfo::from_pod(&p) {
                        Some(info) => {
                            listing.insert(info.uid.clone());
                            PodEvent::Apply(info)
                        }
                        None => continue,
                    }
                }
                Ok(watcher::Event::Delete(p)) => match p.metadata.uid {
                    Some(uid) => PodEvent::Delete(uid),
                    None => continue,
                },
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    continue;
                }
                Ok(watcher::Event::InitDone) => PodEvent::Listed(std::mem::take(&mut listing)),
                Err(e) => PodEvent::Error(e.to_string()),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
}

/// A task the loop is following to its end. It exists from the moment
/// its cgroup is in the filter; `meta` arrives when the container is
/// known.
struct Active {
    path: String,
    meta: Option<TaskMeta>,
    /// When its cgroup was found empty or removed.
    gone_at: Option<Instant>,
    /// Drains of the ring buffer since then: the task closes after two,
    /// so the events its last processes sent are in.
    drains_since_gone: u32,
    /// Out of the engine, record being built: send the final facts here.
    closing: Option<tokio::sync::oneshot::Sender<Final>>,
    /// Events in the task at its last checkpoint.
    checkpointed_events: u64,
    /// When that was, and its size: a big task is checkpointed less often.
    checkpointed_at: Option<Instant>,
    checkpoint_bytes: u64,
}

#[derive(Default)]
struct Totals {
    tasks_started: u64,
    tasks_discarded: u64,
    records_written: Arc<AtomicU64>,
    /// Records being built or waiting for their identity and exit code.
    records_pending: Arc<AtomicU64>,
    record_errors: Arc<AtomicU64>,
    /// Events of tasks that were dropped because their container never
    /// resolved.
    unattributed_in_tasks: Arc<AtomicU64>,
    warnings: u64,
    watch_errors: u64,
    policy_errors: u64,
    policy_generation: u64,
    spool_errors: u64,
    /// Spool entries found damaged at start-up (checksum or decoding
    /// failed): each may have been a record or a task's state.
    spool_damaged: u64,
    spool_torn_bytes: u64,
}

/// What does not change while the daemon runs.
struct Ctx {
    cgroot: PathBuf,
    host_proc: PathBuf,
    node: String,
    grace: Duration,
    status_wait: Duration,
    flags: u32,
    pool: Arc<HashPool>,
    fallback_dir: Arc<PathBuf>,
    filters: Arc<FilterConfig>,
    delivery: Delivery,
}

/// Records go to the spool first, then to the bundle directory; those the
/// directory refused (full, read-only) stay in the spool and are tried
/// again.
#[derive(Clone)]
struct Delivery {
    spool: Arc<Mutex<Spool>>,
    sink: Arc<BundleDir>,
    /// One retry pass at a time.
    in_flight: Arc<AtomicBool>,
    /// Records delivered by a retry (after a failure or a restart).
    redelivered: Arc<AtomicU64>,
    /// Failed attempts to write a bundle or the spool.
    errors: Arc<AtomicU64>,
}

impl Delivery {
    fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        // A panic while holding the lock leaves the spool's state as the
        // journal has it: still usable.
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the record durable in the spool, then writes its bundle.
    /// Returns the bundle's path, or why it is only in the spool (or, if
    /// even the spool refused it, in the fallback directory).
    fn deliver(
        &self,
        task_id: &str,
        record: &crate::records::Record,
        fallback_dir: &Path,
    ) -> Result<PathBuf, String> {
        let file = record.bundle.file_name();
        let bytes = match bundle_bytes(record) {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) => return Err(format!("encoding the record: {e}")),
        };
        let ready = pb::RecordReady {
            task_id: task_id.into(),
            bundle_file: file.clone(),
            bundle_json: bytes.clone(),
        };
        if let Err(e) = self.spool().record_ready(ready) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            // The spool's volume failed: the old way, bundle directory or
            // fallback directory.
            return crate::sinks::emit_or_keep(self.sink.as_ref(), fallback_dir, record)
                .map_err(|d| format!("{e}; {d}"));
        }
        match self.sink.write_atomic(&file, &bytes) {
            Ok(path) => {
                if let Err(e) = self.spool().delivered(&file) {
                    tracing::warn!(error = %e, "spool: cannot mark a record delivered (it may be written again, to the same file)");
                }
                Ok(path)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "{e}: the record stays in the spool ({}) and is written when the bundle directory takes it",
                    self.spool().path().display()
                ))
            }
        }
    }

    /// Writes every record the spool holds undelivered (blocking).
    fn deliver_undelivered(&self) {
        // Not in the `for` header: the guard would live through the loop.
        let waiting = self.spool().undelivered(Duration::from_secs(5));
        for r in waiting {
            match self.sink.write_atomic(&r.bundle_file, &r.bundle_json) {
                Ok(path) => {
                    self.redelivered.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.spool().delivered(&r.bundle_file) {
                        tracing::warn!(error = %e, "spool: cannot mark a record delivered");
                    }
                    tracing::info!(task = %r.task_id, path = %path.display(), "record delivered from the spool");
                    eprintln!(
                        "roar-node daemon: {}: delivered from the spool -> {}",
                        r.task_id,
                        path.display()
                    );
                }
                Err(e) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(task = %r.task_id, error = %e, "record still undeliverable: kept in the spool");
                    // The directory refuses; the rest would fail the same way.
                    return;
                }
            }
        }
    }

    /// Starts a retry pass off the loop, unless one runs or none is due.
    fn retry(&self) {
        if self.spool().undelivered_count() == 0 || self.in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.deliver_undelivered();
            me.in_flight.store(false, Ordering::Release);
        });
    }
}

/// Everything the loop changes.
struct State {
    ctx: Ctx,
    probes: Probes,
    engine: Engine,
    attr: Attributor,
    active: HashMap<u64, Active>,
    totals: Totals,
    /// Tasks a previous roar-node traced that ended while none ran.
    orphans: Vec<pb::TaskOpened>,
    /// Their last checkpoints, by task id.
    orphan_checkpoints: std::collections::BTreeMap<String, pb::TaskCheckpoint>,
    policy_dir: Option<PolicyDir>,
    /// Whether the API server answered since start-up.
    api_reachable: bool,
    /// Whether the pod watch's last word was not an error.
    watch_healthy: bool,
}

pub async fn daemon(args: DaemonArgs) -> anyhow::Result<i32> {
    // First, so that the kubelet's probes get answers during start-up.
    let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
    let health = Arc::new(Health::new(observability::health::DEFAULT_STALENESS));
    let (metrics_addr, _server) =
        observability::server::serve(args.metrics_addr, metrics.clone(), health.clone()).await?;
    tracing::info!(addr = %metrics_addr, "serving /metrics, /healthz, /readyz");
    let mut policy_dir = args.policy_dir.clone().map(PolicyDir::new);
    let policy = match policy_dir.as_mut().and_then(PolicyDir::poll) {
        Some(p) => p.map_err(anyhow::Error::msg)?,
        None => Policy::from_settings(&args.namespaces, &args.selectors, &args.presets)
            .map_err(anyhow::Error::msg)
            .context("policy")?,
    };
    tracing::info!(policy = %policy.describe(), "policy");
    let cgroot = cgroup_path::resolve_host_cgroup2_root(&args.host_cgroup)?;
    let sink = Arc::new(BundleDir::new(&args.bundle_dir).context("bundle directory")?);
    // Before anything is traced: what a previous roar-node left.
    let (spool, recovered) =
        Spool::open(&args.spool_dir, &args.node_name).context("opening the spool")?;
    if recovered.corrupt_entries > 0 || recovered.torn_bytes > 0 {
        tracing::error!(
            corrupt_entries = recovered.corrupt_entries,
            torn_bytes = recovered.torn_bytes,
            spool = %spool.path().display(),
            "the spool had damaged entries: skipped (a torn last entry is a crash mid-write)"
        );
    }
    tracing::info!(
        undelivered = recovered.undelivered.len(),
        open_tasks = recovered.open_tasks.len(),
        rebooted = recovered.rebooted,
        "spool replayed"
    );
    let spool = Arc::new(Mutex::new(spool));
    let delivery = Delivery {
        spool: spool.clone(),
        sink: sink.clone(),
        in_flight: Arc::new(AtomicBool::new(false)),
        redelivered: Arc::new(AtomicU64::new(0)),
        errors: Arc::new(AtomicU64::new(0)),
    };
    delivery.deliver_undelivered();
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    // Say early and clearly when the API server is unreachable or forbids
    // listing pods; keep going: capture continues (tasks the spool names
    // are traced again at once) and attribution catches up when the
    // watch gets through.
    let api: Api<Pod> = Api::all(client.clone());
    let api_reachable = match api
        .list(
            &kube::api::ListParams::default()
                .fields(&format!("spec.nodeName={}", args.node_name))
                .limit(1),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot list pods on this node (API server down? RBAC: pods get/list/watch): capturing anyway, attribution catches up when it answers");
            eprintln!(
                "roar-node daemon: cannot list pods on this node: {e}; capture continues, attribution catches up when the API server answers"
            );
            false
        }
    };

    let opts = ProbeOptions {
        ring_buffer_bytes: args.ring_buffer_bytes,
        pin_dir: args.pin_dir.clone(),
        ..ProbeOptions::default()
    };
    let Capture {
        probes,
        mut reader,
        pool,
        mut engine,
    } = Capture::start(
        opts,
        args.host_proc.clone(),
        args.hash_workers,
        TaskLimits {
            max_files: args.max_files_per_task,
            max_files_total: args.max_files_total,
            ..TaskLimits::default()
        },
    )?;
    // Containers' files are never in our view: one whose opener's
    // namespace is unknown is reported unhashed, not looked up here.
    engine.foreign_tasks = true;
    health.set_programs_attached(true);
    if probes.adopted {
        // Capture went on while no daemon ran: the gaps of the resumed
        // tasks end where the dead daemon's last heartbeat was.
        if let Some(alive) = recovered.last_alive_ns {
            spool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .capture_continued(alive);
        }
        tracing::info!(pins = ?args.pin_dir, "adopted the programs a previous roar-node left attached: capture went on while it was down");
        eprintln!(
            "roar-node daemon: adopted the pinned programs of a previous roar-node; capture went on while it was down"
        );
    }
    if let Some(e) = &probes.pin_error {
        tracing::warn!(error = %e, "programs not pinned: after a crash, capture stops until the daemon is back");
    }

    let mut attr = Attributor::new(policy);
    let t_walk = Instant::now();
    let mut walked = 0usize;
    // The programs are attached: cgroups made from here on are reported;
    // the walk finds the ones made before.
    for dir in cgroup_path::walk(&cgroot)? {
        walked += 1;
        let change = CgroupChange {
            created: true,
            id: dir.id,
            parent_id: 0,
            level: 0,
            path: dir.path.into_bytes(),
            path_truncated: false,
            traced_by_kernel: false,
        };
        // No pods are known yet: nothing to do but remember.
        let _ = attr.on_cgroup(&change, Instant::now());
    }
    tracing::info!(
        cgroups = walked,
        ms = t_walk.elapsed().as_millis() as u64,
        root = %cgroot.display(),
        "walked the host cgroup2 tree"
    );
    // Tasks a previous roar-node was tracing: trace the ones still
    // running again now, before any pod is known; the others ended while
    // no roar-node ran, and get their record (with the gap) once their
    // pods are known.
    let mut resume_acts = Vec::new();
    let mut orphans = Vec::new();
    let mut resumed = Vec::new();
    let mut checkpoints = recovered.checkpoints;
    for t in recovered.open_tasks {
        let acts = if recovered.rebooted {
            Vec::new()
        } else if probes.adopted {
            // Ended or not, its events since the crash are in the pinned
            // ring buffer: a task again, to take them.
            attr.resume_gone(t.cgroup_id, &t.cgroup_path, Instant::now())
        } else {
            attr.resume(t.cgroup_id)
        };
        if acts.is_empty() {
            orphans.push(t);
        } else {
            tracing::info!(task = %t.task_id, cgroup = t.cgroup_id, checkpoint = checkpoints.contains_key(&t.task_id), "resuming a task a previous roar-node traced");
            resume_acts.extend(acts);
            if let Some(c) = checkpoints.remove(&t.task_id) {
                resumed.push(c);
            }
        }
    }

    let (tx, mut pod_rx) = mpsc::channel(1024);
    spawn_pod_watch(client, args.node_name.clone(), tx);

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut stats_tick = tokio::time::interval(Duration::from_secs(1));

    let mut st = State {
        ctx: Ctx {
            cgroot: cgroot.clone(),
            host_proc: args.host_proc.clone(),
            node: args.node_name.clone(),
            grace: Duration::from_millis(args.grace_ms),
            status_wait: Duration::from_secs(args.status_wait_secs),
            flags: if args.no_suppress {
                FILTER_NO_SUPPRESS
            } else {
                0
            },
            pool,
            fallback_dir: Arc::new(args.fallback_dir.clone()),
            filters: Arc::new(FilterConfig::default()),
            delivery,
        },
        probes,
        engine,
        attr,
        active: HashMap::new(),
        totals: Totals {
            spool_damaged: recovered.corrupt_entries,
            spool_torn_bytes: recovered.torn_bytes,
            ..Totals::default()
        },
        orphans,
        orphan_checkpoints: checkpoints,
        policy_dir,
        api_reachable,
        watch_healthy: api_reachable,
    };
    st.execute(resume_acts);
    // Their state as last checkpointed, before any new event is applied.
    for c in resumed {
        if let Some(state) = &c.state {
            st.engine.restore(c.cgroup_id, state);
        }
    }
    let mut listed_once = false;
    let started = Instant::now();
    let mut stats_tick_n: u64 = 0;
    eprintln!(
        "roar-node daemon: node {}, cgroup2 root {}, bundles in {}",
        args.node_name,
        cgroot.display(),
        args.bundle_dir.display()
    );

    loop {
        tokio::select! {
            _ = reader.wait() => {}
            msg = pod_rx.recv() => {
                let Some(msg) = msg else { bail!("the pod watch ended") };
                let now = Instant::now();
                if !matches!(msg, PodEvent::Error(_)) && !st.watch_healthy {
                    st.watch_healthy = true;
                    st.api_reachable = true;
                    tracing::info!("the pod watch gets through again");
                }
                let acts = match msg {
                    PodEvent::Apply(p) => st.attr.on_pod(p),
                    PodEvent::Delete(uid) => st.attr.on_pod_deleted(&uid, now),
                    PodEvent::Listed(uids) => {
                        if !listed_once {
                            listed_once = true;
                            health.set_pod_cache_synced(true);
                            eprintln!("roar-node daemon: {} pods on this node; watching", uids.len());
                        }
                        let mut acts = Vec::new();
                        for uid in st.attr.pods.uids_not_in(&uids) {
                            acts.extend(st.attr.on_pod_deleted(&uid, now));
                        }
                        acts
                    }
                    PodEvent::Error(e) => {
                        st.totals.watch_errors += 1;
                        if st.watch_healthy {
                            tracing::warn!(error = %e, "pod watch error (retrying; capture continues)");
                        }
                        st.watch_healthy = false;
                        Vec::new()
                    }
                };
                st.execute(acts);
                if listed_once {
                    st.write_orphans();
                }
            }
            _ = tick.tick() => {
                health.beat();
                // Drain first: a task ends only after its events are in.
                st.drain(&mut reader);
                st.end_tasks(true);
                let acts = st.attr.sweep(Instant::now(), Duration::from_secs(120));
                st.execute(acts);
                let active = &st.active;
                st.attr.pods.expire(Instant::now(), Duration::from_secs(120), |uid| {
                    active.values().any(|a| a.meta.as_ref().is_some_and(|m| m.pod_uid == uid))
                });
            }
            _ = stats_tick.tick() => {
                st.spool_op("heartbeat", |s| s.heartbeat());
                st.reload_policy();
                // A refused record is tried again every 5 s.
                if stats_tick_n.is_multiple_of(5) {
                    st.ctx.delivery.retry();
                }
                if stats_tick_n % 5 == 2 {
                    st.checkpoint_tasks();
                }
                stats_tick_n += 1;
                // Pods never listed (API server down since start): the
                // tasks that ended while no roar-node ran get their
                // record without pod details rather than never.
                if !listed_once && started.elapsed() > Duration::from_secs(args.status_wait_secs * 4) {
                    st.write_orphans();
                }
                st.update_metrics(&metrics, pod_rx.len());
                if let Some(p) = &args.stats_file {
                    st.write_stats(p);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        st.drain(&mut reader);
    }
    // Shutting down. Tasks that ended get their record. Tasks still
    // running do not: the next roar-node on this node picks them up
    // (marked partial) and writes their one record; writing one here too
    // would give roar two records of one container run.
    st.drain(&mut reader);
    let ids: Vec<u64> = st.active.keys().copied().collect();
    for id in ids {
        let Some(mut a) = st.active.remove(&id) else {
            continue;
        };
        if a.gone_at.is_none() {
            if let Some(m) = &a.meta {
                eprintln!(
                    "roar-node daemon: {} still running: left to the next roar-node on this node",
                    m.task_id()
                );
            }
            continue;
        }
        if a.closing.is_none() {
            a.closing = st.close(id, None);
        }
        match a.meta.clone() {
            Some(meta) => {
                let code = match st.attr.run_state(&meta) {
                    Some(RunState::Terminated { exit_code }) => Some(exit_code),
                    _ => None,
                };
                st.settle(a, meta, code);
            }
            None => st.discard(a, true),
        }
    }
    // Let the records being built finish (hashing), within reason.
    let t0 = Instant::now();
    while st.totals.records_pending.load(Ordering::Relaxed) > 0
        && t0.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The gap of the tasks left running starts here.
    st.spool_op("heartbeat", |s| s.heartbeat());
    // A normal stop: nothing stays attached after we exit.
    st.probes.unpin();
    if let Some(p) = &args.stats_file {
        st.write_stats(p);
    }
    eprintln!(
        "roar-node daemon: stopped; {} tasks traced, {} records written, {} unattributed events",
        st.totals.tasks_started,
        st.totals.records_written.load(Ordering::Relaxed),
        st.unattributed()
    );
    Ok(0)
}

impl State {
    /// A spool write the daemon can live without for a moment (heartbeat,
    /// task opened): counted and logged, never fatal.
    fn spool_op(
        &mut self,
        what: &str,
        op: impl FnOnce(&mut Spool) -> Result<(), crate::sinks::spool::SpoolError>,
    ) {
        if let Err(e) = op(&mut self.ctx.delivery.spool()) {
            self.totals.spool_errors += 1;
            tracing::error!(error = %e, "spool: {what} failed");
        }
    }

    /// Re-reads the policy ConfigMap if it changed. An invalid one is
    /// reported (log, counter, stats) and the policy in force is kept.
    fn reload_policy(&mut self) {
        let Some(result) = self.policy_dir.as_mut().and_then(PolicyDir::poll) else {
            return;
        };
        match result {
            Ok(policy) => {
                self.totals.policy_generation += 1;
                tracing::info!(policy = %policy.describe(), generation = self.totals.policy_generation, "policy updated");
                eprintln!("roar-node daemon: policy updated: {}", policy.describe());
                let acts = self.attr.set_policy(policy);
                self.execute(acts);
            }
            Err(e) => {
                self.totals.policy_errors += 1;
                tracing::error!(error = %e, kept = %self.attr.policy().describe(), "invalid policy: keeping the one in force");
                eprintln!(
                    "roar-node daemon: invalid policy ({e}); keeping the one in force: {}",
                    self.attr.policy().describe()
                );
            }
        }
    }

    /// Records for tasks a previous roar-node traced that ended while no
    /// roar-node ran: what is known of them (who, and the gap), marked
    /// partial. Their events were in the previous daemon's memory.
    fn write_orphans(&mut self) {
        for (i, t) in std::mem::take(&mut self.orphans).into_iter().enumerate() {
            // Its cgroup is gone: a key no live cgroup can have.
            let key = u64::MAX - i as u64;
            self.engine.register(key, None);
            if let Some(state) = self
                .orphan_checkpoints
                .remove(&t.task_id)
                .and_then(|c| c.state)
            {
                self.engine.restore(key, &state);
            }
            let meta = TaskMeta {
                cgroup_id: t.cgroup_id,
                cgroup_path: t.cgroup_path.clone(),
                pod_uid: t.pod_uid.clone(),
                container: t.container.clone(),
                container_id: t.container_id.clone(),
                restart_count: t.restart_count,
                role: match t.role.as_str() {
                    "user" => "user",
                    "osmo-ctrl" => "osmo-ctrl",
                    "init" => "init",
                    _ => "task",
                },
                reason: t.reason.clone(),
                started_before_agent: t.started_before_agent,
            };
            let Some(tx) = self.close(
                key,
                Some("the container ended while no roar-node was running: what it did after the last checkpoint was not captured".into()),
            ) else {
                // Registered just above, so not expected; never silent.
                self.totals.record_errors.fetch_add(1, Ordering::Relaxed);
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

    /// Checkpoints the running tasks that changed since their last
    /// checkpoint: after a crash, the next daemon continues from there.
    /// Each task's checkpoints are paced to about 256 KiB/s of spool
    /// writes (a task with 300,000 files is checkpointed every minute or
    /// so, a small one every 5 s), so that a flooding pod cannot turn the
    /// spool into its own I/O load.
    fn checkpoint_tasks(&mut self) {
        const BYTES_PER_SEC: u64 = 256 << 10;
        let at_ns = crate::sinks::spool::now_ns();
        let now = Instant::now();
        let mut due = Vec::new();
        for (id, a) in self.active.iter_mut() {
            let (Some(meta), None) = (&a.meta, a.gone_at) else {
                continue;
            };
            let Some(task) = self.engine.table.get(*id) else {
                continue;
            };
            let events = task.stats.total_events();
            let pace = Duration::from_secs(a.checkpoint_bytes / BYTES_PER_SEC);
            if events == a.checkpointed_events
                || a.checkpointed_at
                    .is_some_and(|t| now.duration_since(t) < pace)
            {
                continue;
            }
            a.checkpointed_events = events;
            a.checkpointed_at = Some(now);
            due.push((*id, meta.task_id()));
        }
        for (id, task_id) in due {
            let Some(state) = self.engine.checkpoint(id) else {
                continue;
            };
            if let Some(a) = self.active.get_mut(&id) {
                a.checkpoint_bytes = prost::Message::encoded_len(&state) as u64;
            }
            let c = pb::TaskCheckpoint {
                task_id,
                cgroup_id: id,
                at_ns,
                state: Some(state),
            };
            self.spool_op("checkpoint", |s| s.checkpoint(c));
        }
    }

    /// Mirrors the loop's counters into /metrics (once a second).
    fn update_metrics(&self, m: &Metrics, pod_events: usize) {
        for kind in EventKind::ALL {
            m.observe_events(kind.name(), self.engine.stats.by_kind[kind as usize]);
        }
        let kernel = self.probes.stats.read();
        for (i, v) in kernel.counters.iter().enumerate() {
            if loss::is_loss(i as u32)
                && let Some(name) = loss::stat_name(i as u32)
            {
                m.observe_lost(name, *v);
            }
        }
        m.observe_lost(
            observability::metrics::cause::UNDECODABLE,
            self.engine.stats.undecodable_total(),
        );
        observe_total(&m.unattributed_events, self.unattributed());
        observe_total(&m.ignored_events, self.attr.stats.ignored);
        m.set_queue_depth(observability::metrics::queue::POD_EVENTS, pod_events as u64);
        m.set_queue_depth(
            observability::metrics::queue::HASH_JOBS,
            self.ctx.pool.depth(),
        );
        m.set_queue_depth(
            observability::metrics::queue::PENDING_EVENTS,
            self.attr.stats.waiting,
        );
        let t = &self.totals;
        observe_total(
            &m.records_emitted,
            t.records_written.load(Ordering::Relaxed),
        );
        m.records_pending
            .set(gauge_value(t.records_pending.load(Ordering::Relaxed)));
        // A damaged spool entry may have been a record: counted as one
        // that could not be delivered.
        observe_total(
            &m.record_errors,
            t.record_errors.load(Ordering::Relaxed)
                + self.ctx.delivery.errors.load(Ordering::Relaxed)
                + t.spool_damaged,
        );
        {
            let spool = self.ctx.delivery.spool();
            m.records_spooled
                .set(gauge_value(spool.undelivered_count() as u64));
            m.spool_bytes.set(gauge_value(spool.bytes()));
        }
        let hs = &self.ctx.pool.stats;
        observe_total(&m.hash_bytes, hs.bytes.load(Ordering::Relaxed));
        observe_total(&m.hash_files, hs.files.load(Ordering::Relaxed));
        m.active_tasks.set(gauge_value(self.active.len() as u64));
        observe_total(&m.tasks_started, t.tasks_started);
        observe_total(&m.tasks_discarded, t.tasks_discarded);
        observe_total(&m.policy_reload_errors, t.policy_errors);
        m.policy_generation.set(gauge_value(t.policy_generation));
        observe_total(&m.pod_watch_errors, t.watch_errors);
        m.api_server_reachable
            .set(i64::from(self.api_reachable && self.watch_healthy));
    }

    fn unattributed(&self) -> u64 {
        self.attr.stats.unattributed + self.totals.unattributed_in_tasks.load(Ordering::Relaxed)
    }

    /// Hands every waiting ring-buffer record to its task.
    fn drain(&mut self, reader: &mut EventReader) {
        let mut acts = Vec::new();
        let mut exited: HashSet<u64> = HashSet::new();
        let mut removed_task = false;
        reader.drain(|bytes| {
            let Some(ev) = self.engine.decode(bytes) else {
                return;
            };
            if let Body::Cgroup(c) = &ev.body {
                acts.extend(self.attr.on_cgroup(c, Instant::now()));
                removed_task |= !c.created && self.active.contains_key(&c.id);
                // A new container cgroup must be a task before its first
                // event is routed.
                self.execute(std::mem::take(&mut acts));
                return;
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
        // A process of a task exited: if it was the last, the cgroup is
        // empty now (well before the runtime removes it).
        let now = Instant::now();
        for id in exited {
            if let Some(a) = self.active.get_mut(&id)
                && a.gone_at.is_none()
                && !populated(&self.ctx.cgroot, &a.path)
            {
                a.gone_at = Some(now);
            }
        }
        let mut any_gone = removed_task;
        for a in self.active.values_mut() {
            if a.gone_at.is_some() && a.closing.is_none() {
                a.drains_since_gone += 1;
                any_gone = true;
            }
        }
        if any_gone {
            // Close soon: outputs in emptyDir volumes must be hashed before
            // the kubelet tears the volumes down.
            self.end_tasks(false);
        }
    }

    fn execute(&mut self, acts: Vec<Action>) {
        for act in acts {
            match act {
                Action::TracePod(id) => {
                    if let Err(e) = self
                        .probes
                        .traced
                        .trace(id, FILTER_CHILDREN_ARE_ROOTS | self.ctx.flags)
                    {
                        tracing::error!(cgroup = id, error = %e, "cannot add a pod cgroup to the filter");
                    }
                }
                Action::TraceContainer(id) => {
                    if let Err(e) = self.probes.traced.trace(id, self.ctx.flags) {
                        tracing::error!(cgroup = id, error = %e, "cannot add a container cgroup to the filter");
                    }
                }
                Action::Untrace(id) => {
                    self.probes.traced.untrace(id);
                }
                Action::Warn(msg) => {
                    self.totals.warnings += 1;
                    tracing::warn!("{msg}");
                    eprintln!("roar-node daemon: warning: {msg}");
                }
                Action::Begin { cgroup, path } => {
                    self.engine.register(cgroup, None);
                    self.active.insert(
                        cgroup,
                        Active {
                            path,
                            meta: None,
                            gone_at: None,
                            drains_since_gone: 0,
                            closing: None,
                            checkpointed_events: 0,
                            checkpointed_at: None,
                            checkpoint_bytes: 0,
                        },
                    );
                }
                Action::Resolved(meta) => {
                    let id = meta.cgroup_id;
                    let task_id = meta.task_id();
                    // In the spool already: a task resumed after a restart
                    // (with its gaps), whose entry stays.
                    let spooled_gaps = self
                        .ctx
                        .delivery
                        .spool()
                        .open_task(&task_id)
                        .map(|t| !t.gaps.is_empty());
                    if meta.started_before_agent || spooled_gaps == Some(true) {
                        // No exec seen (running before this daemon traced
                        // it): hold the namespace of a process that is in
                        // the container now.
                        match pid_in_cgroup(&self.ctx.host_proc, &meta.cgroup_path)
                            .map(|pid| MountNs::of_pid(&self.ctx.host_proc, pid))
                        {
                            Some(Ok(ns)) => self.engine.hold(id, Arc::new(ns)),
                            other => tracing::warn!(
                                task = %meta.task_id(),
                                "no mount namespace for a container that was already running ({other:?}): its files are hashed from the daemon's view"
                            ),
                        }
                    }
                    tracing::info!(task = %task_id, role = meta.role, cgroup = id, "task resolved");
                    self.totals.tasks_started += 1;
                    if spooled_gaps.is_none() {
                        let opened = pb::TaskOpened {
                            task_id,
                            cgroup_id: id,
                            cgroup_path: meta.cgroup_path.clone(),
                            pod_uid: meta.pod_uid.clone(),
                            container: meta.container.clone(),
                            container_id: meta.container_id.clone(),
                            restart_count: meta.restart_count,
                            role: meta.role.into(),
                            reason: meta.reason.clone(),
                            started_before_agent: meta.started_before_agent,
                            traced_since_ns: crate::sinks::spool::now_ns(),
                            gaps: Vec::new(),
                        };
                        self.spool_op("task opened", |s| s.task_opened(opened));
                    }
                    if let Some(a) = self.active.get_mut(&id) {
                        a.meta = Some(meta);
                    }
                }
                Action::Discard {
                    cgroup,
                    unattributed,
                } => {
                    if let Some(a) = self.active.remove(&cgroup) {
                        self.discard(a, unattributed);
                    }
                    if let Some(f) = self.engine.finish(cgroup) {
                        self.count_dropped(f.task.stats.total_events(), unattributed);
                    }
                }
            }
        }
    }

    fn count_dropped(&mut self, events: u64, unattributed: bool) {
        if unattributed {
            self.totals
                .unattributed_in_tasks
                .fetch_add(events, Ordering::Relaxed);
        } else {
            self.attr.stats.ignored += events;
        }
    }

    /// Drops a task that is not one (sandbox, osmo-init) or never
    /// resolved; its record, if being built, is not written.
    fn discard(&mut self, a: Active, unattributed: bool) {
        self.totals.tasks_discarded += 1;
        if let Some(m) = &a.meta {
            let task_id = m.task_id();
            self.spool_op("task closed", |s| s.task_closed(&task_id));
        }
        if let Some(tx) = a.closing {
            let _ = tx.send(Final::Discard { unattributed });
        }
    }

    /// Closes tasks whose cgroup is empty or gone (after a grace and two
    /// drains), and writes the records of closed tasks once the API
    /// server has reported their exit code (or `status_wait` passed).
    fn end_tasks(&mut self, check_fs: bool) {
        let now = Instant::now();
        let mut closing = Vec::new();
        let mut settled = Vec::new();
        for (id, a) in self.active.iter_mut() {
            if a.gone_at.is_none()
                && (self.attr.cgroup_removed(*id)
                    || (check_fs
                        && !self
                            .ctx
                            .cgroot
                            .join(a.path.trim_start_matches('/'))
                            .exists()))
            {
                a.gone_at = Some(now);
            }
            let Some(gone) = a.gone_at else { continue };
            if a.closing.is_none() {
                if now.duration_since(gone) >= self.ctx.grace && a.drains_since_gone >= 2 {
                    closing.push(*id);
                }
                continue;
            }
            let Some(meta) = &a.meta else { continue };
            match self.attr.run_state(meta) {
                Some(RunState::Terminated { exit_code }) => settled.push((*id, Some(exit_code))),
                _ if self.attr.pods.is_deleted(&meta.pod_uid)
                    || now.duration_since(gone) >= self.ctx.status_wait =>
                {
                    settled.push((*id, None))
                }
                _ => {}
            }
        }
        for id in closing {
            let tx = self.close(id, None);
            match tx {
                Some(tx) => {
                    if let Some(a) = self.active.get_mut(&id) {
                        a.closing = Some(tx);
                    }
                }
                None => {
                    self.active.remove(&id);
                }
            }
        }
        for (id, code) in settled {
            if let Some(a) = self.active.remove(&id)
                && let Some(meta) = a.meta.clone()
            {
                self.settle(a, meta, code);
            }
        }
    }

    fn settle(&mut self, a: Active, meta: TaskMeta, code: Option<i32>) {
        let Some(tx) = a.closing else { return };
        let pod = self.attr.pods.get(&meta.pod_uid).cloned().map(Box::new);
        self.attr.forget(meta.cgroup_id);
        let _ = tx.send(Final::Write {
            meta,
            pod,
            exit_code: code,
        });
    }

    /// Takes a task out of the engine and the kernel filter and starts
    /// building its record on a blocking thread (hashing its outputs now).
    /// The record is written when the returned sender delivers who the
    /// task was and its exit code.
    fn close(&mut self, id: u64, partial: Option<String>) -> Option<oneshot::Sender<Final>> {
        let entry = self.probes.traced.untrace(id);
        let finished = self.engine.finish(id)?;
        let first_ns = finished.task.first_ns.unwrap_or(0);
        let events = finished.task.stats.total_events();
        // OSMO's osmo_exec runs the user's command as a child: that child
        // is "the command" when there is one.
        let osmo_child = osmo_command_pid(&finished.task);
        let command_pid = osmo_child.or_else(|| entrypoint_pid(&finished.task));
        let mut md = Map::new();
        md.insert("mode".into(), json!("daemon"));
        md.insert(
            "kernel_counters".into(),
            kernel_counters(&self.probes.stats.read()),
        );
        if osmo_child.is_some() {
            md.insert("command_parent".into(), json!("osmo_exec"));
        }
        let identity = TaskIdentity {
            node: self.ctx.node.clone(),
            command_pid,
            metadata: md,
            ..TaskIdentity::default()
        };
        let (tx, rx) = oneshot::channel::<Final>();
        let pool = self.ctx.pool.clone();
        let filters = self.ctx.filters.clone();
        let delivery = self.ctx.delivery.clone();
        let fallback_dir = self.ctx.fallback_dir.clone();
        let node = self.ctx.node.clone();
        let written = self.totals.records_written.clone();
        let errors = self.totals.record_errors.clone();
        let pending = self.totals.records_pending.clone();
        let unattributed = self.totals.unattributed_in_tasks.clone();
        pending.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let builder = RecordBuilder {
                pool: &pool,
                filters: &filters,
                clock: Clock::new(),
                host: node.clone(),
            };
            let mut record = builder.build(finished.into_task(identity, entry));
            let fin = rx.blocking_recv();
            let (meta, pod, exit_code) = match fin {
                Ok(Final::Write {
                    meta,
                    pod,
                    exit_code,
                }) => (meta, pod, exit_code),
                Ok(Final::Discard { unattributed: true }) | Err(_) => {
                    unattributed.fetch_add(events, Ordering::Relaxed);
                    pending.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                Ok(Final::Discard { .. }) => {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            };
            let task_id = meta.task_id();
            let gaps = delivery
                .spool()
                .open_task(&task_id)
                .map(|t| t.gaps.clone())
                .unwrap_or_default();
            identify(
                &mut record,
                &meta,
                pod.as_deref(),
                exit_code,
                &node,
                first_ns,
                partial,
                &gaps,
            );
            let big = record.summary.reads + record.summary.writes > 10_000;
            match delivery.deliver(&task_id, &record, &fallback_dir) {
                Ok(path) => {
                    written.fetch_add(1, Ordering::Relaxed);
                    let s = &record.summary;
                    eprintln!(
                        "roar-node daemon: {task_id} ({}): exit {}, {} processes, {} reads, {} writes, {} events, {} lost -> {}",
                        meta.role,
                        record.fragment.exit_code,
                        s.processes,
                        s.reads,
                        s.writes,
                        s.events,
                        s.lost,
                        path.display()
                    );
                }
                Err(e) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(task = %task_id, error = %e, "writing the record failed");
                    eprintln!("roar-node daemon: {task_id}: writing the record failed: {e}");
                }
            }
            if big {
                // A big record's buffers are freed now: give the heap back
                // to the kernel rather than keep the peak resident.
                drop(record);
                // SAFETY: malloc_trim only releases free memory.
                unsafe { libc::malloc_trim(0) };
            }
            pending.fetch_sub(1, Ordering::Relaxed);
        });
        Some(tx)
    }

    fn write_stats(&self, path: &Path) {
        let s = &self.attr.stats;
        let spool = self.ctx.delivery.spool();
        let v = json!({
            "time": Clock::new().wall(Clock::now_boot_ns()),
            "events": self.engine.stats.records,
            "undecodable": self.engine.stats.undecodable_total(),
            "attribution": {
                "before_resolution": s.before_resolution,
                "ignored": s.ignored,
                "unattributed": self.unattributed(),
                "waiting": s.waiting,
                "pending": self.attr.pending(),
            },
            "tasks": {
                "active": self.active.len(),
                "resolved": self.totals.tasks_started,
                "discarded": self.totals.tasks_discarded,
                "records_written": self.totals.records_written.load(Ordering::Relaxed),
                "records_pending": self.totals.records_pending.load(Ordering::Relaxed),
                "record_errors": self.totals.record_errors.load(Ordering::Relaxed),
            },
            "spool": {
                "undelivered": spool.undelivered_count(),
                "open_tasks": spool.open_tasks().count(),
                "bytes": spool.bytes(),
                "errors": self.totals.spool_errors,
                "damaged_entries_at_start": self.totals.spool_damaged,
                "torn_bytes_at_start": self.totals.spool_torn_bytes,
                "redelivered": self.ctx.delivery.redelivered.load(Ordering::Relaxed),
                "delivery_errors": self.ctx.delivery.errors.load(Ordering::Relaxed),
            },
            "files_held": self.engine.table.files_held(),
            "pods_known": self.attr.pods.len(),
            "policy_warnings": self.totals.warnings,
            "policy": {
                "in_force": self.attr.policy().describe(),
                "generation": self.totals.policy_generation,
                "errors": self.totals.policy_errors,
            },
            "probes": {
                "adopted": self.probes.adopted,
                "pinned": self.probes.options.pin_dir.is_some() && self.probes.pin_error.is_none(),
                "pin_error": self.probes.pin_error,
            },
            "api_reachable": self.api_reachable,
            "watch_healthy": self.watch_healthy,
            "watch_errors": self.totals.watch_errors,
            "kernel_counters": kernel_counters(&self.probes.stats.read()),
        });
        let tmp = path.with_extension("tmp");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if std::fs::write(&tmp, serde_json::to_vec_pretty(&v).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

/// What a closed task's record is still waiting for.
enum Final {
    Write {
        meta: TaskMeta,
        pod: Option<Box<PodInfo>>,
        exit_code: Option<i32>,
    },
    Discard {
        unattributed: bool,
    },
}

/// Fills in who the task was, once known.
#[allow(clippy::too_many_arguments)]
fn identify(
    record: &mut crate::records::Record,
    meta: &TaskMeta,
    pod: Option<&PodInfo>,
    exit_code: Option<i32>,
    node: &str,
    first_ns: u64,
    partial: Option<String>,
    gaps: &[pb::Gap],
) {
    let f = &mut record.fragment;
    let osmo = pod.is_some_and(is_osmo);
    let pod_name = pod.map(|p| p.name.clone()).unwrap_or_default();
    f.task_id = meta.task_id();
    f.job_uid = job_uid(&f.task_id, node, first_ns);
    f.task_name = match pod.and_then(|p| p.labels.get("osmo.task_name")) {
        Some(t) if meta.role == "user" => t.clone(),
        Some(t) => format!("{t}/{}", meta.container),
        None => format!("{pod_name}/{}", meta.container),
    };
    f.backend = if osmo { "osmo" } else { "k8s" }.into();
    if let Some(code) = exit_code {
        f.exit_code = code;
    }
    let md = &mut f.backend_metadata;
    md.insert("execution_role".into(), json!(meta.role));
    if let Some(p) = pod {
        let c = p.container(&meta.container);
        md.insert(
            "pod".into(),
            json!({"name": p.name, "namespace": p.namespace, "uid": p.uid, "node": p.node}),
        );
        md.insert(
            "container".into(),
            json!({
                "name": meta.container,
                "id": meta.container_id,
                "restart_count": meta.restart_count,
                "image": c.map(|c| c.image.clone()),
                "image_resolved": c.and_then(|c| c.status_image.clone()),
                "image_digest": c.and_then(|c| c.image_id.clone()),
            }),
        );
        let osmo_labels: Map<String, Value> = p
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with("osmo."))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        if !osmo_labels.is_empty() {
            md.insert("osmo".into(), Value::Object(osmo_labels));
        }
    }
    md.insert(
        "cgroup".into(),
        json!({"id": meta.cgroup_id, "path": meta.cgroup_path}),
    );
    md.insert("traced_because".into(), json!(meta.reason));
    let source = match (exit_code, pod) {
        (Some(_), _) => "container_status",
        (None, Some(_)) => "kernel (no container status in time)",
        (None, None) => "kernel (pod gone)",
    };
    md.insert("exit_code_source".into(), json!(source));
    let partial = partial
        .or_else(|| {
            gaps.last().map(|_| {
                "roar-node restarted while the task ran: events in the gaps are missing".to_string()
            })
        })
        .or_else(|| {
            meta.started_before_agent.then(|| {
                "the container was running before roar-node traced it: earlier processes and files are missing"
                    .to_string()
            })
        });
    if let Some(why) = partial
        && let Some(Value::Object(cap)) = md.get_mut("capture")
    {
        cap.insert("partial".into(), json!(true));
        cap.insert("partial_reason".into(), json!(why));
        if !gaps.is_empty() {
            let secs = |ns: u64| ns as f64 / 1e9;
            let gaps: Vec<Value> = gaps
                .iter()
                .map(|g| json!({"from": secs(g.from_ns), "to": secs(g.to_ns), "why": g.why}))
                .collect();
            cap.insert("gaps".into(), Value::Array(gaps));
        }
    }
    record.bundle = BundleName {
        pod: pod_name,
        container: meta.container.clone(),
        // A retry is a new pod with the same name: the UID keeps its
        // bundle apart.
        attempt: format!(
            "{}-{}",
            meta.restart_count,
            meta.pod_uid.chars().take(8).collect::<String>()
        ),
    };
}

/// A process in the cgroup at `rel`, as a host PID. cgroup.procs shows
/// PIDs in the reader's PID namespace (0 for processes outside it, which
/// all are when the daemon runs without hostPID), so the host's /proc is
/// searched instead: the process whose cgroup v2 line (`0::<path>`) names
/// this cgroup or one below it.
fn pid_in_cgroup(host_proc: &Path, rel: &str) -> Option<u32> {
    let below = format!("{rel}/");
    std::fs::read_dir(host_proc)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(host_proc.join(pid.to_string()).join("cgroup"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
                })
                .is_some_and(|p| p == rel || p.starts_with(&below))
        })
}

/// Whether any process is in the cgroup (false when it is gone).
fn populated(cgroot: &Path, rel: &str) -> bool {
    std::fs::read_to_string(
        cgroot
            .join(rel.trim_start_matches('/'))
            .join("cgroup.events"),
    )
    .map(|s| s.lines().any(|l| l.trim() == "populated 1"))
    .unwrap_or(false)
}

/// The container's entrypoint: its first process that exec'd (the
/// runtime's own processes come first and never exec in the container).
fn entrypoint_pid(task: &Task) -> Option<u32> {
    task.processes
        .iter()
        .filter(|p| !p.argv.is_empty() || p.exe.is_some())
        .min_by_key(|p| (p.start_ns, p.tgid))
        .map(|p| p.tgid)
}

/// For an OSMO user container, the user's command is the child of
/// osmo_exec (which stays PID 1): its process is "the command".
fn osmo_command_pid(task: &Task) -> Option<u32> {
    let base = |b: &[u8]| b.rsplit(|c| *c == b'/').next().map(<[u8]>::to_vec);
    let is_exec = |p: &crate::tasks::Process| {
        p.argv.first().and_then(|a| base(a)).as_deref() == Some(b"osmo_exec".as_slice())
            || p.exe.as_ref().and_then(|e| base(&e.bytes)).as_deref()
                == Some(b"osmo_exec".as_slice())
    };
    let exec = task.processes.iter().find(|p| is_exec(p))?;
    task.processes
        .iter()
        .filter(|p| p.ppid == Some(exec.tgid) && p.tgid != exec.tgid)
        .min_by_key(|p| (p.start_ns, p.tgid))
        .map(|p| p.tgid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::cgroupfs::{LocalCgroup, find_cgroup2};

    /// Finds a process put in a real cgroup through /proc (needs root).
    #[test]
    fn finds_a_process_of_a_cgroup_through_proc() {
        let Ok(root) = find_cgroup2() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let name = format!("pid-in-cgroup-{}", std::process::id());
        let cg = match LocalCgroup::create(&root, &name) {
            Ok(cg) => cg,
            Err(e) => {
                eprintln!("skipped: cannot make a cgroup ({e}); run as root");
                return;
            }
        };
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        cg.add(child.id()).unwrap();
        let found = pid_in_cgroup(Path::new("/proc"), &cg.rel);
        let empty = pid_in_cgroup(Path::new("/proc"), &format!("{}-none", cg.rel));
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = cg.remove();
        assert_eq!(found, Some(child.id()));
        assert_eq!(empty, None);
    }

    fn exec(argv: &[&str]) -> crate::events::Exec {
        crate::events::Exec {
            ppid: 0,
            exe: crate::events::FilePath {
                bytes: argv[0].as_bytes().to_vec(),
                inexact: 0,
            },
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            argv_truncated: false,
            argv_unreadable: false,
            argv_total_len: 0,
            mnt_ns: 1,
            uid: 0,
            own_cgroup: 0,
        }
    }

    /// The shape of an OSMO user container: runc init (no exec), then
    /// osmo_exec as the entrypoint, the user command as its child.
    #[test]
    fn the_command_is_osmo_execs_child() {
        let mut t = Task::new(1, crate::tasks::TaskLimits::default());
        let p = &mut t.processes;
        p.fork(5, 10, false, 1);
        p.fork(10, 11, false, 2);
        p.exec(
            11,
            &exec(&["/osmo/bin/osmo_exec", "/bin/sh", "-c", "x > y"]),
            3,
        );
        p.fork(11, 12, false, 4);
        p.exec(12, &exec(&["/bin/sh", "-c", "x > y"]), 5);
        p.fork(12, 13, false, 6);
        p.exec(13, &exec(&["x"]), 7);
        assert_eq!(entrypoint_pid(&t), Some(11));
        assert_eq!(osmo_command_pid(&t), Some(12));
        let mut plain = Task::new(2, crate::tasks::TaskLimits::default());
        plain.processes.fork(5, 10, false, 1);
        plain.processes.exec(10, &exec(&["/bin/sh", "-c", "x"]), 2);
        assert_eq!(entrypoint_pid(&plain), Some(10));
        assert_eq!(osmo_command_pid(&plain), None);
    }
}
