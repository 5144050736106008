//! `cargo xtask bench`: overhead of roar-node against the plain run and
//! against roar-cli 0.4.7's own tracers, the full record path against
//! `roar run`, the sustainable event rate, and the tracer's memory.
//!
//! Noise control: variants alternate inside each round (rotating which
//! goes first), every figure is a median of `--runs` runs, and every
//! figure is a ratio to the plain run measured in the same invocation.

mod report;
mod variants;
mod workloads;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;

use self::{
    variants::{Background, Runner, Sample, Variant},
    workloads::{Sizes, Workload},
};
use crate::util::{self, build_release, is_root, roar_venv};

#[derive(clap::Args)]
pub struct Args {
    /// Runs per variant and workload (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only these workloads (open_close, small_files, big_read, fork_exec,
    /// python_training).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these variants (plain is always run): traced, untraced,
    /// syscall_tracing_floor, roar_ebpf, roar_preload, roar_ptrace.
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// Skip the full-path, throughput and memory parts.
    #[arg(long)]
    overhead_only: bool,
    /// Small sizes and one run: checks the harness, not the figures.
    #[arg(long)]
    quick: bool,
    /// Seconds per rate in the throughput sweep.
    #[arg(long, default_value_t = 3.0)]
    rate_seconds: f64,
}

#[derive(Serialize)]
pub struct WorkloadResult {
    name: String,
    what: String,
    argv: Vec<String>,
    samples: BTreeMap<&'static str, Vec<Sample>>,
    /// Median workload seconds per variant.
    median_s: BTreeMap<&'static str, f64>,
    /// Median over plain's median.
    ratio: BTreeMap<&'static str, f64>,
    /// Largest loss any roar-node run of this workload reported.
    roar_node_lost_max: u64,
}

#[derive(Serialize)]
pub struct FullPath {
    files: u64,
    plain_s: Vec<f64>,
    roar_node_run_s: Vec<f64>,
    roar_run_s: Vec<f64>,
    roar_node_ratio: f64,
    roar_run_ratio: f64,
}

#[derive(Serialize)]
pub struct RatePoint {
    target_per_s: u64,
    achieved_per_s: f64,
    opens: u64,
    open_events: u64,
    lost: u64,
    tracer_cpu_percent: f64,
    tracer_max_rss_mib: f64,
}

#[derive(Serialize)]
pub struct Memory {
    idle_rss_mib: f64,
    idle_peak_rss_mib: f64,
}

#[derive(Serialize)]
pub struct Results {
    machine: BTreeMap<&'static str, String>,
    runs: usize,
    quick: bool,
    workloads: Vec<WorkloadResult>,
    full_path: Option<FullPath>,
    throughput: Vec<RatePoint>,
    memory: Memory,
    targets: Vec<report::Target>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs: run as root");
    }
    let started = Instant::now();
    let roar_node = build_release()?;
    let base = util::root().join("target/bench");
    let tools = workloads::build_tools(&base.join("bin"))?;
    let venv = roar_venv()?;
    let roar_tracers = find_roar_tracers(&venv)?;
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let runs = if args.quick { 1 } else { args.runs.max(1) };
    let work = base.join("work");
    // Files the workloads write go to tmpfs: disk writeback of one run's
    // files (and of their deletion) would land in the next run's time.
    let tmpfs = PathBuf::from("/dev/shm/roar-node-bench");
    let all = workloads::prepare(&tools, &base.join("data"), &tmpfs, &sizes)?;
    let chosen: Vec<&Workload> = all
        .iter()
        .filter(|w| args.only.is_empty() || args.only.iter().any(|o| o == w.name))
        .collect();
    if chosen.is_empty() {
        bail!("--only matched no workload");
    }
    let runner = Runner {
        roar_node: roar_node.clone(),
        benchtime: tools.benchtime.clone(),
        roar_tracers,
        scratch: work.join("scratch"),
    };
    fs::create_dir_all(&runner.scratch)?;

    let mut samples: Vec<BTreeMap<&'static str, Vec<Sample>>> = vec![BTreeMap::new(); chosen.len()];
    for round in 0..runs {
        for (wi, w) in chosen.iter().enumerate() {
            // Rotate the order so no variant always runs first (cold) or
            // right after another's tear-down.
            let mut order: Vec<Variant> = Variant::ALL
                .into_iter()
                .filter(|v| {
                    *v == Variant::Plain
                        || args.variants.is_empty()
                        || args.variants.iter().any(|k| k == v.key())
                })
                .collect();
            let n = order.len();
            order.rotate_left(round % n);
            for v in order {
                w.reset()?;
                let s = runner.run(v, &w.argv)?;
                eprintln!(
                    "bench: round {}/{runs} {:<16} {:<21} {:>9.4}s (total {:.3}s){}",
                    round + 1,
                    w.name,
                    v.label(),
                    s.workload_s,
                    s.total_s,
                    s.lost.map(|l| format!(" lost {l}")).unwrap_or_default()
                );
                samples[wi].entry(v.key()).or_default().push(s);
            }
        }
    }
    let workloads: Vec<WorkloadResult> = chosen
        .iter()
        .zip(samples)
        .map(|(w, samples)| summarize(w, samples))
        .collect();

    let full_path = if !args.overhead_only
        && (args.only.is_empty() || args.only.iter().any(|o| o == "small_files"))
    {
        // A full `roar run` of 5,000 files takes about a minute here: three
        // runs bound the bench's time (its ratio is tens, not hundredths).
        Some(full_path(
            &runner,
            &tools.smallfiles,
            &work,
            &venv,
            sizes.small_files,
            runs.min(3),
        )?)
    } else {
        None
    };
    let rate_secs = if args.quick { 1.0 } else { args.rate_seconds };
    let throughput = if args.overhead_only {
        Vec::new()
    } else {
        throughput(&runner, &tools.openrate, &work, rate_secs, args.quick)?
    };
    let memory = idle_memory(&runner)?;

    let mut results = Results {
        machine: machine(),
        runs,
        quick: args.quick,
        workloads,
        full_path,
        throughput,
        memory,
        targets: Vec::new(),
    };
    results.targets = report::targets(&results);
    let md = report::markdown(&results);
    println!("{md}");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let json = serde_json::to_string_pretty(&results)?;
    fs::write(base.join("latest.json"), &json)?;
    fs::write(base.join(format!("bench-{stamp}.json")), &json)?;
    fs::write(base.join("latest.md"), &md)?;
    eprintln!(
        "bench: done in {:.0}s; results in {}/latest.json and latest.md",
        started.elapsed().as_secs_f64(),
        base.display()
    );
    Ok(())
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn summarize(w: &Workload, samples: BTreeMap<&'static str, Vec<Sample>>) -> WorkloadResult {
    let median_s: BTreeMap<&'static str, f64> = samples
        .iter()
        .map(|(k, s)| {
            (
                *k,
                median(&s.iter().map(|s| s.workload_s).collect::<Vec<_>>()),
            )
        })
        .collect();
    let plain = median_s["plain"];
    WorkloadResult {
        name: w.name.into(),
        what: w.what.into(),
        argv: w
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        ratio: median_s.iter().map(|(k, m)| (*k, m / plain)).collect(),
        roar_node_lost_max: samples
            .values()
            .flatten()
            .filter_map(|s| s.lost)
            .max()
            .unwrap_or(0),
        median_s,
        samples,
    }
}

