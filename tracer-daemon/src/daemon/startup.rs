//! From nothing to a running loop: the policy, the spool (what a previous
//! roar-node left: undelivered records are delivered, running tasks
//! resumed), the programs, the host's cgroup tree, and the pod watch.
//!
//! A node roar-node cannot serve (no cgroup v2, no BTF, a kernel that
//! refuses the programs, missing capabilities) does not make the daemon
//! exit: it stays up, not ready, with the reason in `/readyz`, the log and
//! `roar_node_node_supported`, so the DaemonSet does not restart it hot.

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use roar_node_common::traced::TRACE_NO_SUPPRESS;
use tokio::sync::mpsc;

use super::{
    Config, Ctx, PolicySource, State,
    lifecycle::Orphans,
    reporting::Counters,
    watch::{self, ApiState, PodEvent},
};
use crate::{
    attribution::{
        Action, Attributor, cgroup_path,
        policy::{Policy, PolicyDir},
    },
    capture::Capture,
    engine::TaskHome,
    events::{CgroupChange, reader::EventReader},
    observability::{Health, Metrics},
    probes::ProbeOptions,
    records::path_filters::PathFilterConfig,
    sinks::{
        Delivery,
        bundle::LocalCopies,
        make_sink,
        spool::{Recovered, SharedSpool},
    },
};

pub(super) struct Started {
    pub(super) state: State,
    pub(super) reader: EventReader,
    pub(super) pod_rx: mpsc::Receiver<PodEvent>,
}

/// Starts everything; `None` when this node cannot be served (said in
/// `/readyz`, the log and the metrics).
pub(super) async fn start(
    config: &Config,
    health: &Health,
    metrics: &Metrics,
) -> anyhow::Result<Option<Started>> {
    let (policy, policy_dir) = load_policy(&config.policy)?;
    tracing::info!(policy = %policy.describe(), "policy");
    let cgroot = match cgroup_path::resolve_host_cgroup2_root(&config.host_cgroup) {
        Ok(root) => root,
        Err(e) => return unsupported(health, metrics, e.into()),
    };
    let (spool, recovered) = open_spool(config)?;
    let delivery = Arc::new(make_delivery(config, &spool)?);
    match delivery.check() {
        // A previous daemon's records: nobody else is delivering them.
        Ok(()) => delivery.deliver_spooled(std::time::Duration::ZERO),
        Err(e) => {
            // Tracing goes on: records wait in the spool for the sink.
            tracing::error!(sink = %delivery.describe(), error = %e, "the sink refuses records: tracing goes on, records wait in the spool (see /readyz)");
            health.set_sink_problem(Some(e.to_string()));
        }
    }
    let client = watch::kube_client(config.kubeconfig.as_deref()).await?;
    let api_reachable = watch::api_reachable(&client, &config.node_name).await;

    let opts = ProbeOptions {
        ring_buffer_bytes: config.ring_buffer_bytes,
        pin_dir: config.pin_dir.clone(),
        ..ProbeOptions::default()
    };
    let capture = match Capture::start(
        opts,
        config.host_proc.clone(),
        config.hash_workers,
        config.hash_budget,
        config.limits,
        // Containers' files are never in our view: one whose opener's
        // namespace is unknown is reported unhashed, not looked up here.
        TaskHome::Foreign,
    ) {
        Ok(c) => c,
        Err(e) => return unsupported(health, metrics, e),
    };
    health.set_programs_attached(true);
    metrics.node_supported.set(1);
    note_adoption(&capture, &spool, &recovered, config);

    let mut attr = Attributor::new(policy);
    walk_cgroups(&mut attr, &cgroot)?;
    let (resume_acts, resumed, orphans) = resume(
        &mut attr,
        recovered.open_tasks,
        recovered.checkpoints,
        recovered.rebooted,
        capture.probes.adopted,
    );

    let (pod_rx, held) = start_pod_watch(config, client);
    let parts = Parts {
        cgroot: cgroot.clone(),
        capture,
        attr,
        delivery,
        spool,
        orphans,
        policy_dir,
        api_reachable,
        watch_held: held,
        recovered_damage: (recovered.corrupt_entries, recovered.torn_bytes),
    };
    let (mut state, reader) = State::new(config, parts);
    state.execute(resume_acts);
    // Their state as last checkpointed, before any new event is applied.
    for c in resumed {
        if let Some(s) = &c.state {
            state.engine.restore(c.cgroup_id, s);
        }
    }
    tracing::info!(
        node = %config.node_name,
        cgroup2_root = %cgroot.display(),
        sink = %state.delivery.describe(),
        "tracing"
    );
    Ok(Some(Started {
        state,
        reader,
        pod_rx,
    }))
}

