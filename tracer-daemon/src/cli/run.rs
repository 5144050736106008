//! `roar-node run -- CMD`: arguments, and the one summary line.

use std::{ffi::OsString, path::PathBuf};

use clap::Args;

use super::hash_budget::HashBudgetArgs;
use crate::{local, records::path_filters::PathFilterConfig};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Directory the bundle is written to.
    #[arg(long, default_value = "./roar-bundles", env = "ROAR_NODE_BUNDLE_DIR")]
    bundle_dir: PathBuf,
    /// Put the record into an object store instead of --bundle-dir:
    /// `s3://BUCKET/PREFIX`, `gs://`, `az://`, `file:///DIR` (as the
    /// daemon's --sink; a local run can share a bucket with a cluster).
    #[arg(long, env = "ROAR_NODE_SINK", value_name = "URL")]
    sink: Option<String>,
    /// With --sink: file the record under this workflow id in the store
    /// (`PREFIX/-/<WF_ID>/…`), so `roar-node collect --workflow` finds it
    /// with the cluster's records of that workflow.
    #[arg(long, value_name = "WF_ID", requires = "sink")]
    workflow: Option<String>,
    /// Where the record is kept if the bundle directory cannot take it
    /// (full, read-only, removed while the command ran).
    #[arg(long, default_value = "/var/tmp/roar-node-unsent", value_name = "DIR")]
    fallback_dir: PathBuf,
    /// Task name in the record (default: the command line).
    #[arg(long)]
    name: Option<String>,
    /// Ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = 8 << 20)]
    ring_buffer_bytes: u32,
    /// Report every open, not only the first read and first write of a
    /// file (more events; for debugging and benchmarks).
    #[arg(long)]
    no_suppress: bool,
    /// File filters as JSON (fields of `PathFilterConfig`; missing fields keep
    /// roar's defaults), e.g. `{"ignore_tmp_files": false}`.
    #[arg(long, value_name = "FILE")]
    filters: Option<PathBuf>,
    /// Leave out paths with this prefix (absolute) or containing it (repeatable).
    #[arg(long, value_name = "PATH")]
    ignore_path: Vec<String>,
    /// Always keep paths with this prefix, whatever else matches (repeatable).
    #[arg(long, value_name = "PATH")]
    keep_path: Vec<String>,
    #[command(flatten)]
    hash_budget: HashBudgetArgs,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Also print the record to stdout after CMD's own output.
    #[arg(long)]
    print_record: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

impl RunArgs {
    fn into_config(self) -> anyhow::Result<local::Config> {
        Ok(local::Config {
            filters: PathFilterConfig::load(
                self.filters.as_deref(),
                &self.ignore_path,
                &self.keep_path,
            )?,
            bundle_dir: self.bundle_dir,
            sink: self.sink,
            workflow: self.workflow,
            fallback_dir: self.fallback_dir,
            name: self.name,
            ring_buffer_bytes: self.ring_buffer_bytes,
            no_suppress: self.no_suppress,
            hash_budget: self.hash_budget.budget()?,
            quiet: self.quiet,
            command: self.command,
        })
    }
}

/// Runs the command; prints the summary line (and the record if asked).
pub(super) async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let (quiet, print_record) = (args.quiet, args.print_record);
    let out = local::run(args.into_config()?).await?;
    let s = &out.record.summary;
    if !quiet {
        eprintln!(
            "roar-node: {} processes, {} reads, {} writes, {} events, {} lost, {:.2}s -> {}",
            s.processes,
            s.reads,
            s.writes,
            s.events,
            s.lost,
            out.elapsed.as_secs_f64(),
            out.at
        );
        if s.lost > 0 {
            eprintln!(
                "roar-node: warning: {} events were lost; the record is marked partial",
                s.lost
            );
        }
    }
    if print_record {
        println!("{}", serde_json::to_string_pretty(&out.record.fragment)?);
    }
    Ok(out.exit_code)
}
