//! `cargo xtask <command>`: the project's developer workflows.

mod bench;
mod demo;
mod fuzz;
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
    /// Run the cargo-fuzz targets for a while each (10 min by default).
    Fuzz(fuzz::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(a) => setup::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Test(a) => test::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Fuzz(a) => fuzz::run(a),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
