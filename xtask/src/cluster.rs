//! The local single-node Kubernetes cluster (deploy/k8s-local, the
//! project's copy of the shared k8s-local harness) and the roar-node
//! DaemonSet on it: `cargo xtask cluster up|down|deploy|collect`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{
    image,
    util::{self, root},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Install dependencies, build Kubernetes v1.20.2 from Debian's source
    /// package (~6.5 min once, cached in ~/.cache/k8s-local), start the
    /// cluster (~15 s). Does nothing when it is already up.
    Up,
    /// Stop the cluster (~2-4 s).
    Down,
    /// Build the roar-node image, import it, apply deploy/overlays/k8s-local
    /// and wait for the daemon to watch.
    Deploy,
    /// Gather the bundles of every roar-node pod into a directory.
    Collect {
        #[arg(long, default_value = "target/k8s-bundles")]
        out: PathBuf,
    },
}

pub fn harness() -> PathBuf {
    root().join("deploy/k8s-local")
}

pub fn state_dir() -> PathBuf {
    std::env::var_os("K8S_LOCAL_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/k8s-local"))
}

pub fn kubeconfig() -> PathBuf {
    state_dir().join("kubeconfig")
}

pub fn kubectl() -> Command {
    let cache = std::env::var_os("K8S_LOCAL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/k8s-local")
        });
    let mut c = Command::new(cache.join("bin/kubectl"));
    c.arg("--kubeconfig").arg(kubeconfig());
    c
}

/// The API server answers.
pub fn is_up() -> bool {
    kubeconfig().exists() && util::output(kubectl().args(["get", "--raw", "/readyz"])).is_some()
}

pub fn up() -> anyhow::Result<()> {
    if is_up() {
        eprintln!("cluster: already up ({})", kubeconfig().display());
        return Ok(());
    }
    let h = harness();
    util::run(&mut Command::new(h.join("install-deps.sh")))?;
    util::run(&mut Command::new(h.join("build.sh")))?;
    util::run(&mut Command::new(h.join("up.sh")))
}

pub fn down() -> anyhow::Result<()> {
    util::run(&mut Command::new(harness().join("down.sh")))
}

/// Image, manifests, and a daemon that watches.
pub fn deploy() -> anyhow::Result<()> {
    let bin = util::build_release()?;
    let tar = root().join("target/images/roar-node.tar");
    image::roar_node_image(&bin, image::ROAR_NODE_REF, &tar)?;
    image::import(&tar)?;
    util::run(
        kubectl()
            .args(["apply", "-k"])
            .arg(root().join("deploy/overlays/k8s-local")),
    )?;
    // A new image under the same tag: restart the pods.
    let _ = util::output(kubectl().args([
        "-n",
        "roar-node",
        "delete",
        "pod",
        "-l",
        "app.kubernetes.io/name=roar-node",
        "--wait=false",
    ]));
    wait_daemon_ready(Duration::from_secs(120))
}

/// The daemon pods, by name.
pub fn daemon_pods() -> anyhow::Result<Vec<String>> {
    let out = util::output(kubectl().args([
        "-n",
        "roar-node",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=roar-node",
        "-o",
        "json",
    ]))
    .context("kubectl get pods")?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

fn pod_log(pod: &str) -> String {
    util::output(kubectl().args(["-n", "roar-node", "logs", pod])).unwrap_or_default()
}

/// Waits until one daemon pod per node logs that it is watching.
pub fn wait_daemon_ready(timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        for pod in daemon_pods()? {
            if pod_log(&pod).contains("watching") {
                eprintln!(
                    "cluster: roar-node pod {pod} is watching ({:.1}s)",
                    t0.elapsed().as_secs_f64()
                );
                return Ok(());
            }
        }
        if t0.elapsed() > timeout {
            let logs: Vec<String> = daemon_pods()?.iter().map(|p| pod_log(p)).collect();
            bail!(
                "roar-node is not watching after {timeout:?}; logs:\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Copies the bundles of every daemon pod into `out` (through
/// `kubectl exec ... roar-node bundles export`: works on any cluster, the
/// image needs no shell). Returns the bundles by file name.
pub fn collect(out: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    fs::create_dir_all(out)?;
    let mut all = BTreeMap::new();
    for pod in daemon_pods()? {
        let text = util::output(kubectl().args([
            "-n",
            "roar-node",
            "exec",
            &pod,
            "--",
            "/roar-node",
            "bundles",
            "export",
        ]))
        .with_context(|| format!("exporting bundles from {pod}"))?;
        let v: Value = serde_json::from_str(&text).with_context(|| pod.clone())?;
        if let Some(m) = v["bundles"].as_object() {
            for (name, bundle) in m {
                fs::write(out.join(name), serde_json::to_vec_pretty(bundle)?)?;
                all.insert(name.clone(), bundle.clone());
            }
        }
    }
    Ok(all)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Up => up(),
        Cmd::Down => down(),
        Cmd::Deploy => deploy(),
        Cmd::Collect { out } => {
            let out = if out.is_absolute() {
                out
            } else {
                root().join(out)
            };
            let n = collect(&out)?.len();
            eprintln!("collected {n} bundles into {}", out.display());
            Ok(())
        }
    }
}

/// Everything the cluster end-to-end test needs: the cluster, the
/// DaemonSet with this tree's binary, the task image.
pub fn prepare_e2e() -> anyhow::Result<()> {
    up()?;
    deploy()?;
    let tar = root().join("target/images/osmo-demo.tar");
    image::osmo_image(image::OSMO_IMAGE, &tar)?;
    image::import(&tar)
}
