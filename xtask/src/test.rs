//! The README's test command: every test, as root, with the release
//! binary, roar-cli 0.4.7 and Helm (helm-python-sdk) ready before the
//! suites start; the cluster tests on a local Kubernetes (built and
//! started if needed, roar-node installed by the chart from the cluster's
//! registry); then a short fuzzing run from the committed corpus.

use std::process::Command;

use anyhow::bail;

use crate::util::{self, build_release, is_root, roar_venv, root, s3_venv};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds each fuzz target runs after the tests (0: skip fuzzing).
    #[arg(long, default_value_t = 20)]
    pub fuzz_seconds: u64,
    /// Skip the cluster end-to-end test (it needs a local Kubernetes:
    /// ~6.5 min to build the first time on a machine, ~15 s to start).
    #[arg(long)]
    pub no_k8s: bool,
    /// Leave the local cluster running afterwards (it is stopped if this
    /// command started it).
    #[arg(long)]
    pub keep_cluster: bool,
    /// Extra arguments for `cargo test` (after `--`: for the test binaries).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<String>,
}

/// The cluster tests (`tests/tests/k8s_*.rs`): only these need the
/// cluster, so that without it every other suite runs and none skips.
pub const K8S_TESTS: [&str; 6] = [
    "k8s_e2e",
    "k8s_resilience",
    "k8s_attribution",
    "k8s_contract",
    "k8s_chart",
    "k8s_sink",
];

/// The end-to-end test targets that are not cluster tests.
fn local_tests() -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("tests/tests"))?
        .flatten()
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".rs")?
                .to_string();
            (!K8S_TESTS.contains(&name.as_str())).then_some(name)
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Which tests one `cargo test` runs.
enum Targets<'a> {
    /// Every test of the workspace.
    All,
    /// Every test but the end-to-end ones (`tests/`).
    AllButEndToEnd,
    /// These end-to-end test targets.
    Only(&'a [&'a str]),
}

/// `cargo test --release` with the binary, roar-cli, and (for the cluster
/// tests) the cluster's kubeconfig.
fn cargo_test(args: &Args, k8s: bool, targets: Targets<'_>) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the tests load eBPF programs and make cgroups: run them as root");
    }
    let bin = build_release()?;
    let venv = roar_venv()?;
    let s3_venv = s3_venv()?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root())
        .env("ROAR_NODE_BIN", &bin)
        .env("ROAR_VENV", &venv)
        .env("ROAR_NODE_S3_VENV", &s3_venv)
        // The chart tests render and lint with a real Helm.
        .env("HELM_VENV", util::helm_venv()?)
        .arg("test")
        .arg("--release");
    match targets {
        Targets::All => {
            cmd.arg("--workspace");
        }
        Targets::AllButEndToEnd => {
            cmd.args(["--workspace", "--exclude", "roar-node-tests"]);
        }
        Targets::Only(only) => {
            cmd.args(["-p", "roar-node-tests"]);
            for t in only {
                cmd.args(["--test", t]);
            }
        }
    }
    if k8s {
        cmd.env("ROAR_NODE_K8S", "1")
            .env("KUBECONFIG", crate::cluster::kubeconfig());
    }
    util::run(cmd.args(&args.cargo_args))
}

/// Every test; without the cluster, its tests are not run at all (they
/// would skip, and under CI a skipped test is a failure).
fn test_all(args: &Args, k8s: bool) -> anyhow::Result<()> {
    if k8s {
        return cargo_test(args, true, Targets::All);
    }
    cargo_test(args, false, Targets::AllButEndToEnd)?;
    let local = local_tests()?;
    let local: Vec<&str> = local.iter().map(String::as_str).collect();
    cargo_test(args, false, Targets::Only(&local))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let k8s = !args.no_k8s;
    let started_cluster = k8s && !crate::cluster::is_up();
    if k8s {
        crate::cluster::prepare_e2e()?;
    }
    let tested = test_all(&args, k8s);
    if started_cluster && !args.keep_cluster {
        // It costs CPU (benchmarks would feel it); CI machines are thrown
        // away anyway.
        let _ = crate::cluster::down();
    }
    tested?;
    if args.fuzz_seconds > 0 {
        // A short run from the committed corpus: catches regressions on
        // inputs the long runs already found interesting.
        crate::fuzz::run(crate::fuzz::Args {
            seconds: args.fuzz_seconds,
            targets: Vec::new(),
            sanitizer: "none".into(),
        })?;
    }
    Ok(())
}

/// The cluster tests alone (the cluster is left running).
pub fn run_k8s(args: Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the cluster test runs a local Kubernetes cluster: run it as root");
    }
    crate::cluster::prepare_e2e()?;
    cargo_test(&args, true, Targets::Only(&K8S_TESTS))
}
