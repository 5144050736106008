//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (event decoder,
//! cgroup path parser, path encoding, opt-in policy), each for a fixed time, starting from
//! the corpus committed in fuzz/corpus. Fails on the first crash, leaving
//! the input in fuzz/artifacts/<target>/.

use std::process::Command;

use anyhow::bail;

use crate::util::{self, root};

pub const TARGETS: &[&str] = &["event_decoder", "cgroup_path", "path_encoding", "policy"];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Only these targets.
    #[arg(value_delimiter = ',')]
    pub targets: Vec<String>,
    /// cargo-fuzz sanitizer: address (default) or none (faster to build
    /// and run; what the short run after the tests uses).
    #[arg(long, default_value = "address")]
    pub sanitizer: String,
}

/// cargo-fuzz, installed on first use (it is a cargo subcommand from
/// crates.io; the fuzz targets build with nightly and libFuzzer).
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if util::output(Command::new(env!("CARGO")).args(["fuzz", "--version"])).is_none() {
        util::run(Command::new(env!("CARGO")).args(["install", "--locked", "cargo-fuzz@0.13.2"]))?;
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!("unknown fuzz target {t}; targets: {}", TARGETS.join(", "));
    }
    let fuzz = |extra: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(root())
            // Fuzzing needs no eBPF object, and sanitizer flags must not
            // reach the eBPF build.
            .env("AYA_BUILD_SKIP", "1")
            .args(["+nightly", "fuzz"])
            .args(extra);
        c
    };
    let sanitizer = format!("--sanitizer={}", args.sanitizer);
    util::run(&mut fuzz(&["build", "-O", &sanitizer]))?;
    for t in targets {
        let corpus = root().join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let time = format!("-max_total_time={}", args.seconds);
        util::run(fuzz(&["run", "-O", t]).arg(&corpus).args([
            "--",
            &time,
            "-max_len=8192",
            "-print_final_stats=1",
        ]))?;
    }
    Ok(())
}
