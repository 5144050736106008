//! `cargo xtask <command>`: the project's developer workflows.

mod bench;
mod bench_flood;
mod cluster;
mod demo;
mod fuzz;
mod image;
mod k8s_demo;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a fresh machine lacks (idempotent): apt packages,
    /// rust-src for nightly, bpf-linker 0.13.0 on LLVM 22, bpffs/tracefs.
    Setup(setup::Args),
    /// Build, trace a two-step pipeline with `roar-node run`, show the
    /// bundles and the lineage graph roar makes of them.
    Demo(demo::Args),
    /// Run the whole test suite (as root: it loads real eBPF programs).
    Test(test::Args),
    /// Overhead against the plain run and roar's own tracers, the full
    /// record path, throughput and loss, memory (as root).
    Bench(bench::Args),
    /// One pod flooding opens against small pods on the local cluster:
    /// their record delay and loss, the daemon's peak memory (as root).
    BenchFlood(bench_flood::Args),
    /// Run the cargo-fuzz targets for a while each (10 min by default).
    Fuzz(fuzz::Args),
    /// Write an OCI image tarball (no Docker): the release roar-node
    /// without debug info and the libraries it links (or the demo's task
    /// image, or the local cluster's pause); `--push REPO` pushes it.
    Image(image::Args),
    /// The local single-node Kubernetes cluster: up, down, deploy, collect.
    Cluster(cluster::Args),
    /// End to end on a local cluster: cluster, image, DaemonSet, a
    /// two-task OSMO-shaped workflow, bundles, roar's lineage graph.
    Run(k8s_demo::Args),
    /// The cluster tests (tests/tests/k8s_*.rs: e2e, resilience,
    /// attribution, contract, chart, sink): cluster up if needed (~15 s; ~6.5 min the first time on a
    /// machine), images pushed to its registry, roar-node installed by the
    /// Helm chart, then the tests with ROAR_NODE_K8S=1.
    E2eK8s(test::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(a) => setup::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Test(a) => test::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchFlood(a) => bench_flood::run(a),
        Command::Fuzz(a) => fuzz::run(a),
        Command::Image(a) => image::run(a),
        Command::Cluster(a) => cluster::run(a),
        Command::Run(a) => k8s_demo::run(a),
        Command::E2eK8s(a) => test::run_k8s(a),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
