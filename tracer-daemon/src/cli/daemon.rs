//! `roar-node daemon`: arguments (flags and their environment variables).

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::hash_budget::HashBudgetArgs;
use crate::{
    daemon::{self, PolicySource},
    observability,
    tasks::TaskLimits,
};

#[derive(Debug, Args)]
pub(crate) struct DaemonArgs {
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// A kubeconfig file; without it, the in-cluster configuration.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Where bundles are written (a hostPath in a DaemonSet).
    #[arg(
        long,
        default_value = "/var/lib/roar-node/bundles",
        env = "ROAR_NODE_BUNDLE_DIR"
    )]
    bundle_dir: PathBuf,
    /// Where records go: an object store, `s3://BUCKET/PREFIX` (also
    /// S3-compatible endpoints: AWS_ENDPOINT_URL), `gs://`, `az://`, or
    /// `file:///DIR`, with the cloud's standard credentials (environment,
    /// IRSA / workload identity, instance metadata). Without it, the
    /// bundle directory.
    #[arg(long, env = "ROAR_NODE_SINK", value_name = "URL")]
    sink: Option<String>,
    /// Without --sink: the most the bundle directory may hold (e.g.
    /// `10GiB`); a record that would pass it waits in the spool, reported
    /// in /metrics, until the directory is collected.
    #[arg(long, env = "ROAR_NODE_BUNDLE_DIR_MAX_BYTES", value_parser = super::parse_size)]
    bundle_dir_max_bytes: Option<u64>,
    /// Records waiting for the sink the spool may hold; past it new
    /// records go straight to the sink or, refused, to --fallback-dir
    /// (counted); the waiting ones are never dropped.
    #[arg(long, default_value = "2GiB", env = "ROAR_NODE_SPOOL_MAX_BYTES", value_parser = super::parse_size)]
    spool_max_bytes: u64,
    /// With --sink: copies of delivered records kept in --bundle-dir, up
    /// to this size (0, the default: none; the spool's copy goes once the
    /// store confirmed it).
    #[arg(long, default_value = "0", env = "ROAR_NODE_KEEP_LOCAL_BYTES", value_parser = super::parse_size)]
    keep_local_bytes: u64,
    /// With --keep-local-bytes: copies older than this go too (e.g. `7d`).
    #[arg(long, env = "ROAR_NODE_KEEP_LOCAL_AGE", value_parser = humantime::parse_duration)]
    keep_local_age: Option<Duration>,
    /// Where a record is kept if the bundle directory cannot take it (full,
    /// read-only): on the node's state volume, never lost.
    #[arg(
        long,
        default_value = "/var/lib/roar-node/unsent",
        env = "ROAR_NODE_FALLBACK_DIR"
    )]
    fallback_dir: PathBuf,
    /// The durable spool: tasks being traced and records not yet
    /// delivered survive a crash here (on the node's state volume).
    #[arg(
        long,
        default_value = "/var/lib/roar-node/spool",
        env = "ROAR_NODE_SPOOL_DIR"
    )]
    spool_dir: PathBuf,
    /// The policy as a mounted ConfigMap (files `namespaces`, `selectors`,
    /// `presets`), re-read when it changes; an invalid update is reported
    /// and the policy in force is kept. Replaces --namespace, --selector
    /// and --preset.
    #[arg(long, env = "ROAR_NODE_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = observability::DEFAULT_METRICS_ADDR, env = observability::METRICS_ADDR_ENV)]
    metrics_addr: std::net::SocketAddr,
    /// Counters (events, queues, unattributed), rewritten every second.
    #[arg(long, env = "ROAR_NODE_STATS_FILE")]
    stats_file: Option<PathBuf>,
    /// The host's cgroup tree (`/sys/fs/cgroup`, or its v2 mount; on a
    /// hybrid host its `unified/` is used).
    #[arg(long, default_value = "/sys/fs/cgroup", env = "ROAR_NODE_HOST_CGROUP")]
    host_cgroup: PathBuf,
    /// The host's /proc (mounted elsewhere in a pod: runc refuses /proc).
    #[arg(long, default_value = "/proc", env = "ROAR_NODE_HOST_PROC")]
    host_proc: PathBuf,
    /// Trace every pod of these namespaces (comma-separated).
    #[arg(long = "namespace", env = "ROAR_NODE_NAMESPACES")]
    namespaces: Vec<String>,
    /// Trace pods matching this label selector (`a=b,c!=d,e,!f`; several
    /// separated by `;`).
    #[arg(long = "selector", env = "ROAR_NODE_SELECTORS")]
    selectors: Vec<String>,
    /// Built-in selections: `osmo` (every pod with an osmo.task_uuid label).
    #[arg(long = "preset", env = "ROAR_NODE_PRESETS")]
    presets: Vec<String>,
    /// How long a task stays open after its cgroup was removed. Its
    /// processes are all gone then and their events already in the ring
    /// buffer, ahead of the removal: 0 closes it at once, which matters
    /// for outputs in emptyDir volumes (the kubelet deletes them soon
    /// after the pod ends).
    #[arg(long, default_value_t = 0, env = "ROAR_NODE_GRACE_MS")]
    grace_ms: u64,
    /// How long to wait for the API server to report a container's exit
    /// once its cgroup is gone, before taking the exit code from the
    /// kernel.
    #[arg(long, default_value_t = 15, env = "ROAR_NODE_STATUS_WAIT_SECS")]
    status_wait_secs: u64,
    /// How long a removed container cgroup waits for its pod to name it,
    /// counted only while the pod watch delivers (a lagging or failing
    /// watch could not have named it), before it is dropped and its events
    /// counted as unattributed.
    #[arg(long, default_value_t = 120, env = "ROAR_NODE_PENDING_GRACE_SECS")]
    pending_grace_secs: u64,
    /// Tests only: while this file exists, the pod watch's events are held
    /// back, as a watch lagging behind the kubelet would hold them.
    #[arg(long, hide = true, env = "ROAR_NODE_TEST_HOLD_POD_WATCH")]
    test_hold_pod_watch: Option<PathBuf>,
    /// Pin the programs and maps here (a directory on the host's bpffs):
    /// after a crash they stay attached, capture goes on, and the next
    /// daemon adopts them. Removed on a normal stop. Without it, capture
    /// stops while no daemon runs.
    #[arg(long, env = "ROAR_NODE_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// Paths one task may hold; more are counted (`files_over_cap`) and
    /// the record is partial. With --max-files-total, what bounds the
    /// daemon's memory: about 1.5 KiB per path at the peak (a record being
    /// built), measured by `cargo xtask bench-flood`.
    #[arg(long, default_value_t = 400_000, env = "ROAR_NODE_MAX_FILES_PER_TASK")]
    max_files_per_task: usize,
    /// Paths all tasks together may hold.
    #[arg(long, default_value_t = 500_000, env = "ROAR_NODE_MAX_FILES_TOTAL")]
    max_files_total: usize,
    /// Ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = 16 << 20, env = "ROAR_NODE_RING_BUFFER_BYTES")]
    ring_buffer_bytes: u32,
    /// Report every open (debugging, benchmarks).
    #[arg(long)]
    no_suppress: bool,
    /// Hashing threads.
    #[arg(long, default_value_t = 2, env = "ROAR_NODE_HASH_WORKERS")]
    hash_workers: usize,
    #[command(flatten)]
    hash_budget: HashBudgetArgs,
}