/// The pod watch, and whether its test-only hold holds it.
fn start_pod_watch(
    config: &Config,
    client: kube::Client,
) -> (mpsc::Receiver<PodEvent>, Arc<std::sync::atomic::AtomicBool>) {
    let (tx, pod_rx) = mpsc::channel(1024);
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hold = config.test_hold_pod_watch.clone().map(|file| watch::Hold {
        file,
        held: held.clone(),
    });
    watch::spawn_pod_watch(client, config.node_name.clone(), tx, hold);
    (pod_rx, held)
}

/// What start-up made, before it is one `State`.
struct Parts {
    cgroot: std::path::PathBuf,
    capture: Capture<super::lifecycle::Lifecycle>,
    attr: Attributor,
    delivery: Arc<Delivery>,
    spool: SharedSpool,
    orphans: Orphans,
    policy_dir: Option<PolicyDir>,
    api_reachable: bool,
    watch_held: Arc<std::sync::atomic::AtomicBool>,
    /// Damaged entries and torn bytes found in the spool.
    recovered_damage: (u64, u64),
}

impl State {
    fn new(config: &Config, p: Parts) -> (Self, EventReader) {
        let Capture {
            probes,
            reader,
            pool,
            engine,
        } = p.capture;
        let state = State {
            ctx: Ctx {
                cgroot: p.cgroot,
                host_proc: config.host_proc.clone(),
                node: config.node_name.clone(),
                grace: config.grace,
                status_wait: config.status_wait,
                pending_grace: config.pending_grace,
                trace_flags: if config.no_suppress {
                    TRACE_NO_SUPPRESS
                } else {
                    0
                },
                pool,
                filters: Arc::new(PathFilterConfig::default()),
                stats_file: config.stats_file.clone(),
            },
            probes,
            engine,
            attr: p.attr,
            delivery: p.delivery,
            spool: p.spool,
            orphans: p.orphans,
            policy_dir: p.policy_dir,
            api: ApiState {
                reachable: p.api_reachable,
                watch_healthy: p.api_reachable,
                held: p.watch_held,
                ..ApiState::default()
            },
            recovery: Default::default(),
            counters: Counters {
                spool_damaged: p.recovered_damage.0,
                spool_torn_bytes: p.recovered_damage.1,
                ..Counters::default()
            },
            started: Instant::now(),
            seconds: 0,
        };
        (state, reader)
    }
}

fn load_policy(source: &PolicySource) -> anyhow::Result<(Policy, Option<PolicyDir>)> {
    match source {
        PolicySource::Dir(dir) => {
            let mut pd = PolicyDir::new(dir.clone());
            // The first poll always reads the directory.
            let policy = pd
                .poll()
                .unwrap_or_else(|| Policy::from_dir(dir))
                .map_err(anyhow::Error::msg)?;
            Ok((policy, Some(pd)))
        }
        PolicySource::Settings {
            namespaces,
            selectors,
            presets,
        } => {
            let policy = Policy::from_settings(namespaces, selectors, presets)
                .map_err(anyhow::Error::msg)
                .context("policy")?;
            Ok((policy, None))
        }
    }
}

/// Delivery to the configured sink, through the spool; with an object
/// sink, copies kept in the bundle directory up to their budget.
fn make_delivery(config: &Config, spool: &SharedSpool) -> anyhow::Result<Delivery> {
    let s = &config.sinks;
    let sink = make_sink(s.url.as_deref(), &config.bundle_dir, s.bundle_dir_max_bytes)
        .context("bundle directory")?;
    let copies = match s.url {
        Some(_) => LocalCopies::new(&config.bundle_dir, s.keep_local_bytes, s.keep_local_age)
            .context("bundle directory (local copies)")?,
        None => None,
    };
    Ok(Delivery::new(sink, config.fallback_dir.clone())
        .with_spool(spool.clone(), s.budgets)
        .with_local_copies(copies))
}

