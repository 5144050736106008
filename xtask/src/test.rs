//! The README's test command: every test, as root, with the release
//! binary and roar-cli 0.4.7 ready before the suites start.

use std::process::Command;

use anyhow::bail;

use crate::util::{self, build_release, is_root, roar_venv, root};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (after `--`: for the test binaries).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<String>,
}

pub fn run_tests(args: Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the tests load eBPF programs and make cgroups: run them as root");
    }
    let bin = build_release()?;
    let venv = roar_venv()?;
    util::run(
        Command::new(env!("CARGO"))
            .current_dir(root())
            .env("ROAR_NODE_BIN", &bin)
            .env("ROAR_VENV", &venv)
            .args(["test", "--release", "--workspace"])
            .args(&args.cargo_args),
    )
}

/// `cargo xtask test` also runs the cluster test when ROAR_NODE_K8S=1 is
/// set (it then prepares the cluster first); otherwise that test skips.
pub fn run(args: Args) -> anyhow::Result<()> {
    if std::env::var("ROAR_NODE_K8S").as_deref() == Ok("1") {
        crate::cluster::prepare_e2e()?;
    }
    run_tests(args)
}

/// The cluster end-to-end test alone.
pub fn run_k8s(args: Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the cluster test runs a local Kubernetes cluster: run it as root");
    }
    crate::cluster::prepare_e2e()?;
    let bin = build_release()?;
    let venv = roar_venv()?;
    util::run(
        Command::new(env!("CARGO"))
            .current_dir(root())
            .env("ROAR_NODE_BIN", &bin)
            .env("ROAR_VENV", &venv)
            .env("ROAR_NODE_K8S", "1")
            .env("KUBECONFIG", crate::cluster::kubeconfig())
            .args([
                "test",
                "--release",
                "-p",
                "roar-node-tests",
                "--test",
                "k8s_e2e",
            ])
            .args(["--", "--nocapture"])
            .args(&args.cargo_args),
    )
}
