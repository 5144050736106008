//! The command line: argument parsing for each command, which then calls
//! into its module (`local`, `daemon`, `sinks::bundle`), and the final error
//! line.

mod bundles;
mod collect;
mod daemon;
mod hash_budget;
mod run;

use clap::{Parser, Subcommand};

use crate::observability::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "roar-node",
    version,
    about = "eBPF provenance capture: one roar record per task, no wrapping"
)]
struct Cli {
    /// Log lines as text (for a terminal) or JSON, one object per line (for
    /// a log collector). RUST_LOG chooses which lines (default: warn).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = logging::LOG_FORMAT_ENV
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trace CMD and every process it starts; write one roar fragment
    /// bundle when they have all exited. Exits with CMD's exit code.
    Run(run::RunArgs),
    /// Trace the opted-in pods of this node (a DaemonSet's command): one
    /// roar fragment bundle per container run, in --bundle-dir.
    Daemon(Box<daemon::DaemonArgs>),
    /// Bundle directory tools (export, for collectors).
    Bundles(bundles::BundlesArgs),
    /// Gather the records of a workflow (or a namespace, or all) from an
    /// object store or from the cluster's daemons into a directory, for
    /// `roar k8s ingest-bundles DIR`.
    Collect(collect::CollectArgs),
}

/// A size: bytes, or with a unit (`500MB`, `10GiB`).
fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size (e.g. 500MB, 10GiB): {e}"))
}

/// Parses arguments, runs the command, returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roar-node: cannot start the runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Daemon(args) => daemon::run(*args).await,
            Command::Bundles(args) => bundles::run(args),
            Command::Collect(args) => collect::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("roar-node: {e:#}");
            // Distinguish our failures from the command's exit codes.
            125
        }
    }
}