/// Opens the spool and says what a previous roar-node left in it.
fn open_spool(config: &Config) -> anyhow::Result<(SharedSpool, Recovered)> {
    let (spool, recovered) =
        SharedSpool::open(&config.spool_dir, &config.node_name).context("opening the spool")?;
    if recovered.corrupt_entries > 0 || recovered.torn_bytes > 0 {
        tracing::error!(
            corrupt_entries = recovered.corrupt_entries,
            torn_bytes = recovered.torn_bytes,
            spool = %spool.lock().path().display(),
            "the spool had damaged entries: skipped (a torn last entry is a crash mid-write)"
        );
    }
    tracing::info!(
        undelivered = recovered.undelivered.len(),
        open_tasks = recovered.open_tasks.len(),
        rebooted = recovered.rebooted,
        "spool replayed"
    );
    Ok((spool, recovered))
}

/// Capture went on while no daemon ran (programs adopted from their pins):
/// the gaps of the resumed tasks end where the dead daemon's last
/// heartbeat was.
fn note_adoption<L>(
    capture: &Capture<L>,
    spool: &SharedSpool,
    recovered: &Recovered,
    config: &Config,
) {
    let probes = &capture.probes;
    if probes.adopted {
        if let Some(alive) = recovered.last_alive_ns {
            spool.lock().capture_continued(alive);
        }
        tracing::info!(pins = ?config.pin_dir, "adopted the pinned programs of a previous roar-node: capture went on while it was down");
    }
    if let Some(e) = &probes.pin_error {
        tracing::warn!(error = %e, "programs not pinned: after a crash, capture stops until the daemon is back");
    }
}

/// The cgroups made before the programs were attached (those made since
/// are reported by the kernel).
fn walk_cgroups(attr: &mut Attributor, cgroot: &std::path::Path) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut walked = 0usize;
    for dir in cgroup_path::walk(cgroot)? {
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
    tracing::info!(cgroups = walked, ms = t0.elapsed().as_millis() as u64, root = %cgroot.display(), "walked the host cgroup2 tree");
    Ok(())
}

/// Tasks a previous roar-node was tracing: the ones still running are
/// traced again now, before any pod is known; with the programs adopted,
/// ended ones too (their last events are in the ring buffer). The others
/// ended while no roar-node ran: orphans, recorded from their checkpoint
/// once their pods are known.
fn resume(
    attr: &mut Attributor,
    open_tasks: Vec<crate::proto::TaskOpened>,
    mut checkpoints: std::collections::BTreeMap<String, crate::proto::TaskCheckpoint>,
    rebooted: bool,
    adopted: bool,
) -> (Vec<Action>, Vec<crate::proto::TaskCheckpoint>, Orphans) {
    let mut acts = Vec::new();
    let mut resumed = Vec::new();
    let mut orphans = Vec::new();
    for t in open_tasks {
        let found = if rebooted {
            Vec::new()
        } else if adopted {
            attr.resume_gone(t.cgroup_id, &t.cgroup_path, Instant::now())
        } else {
            attr.resume(t.cgroup_id)
        };
        if found.is_empty() {
            orphans.push(t);
            continue;
        }
        tracing::info!(task = %t.task_id, cgroup = t.cgroup_id, checkpoint = checkpoints.contains_key(&t.task_id), "resuming a task a previous roar-node traced");
        acts.extend(found);
        if let Some(c) = checkpoints.remove(&t.task_id) {
            resumed.push(c);
        }
    }
    (
        acts,
        resumed,
        Orphans {
            tasks: orphans,
            checkpoints,
        },
    )
}

/// This node cannot be traced: say so everywhere an operator looks.
fn unsupported(
    health: &Health,
    metrics: &Metrics,
    e: anyhow::Error,
) -> anyhow::Result<Option<Started>> {
    let why = format!("{e:#}");
    tracing::error!(reason = %why, "roar-node cannot trace on this node; staying up, not ready (see /readyz)");
    health.set_unsupported(why);
    metrics.node_supported.set(0);
    Ok(None)
}

/// Keeps the daemon alive (answering probes, not ready) until it is
/// stopped: restarting would fail the same way.
pub(super) async fn idle_until_stopped(health: &Health) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => health.beat(),
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}
