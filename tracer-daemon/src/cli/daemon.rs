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
        Arc,
        atomic::{AtomicU64, Ordering},
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

use super::capture::{Capture, kernel_counters};
use crate::{
    attribution::{
        Action, Attributor, Route, TaskMeta, cgroup_path,
        pods::{PodInfo, RunState},
        policy::{Policy, is_osmo},
    },
    engine::Engine,
    events::{Body, CgroupChange, reader::EventReader},
    probes::{ProbeOptions, Probes},
    records::{
        BundleName, Clock, RecordBuilder, TaskIdentity, filters::FilterConfig, hashing::HashPool,
        job_uid, mountns::MountNs,
    },
    sinks::{Sink, bundle::BundleDir},
    tasks::Task,
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
    sink: Arc<dyn Sink>,
    fallback_dir: Arc<PathBuf>,
    filters: Arc<FilterConfig>,
}

/// Everything the loop changes.
struct State {
    ctx: Ctx,
    probes: Probes,
    engine: Engine,
    attr: Attributor,
    active: HashMap<u64, Active>,
    totals: Totals,
}

pub async fn daemon(args: DaemonArgs) -> anyhow::Result<i32> {
    let policy = Policy::from_settings(&args.namespaces, &args.selectors, &args.presets)
        .map_err(anyhow::Error::msg)
        .context("policy")?;
    let cgroot = cgroup_path::resolve_host_cgroup2_root(&args.host_cgroup)?;
    let sink: Arc<dyn Sink> =
        Arc::new(BundleDir::new(&args.bundle_dir).context("bundle directory")?);
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    // Fail early and clearly when the API server is unreachable or
    // forbids listing pods.
    let api: Api<Pod> = Api::all(client.clone());
    api.list(
        &kube::api::ListParams::default()
            .fields(&format!("spec.nodeName={}", args.node_name))
            .limit(1),
    )
    .await
    .context("listing pods on this node (RBAC: pods get/list/watch)")?;

    let opts = ProbeOptions {
        ring_buffer_bytes: args.ring_buffer_bytes,
        ..ProbeOptions::default()
    };
    let Capture {
        probes,
        mut reader,
        pool,
        engine,
    } = Capture::start(opts, args.host_proc.clone(), args.hash_workers)?;

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
            sink,
            fallback_dir: Arc::new(args.fallback_dir.clone()),
            filters: Arc::new(FilterConfig::default()),
        },
        probes,
        engine,
        attr,
        active: HashMap::new(),
        totals: Totals::default(),
    };
    let mut listed_once = false;
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
                let acts = match msg {
                    PodEvent::Apply(p) => st.attr.on_pod(p),
                    PodEvent::Delete(uid) => st.attr.on_pod_deleted(&uid, now),
                    PodEvent::Listed(uids) => {
                        if !listed_once {
                            listed_once = true;
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
                        tracing::warn!(error = %e, "pod watch error (retrying)");
                        Vec::new()
                    }
                };
                st.execute(acts);
            }
            _ = tick.tick() => {
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
                        },
                    );
                }
                Action::Resolved(meta) => {
                    let id = meta.cgroup_id;
                    if meta.started_before_agent {
                        // No exec seen: hold the namespace of a process
                        // that is in the container now.
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
                    tracing::info!(task = %meta.task_id(), role = meta.role, cgroup = id, "task resolved");
                    self.totals.tasks_started += 1;
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
        let sink = self.ctx.sink.clone();
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
            identify(
                &mut record,
                &meta,
                pod.as_deref(),
                exit_code,
                &node,
                first_ns,
                partial,
            );
            let task_id = meta.task_id();
            match crate::sinks::emit_or_keep(sink.as_ref(), &fallback_dir, &record) {
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
            pending.fetch_sub(1, Ordering::Relaxed);
        });
        Some(tx)
    }

    fn write_stats(&self, path: &Path) {
        let s = &self.attr.stats;
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
            "pods_known": self.attr.pods.len(),
            "policy_warnings": self.totals.warnings,
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
fn identify(
    record: &mut crate::records::Record,
    meta: &TaskMeta,
    pod: Option<&PodInfo>,
    exit_code: Option<i32>,
    node: &str,
    first_ns: u64,
    partial: Option<String>,
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
    let partial = partial.or_else(|| {
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
