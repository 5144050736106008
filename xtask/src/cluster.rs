//! The local single-node Kubernetes cluster (deploy/k8s-local, the
//! project's copy of the shared k8s-local harness, with an image registry
//! on 127.0.0.1) and roar-node on it, installed with the Helm chart from
//! the registry: `cargo xtask cluster up|down|deploy|collect`.

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
    /// Build the roar-node image, push it to the cluster's registry,
    /// install or upgrade the Helm chart (deploy/chart/roar-node with
    /// deploy/k8s-local/values.yaml) and wait for the daemon to watch.
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

/// The cluster's registry (`host:port`): deploy/k8s-local/env.sh's
/// default, or $K8S_LOCAL_REGISTRY for both.
pub fn registry() -> String {
    std::env::var("K8S_LOCAL_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

pub fn up() -> anyhow::Result<()> {
    if is_up() {
        eprintln!("cluster: already up ({})", kubeconfig().display());
        return Ok(());
    }
    let h = harness();
    util::run(&mut Command::new(h.join("install-deps.sh")))?;
    util::run(&mut Command::new(h.join("build.sh")))?;
    // The sandbox image comes from the one image builder; up.sh pushes it
    // to the registry it starts, and containerd pulls it from there.
    let pause = image::pause_image(&root().join("target/images/pause.tar"))?;
    util::run(Command::new(h.join("up.sh")).env("K8S_LOCAL_PAUSE_IMAGE", &pause.tar))
}

pub fn down() -> anyhow::Result<()> {
    util::run(&mut Command::new(harness().join("down.sh")))
}

/// The namespace and release name the chart is installed with.
pub const NAMESPACE: &str = "roar-node";

/// The roar-node image in the cluster's registry: pushed as
/// `VERSION` and `VERSION-g<commit>`; the reference the chart gets.
pub struct Pushed {
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

pub fn push_roar_node() -> anyhow::Result<Pushed> {
    let bin = util::build_release()?;
    let img = image::roar_node_image(&bin, &root().join("target/images/roar-node.tar"))?;
    let repository = format!("{}/roar-node", registry());
    let tags = image::tags()?;
    let digest = image::push(&img, &repository, &tags)?;
    Ok(Pushed {
        repository,
        tag: tags[1].clone(),
        digest,
    })
}

/// The OSMO-shaped task image, pushed where the test pods pull it from.
pub fn push_osmo_image() -> anyhow::Result<()> {
    let img = image::osmo_image(&root().join("target/images/osmo-demo.tar"))?;
    let (repo, tag) = image::OSMO_IMAGE
        .rsplit_once(':')
        .expect("OSMO_IMAGE has a tag");
    image::push(&img, repo, &[tag.to_string()])?;
    Ok(())
}

/// The image in the registry, and the chart installed (or upgraded) with
/// the local cluster's values; then a daemon that watches.
pub fn deploy() -> anyhow::Result<()> {
    let img = push_roar_node()?;
    util::run(
        util::helm()?
            .env("KUBECONFIG", kubeconfig())
            .args(["upgrade", NAMESPACE])
            .arg(root().join("deploy/chart/roar-node"))
            .args(["--install", "--create-namespace", "--namespace", NAMESPACE])
            .arg("-f")
            .arg(harness().join("values.yaml"))
            .arg("--set")
            .arg(format!(
                "image.repository={},image.tag={},image.digest={}",
                img.repository, img.tag, img.digest
            )),
    )?;
    // A changed image rolls the DaemonSet: wait until every pod runs the
    // new one, or an old pod's "watching" would be taken for the new.
    util::run(kubectl().args([
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "daemonset/roar-node",
        "--timeout=180s",
    ]))?;
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

/// Gathers the bundles of every daemon pod into `out` with the user's
/// command, `roar-node collect --from cluster --all` (through the API
/// server, as `kubectl exec` does: the image needs no shell). Returns the
/// bundles by file name (none yet: empty).
pub fn collect(out: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let bin = util::build_release()?;
    let o = Command::new(&bin)
        .args(["collect", "--from", "cluster", "--all", "--quiet", "--out"])
        .arg(out)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .context("running roar-node collect")?;
    let said = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() && !said.contains("no records of") {
        bail!("roar-node collect --from cluster: {}", said.trim());
    }
    let mut all = BTreeMap::new();
    for e in fs::read_dir(out).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("roar-fragments-") && name.ends_with(".json") {
            let v: Value =
                serde_json::from_slice(&fs::read(e.path())?).with_context(|| name.clone())?;
            all.insert(name, v);
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

/// Everything the cluster end-to-end test needs: the cluster, roar-node
/// installed by the chart from the registry, the task image there too.
pub fn prepare_e2e() -> anyhow::Result<()> {
    up()?;
    deploy()?;
    push_osmo_image()
}