impl DaemonArgs {
    fn into_config(self) -> anyhow::Result<daemon::Config> {
        let policy = match self.policy_dir {
            Some(dir) => PolicySource::Dir(dir),
            None => PolicySource::Settings {
                namespaces: self.namespaces,
                selectors: self.selectors,
                presets: self.presets,
            },
        };
        Ok(daemon::Config {
            hash_budget: self.hash_budget.budget()?,
            node_name: self.node_name,
            kubeconfig: self.kubeconfig,
            bundle_dir: self.bundle_dir,
            fallback_dir: self.fallback_dir,
            sinks: daemon::SinkConfig {
                url: self.sink,
                bundle_dir_max_bytes: self.bundle_dir_max_bytes,
                keep_local_bytes: self.keep_local_bytes,
                keep_local_age: self.keep_local_age,
                budgets: crate::sinks::Budgets {
                    spool_bytes: self.spool_max_bytes,
                },
            },
            spool_dir: self.spool_dir,
            policy,
            metrics_addr: self.metrics_addr,
            stats_file: self.stats_file,
            host_cgroup: self.host_cgroup,
            host_proc: self.host_proc,
            grace: Duration::from_millis(self.grace_ms),
            status_wait: Duration::from_secs(self.status_wait_secs),
            pending_grace: Duration::from_secs(self.pending_grace_secs),
            test_hold_pod_watch: self.test_hold_pod_watch,
            pin_dir: self.pin_dir,
            limits: TaskLimits {
                max_files: self.max_files_per_task,
                max_files_total: self.max_files_total,
                ..TaskLimits::default()
            },
            ring_buffer_bytes: self.ring_buffer_bytes,
            no_suppress: self.no_suppress,
            hash_workers: self.hash_workers,
        })
    }
}

pub(super) async fn run(args: DaemonArgs) -> anyhow::Result<i32> {
    daemon::run(args.into_config()?).await
}