fn find_roar_tracers(venv: &Path) -> anyhow::Result<PathBuf> {
    for entry in fs::read_dir(venv.join("lib"))? {
        let dir = entry?.path().join("site-packages/roar/bin");
        if dir.join("roar-tracer-ebpf").exists() {
            return Ok(dir);
        }
    }
    bail!("roar-cli's tracers not found under {}", venv.display())
}

/// The whole path to a record: `roar-node run` (load, trace, hash, write)
/// and a full `roar run` (its tracer, then its Python post-processing),
/// each against the plain command's wall time.
fn full_path(
    runner: &Runner,
    smallfiles: &Path,
    work: &Path,
    venv: &Path,
    files: u64,
    runs: usize,
) -> anyhow::Result<FullPath> {
    let base = work.join("full-path");
    let roar = venv.join("bin/roar");
    let _ = fs::remove_dir_all(&base);
    let quiet = |c: &mut Command| -> anyhow::Result<()> {
        let out = c.stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                util::show(c),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    // A fresh roar project per run, as a user's first `roar run` of a step
    // (roar's database grows with every run and slows the next ones).
    let new_repo = |repo: &Path| -> anyhow::Result<()> {
        fs::create_dir_all(repo)?;
        quiet(Command::new("git").current_dir(repo).args(["init", "-q"]))?;
        quiet(Command::new(&roar).current_dir(repo).arg("init"))?;
        quiet(Command::new(&roar).current_dir(repo).args([
            "config",
            "set",
            "hints.enabled",
            "false",
        ]))?;
        quiet(Command::new("git").current_dir(repo).args(["add", "-A"]))?;
        quiet(Command::new("git").current_dir(repo).args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-qm",
            "init",
        ]))
    };
    let mut plain = Vec::new();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut n = 0;
    for round in 0..runs {
        for which in 0..3 {
            // Fresh directories (nothing deleted between runs) and dirty
            // pages flushed first, so no run pays for an earlier one's I/O.
            n += 1;
            let dir = base.join(format!("out-{n}"));
            fs::create_dir_all(&dir)?;
            let repo = base.join(format!("repo-{n}"));
            let kind = (which + round) % 3;
            if kind == 2 {
                new_repo(&repo)?;
            }
            quiet(&mut Command::new("sync"))?;
            let mut c = match kind {
                0 => Command::new(smallfiles),
                1 => {
                    let mut c = Command::new(&runner.roar_node);
                    c.args(["run", "-q", "--bundle-dir"])
                        .arg(base.join(format!("bundles-{n}")))
                        .arg("--")
                        .arg(smallfiles);
                    c
                }
                _ => {
                    let mut c = Command::new(&roar);
                    c.current_dir(&repo).arg("run").arg(smallfiles);
                    c
                }
            };
            c.arg(&dir).arg(files.to_string()).arg("1024");
            let t0 = Instant::now();
            quiet(&mut c)?;
            let secs = t0.elapsed().as_secs_f64();
            let label = ["plain", "roar-node run", "roar run"][kind];
            eprintln!(
                "bench: full path round {}/{runs} {label:<14} {secs:.3}s",
                round + 1
            );
            [&mut plain, &mut ours, &mut theirs][kind].push(secs);
        }
    }
    let _ = fs::remove_dir_all(&base);
    let p = median(&plain);
    Ok(FullPath {
        files,
        roar_node_ratio: median(&ours) / p,
        roar_run_ratio: median(&theirs) / p,
        plain_s: plain,
        roar_node_run_s: ours,
        roar_run_s: theirs,
    })
}

