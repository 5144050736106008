//! The README's test command: every test, as root, with the release
//! binary and roar-cli 0.4.7 ready before the suites start.

use std::process::Command;

use anyhow::bail;

use crate::util::{self, build_release, is_root, roar_venv, root};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds each fuzz target runs after the tests (0: skip fuzzing).
    #[arg(long, default_value_t = 20)]
    pub fuzz_seconds: u64,
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

pub fn run(args: Args) -> anyhow::Result<()> {
    let fuzz_seconds = args.fuzz_seconds;
    run_tests(args)?;
    if fuzz_seconds > 0 {
        // A short run from the committed corpus: catches regressions on
        // inputs the long runs already found interesting.
        crate::fuzz::run(crate::fuzz::Args {
            seconds: fuzz_seconds,
            targets: Vec::new(),
            sanitizer: "none".into(),
        })?;
    }
    Ok(())
}