/// Opens at fixed rates under `roar-node run --no-suppress` (every open an
/// event), up to as fast as one core can: achieved rate, loss, and the
/// tracer's own CPU and peak memory from its record.
fn throughput(
    runner: &Runner,
    openrate: &Path,
    work: &Path,
    secs: f64,
    quick: bool,
) -> anyhow::Result<Vec<RatePoint>> {
    let dir = work.join("rate-files");
    const FILES: u64 = 1000;
    fs::create_dir_all(&dir)?;
    for i in 0..FILES {
        let p = dir.join(format!("f{i:05}.dat"));
        if !p.exists() {
            fs::write(&p, b"x")?;
        }
    }
    let rates: &[u64] = if quick {
        &[50_000, 0]
    } else {
        &[25_000, 50_000, 100_000, 200_000, 400_000, 0]
    };
    let mut points = Vec::new();
    for &rate in rates {
        let bundles = runner.scratch.join("rate-bundles");
        let _ = fs::remove_dir_all(&bundles);
        let out = Command::new(&runner.roar_node)
            .args(["run", "-q", "--no-suppress", "--bundle-dir"])
            .arg(&bundles)
            .arg("--")
            .arg(openrate)
            .arg(&dir)
            .arg(FILES.to_string())
            .arg(rate.to_string())
            .arg(secs.to_string())
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "openrate at {rate}/s failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.parse().ok()))
                .unwrap_or(f64::NAN)
        };
        let rec = variants::read_record(&bundles)?;
        let md = &rec["backend_metadata"];
        let tracer = &md["tracer"];
        let cpu = tracer["cpu_user_seconds"].as_f64().unwrap_or(0.0)
            + tracer["cpu_system_seconds"].as_f64().unwrap_or(0.0);
        let wall =
            rec["ended_at"].as_f64().unwrap_or(0.0) - rec["started_at"].as_f64().unwrap_or(0.0);
        let p = RatePoint {
            target_per_s: rate,
            achieved_per_s: field("rate="),
            opens: field("opens=") as u64,
            open_events: md["capture"]["events_by_kind"]["open"]
                .as_u64()
                .unwrap_or(0),
            lost: md["capture"]["events_lost"]
                .as_u64()
                .context("record without events_lost")?,
            tracer_cpu_percent: 100.0 * cpu / wall.max(secs),
            tracer_max_rss_mib: tracer["max_rss_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
        };
        eprintln!(
            "bench: rate {:>7}/s achieved {:>9.0}/s events {:>8} lost {:>7} tracer cpu {:>5.1}% rss {:.1} MiB",
            rate,
            p.achieved_per_s,
            p.open_events,
            p.lost,
            p.tracer_cpu_percent,
            p.tracer_max_rss_mib
        );
        points.push(p);
    }
    Ok(points)
}

/// roar-node's resident memory while it traces an idle command.
fn idle_memory(runner: &Runner) -> anyhow::Result<Memory> {
    let bg = Background::start(runner, &runner.scratch.join("idle-bundles"))?;
    std::thread::sleep(Duration::from_secs(2));
    let status = fs::read_to_string(format!("/proc/{}/status", bg.pid()))?;
    bg.stop()?;
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Memory {
        idle_rss_mib: kib("VmRSS:") / 1024.0,
        idle_peak_rss_mib: kib("VmHWM:") / 1024.0,
    })
}

fn machine() -> BTreeMap<&'static str, String> {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let get = |c: &mut Command| {
        util::output(c)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    BTreeMap::from([
        ("cpu", cpu),
        ("cores", get(&mut Command::new("nproc"))),
        ("kernel", get(Command::new("uname").arg("-r"))),
        (
            "memory",
            get(Command::new("sh").args(["-c", "free -g | awk '/Mem:/{print $2\" GiB\"}'"])),
        ),
        (
            "roar_node",
            get(Command::new(util::root().join("target/release/roar-node")).arg("--version")),
        ),
    ])
}
