//! `cargo xtask bench-flood`: one abusive pod against the others, on the
//! local cluster with the roar-node DaemonSet. A pod opens more distinct
//! files than the kernel's repeat-suppression map holds, as fast as it
//! can; meanwhile small task pods come and go. Measured, against the same
//! small pods without the flood in the same invocation: how long after a
//! small task's last event its record is on disk (median and worst), the
//! events the small tasks lost (must stay 0), and the daemon's peak
//! resident memory against its configured limit.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use roar_node_tests::k8s::{
    bundles, create, create_namespace, daemon_pid, kubeconfig, records_of, shell_pod, uid_of,
    wait_pod_done, wall_now, with_volume,
};
use serde_json::{Value, json};

use crate::util::{self, is_root, root};

#[derive(clap::Args)]
pub struct Args {
    /// Distinct files the flooding pod cycles through (more than the
    /// kernel's 256 Ki-entry suppression map, so that opens stay events).
    #[arg(long, default_value_t = 300_000)]
    files: u64,
    /// How long the flood lasts, seconds.
    #[arg(long, default_value_t = 40)]
    seconds: u64,
    /// Small task pods per phase (baseline, then during the flood).
    #[arg(long, default_value_t = 6)]
    probes: usize,
}

fn rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples the daemon's RSS every 200 ms until stopped; keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak_kib.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(k) = rss_kib(pid) {
                    p.fetch_max(k, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self {
            stop,
            peak_kib,
            thread,
        }
    }

    fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

fn pod(ns: &str, name: &str, command: &str, bin: Option<&Path>) -> Value {
    let p = with_volume(
        shell_pod(ns, name, command, true),
        json!({"name": "work", "emptyDir": {"medium": "Memory"}}),
        "/work",
        false,
    );
    match bin {
        Some(bin) => with_volume(
            p,
            json!({"name": "bench", "hostPath": {"path": bin, "type": "Directory"}}),
            "/bench",
            true,
        ),
        None => p,
    }
}

/// A small task: delay from its last event to its record on disk, and
/// the events it lost.
struct Probe {
    delay_s: f64,
    lost: u64,
}

fn run_probes(ns: &str, tag: &str, n: usize) -> anyhow::Result<Vec<Probe>> {
    let kc = kubeconfig();
    let mut uids = Vec::new();
    for i in 0..n {
        let name = format!("probe-{tag}-{i}");
        create(
            &kc,
            &pod(
                ns,
                &name,
                "echo probe > /work/p.txt && cat /work/p.txt > /work/q.txt",
                None,
            ),
        );
        uids.push(uid_of(&wait_pod_done(
            &kc,
            ns,
            &name,
            Duration::from_secs(120),
        )));
        std::thread::sleep(Duration::from_secs(2));
    }
    let dir = roar_node_tests::k8s::node_state().join("bundles");
    let t0 = Instant::now();
    let mut out = Vec::new();
    for uid in &uids {
        let rec = loop {
            let all = bundles();
            if let Some((name, f)) = records_of(&all, uid).into_iter().next() {
                break (name, f);
            }
            if t0.elapsed() > Duration::from_secs(180) {
                bail!("no record for probe pod {uid} after 180 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mtime = fs::metadata(dir.join(&rec.0))?
            .modified()?
            .duration_since(UNIX_EPOCH)?
            .as_secs_f64();
        let ended = rec.1["ended_at"].as_f64().context("ended_at")?;
        out.push(Probe {
            delay_s: mtime - ended,
            lost: rec.1["backend_metadata"]["capture"]["events_lost"]
                .as_u64()
                .unwrap_or(0),
        });
    }
    Ok(out)
}

fn stats(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (
        crate::bench::median(&s),
        s.last().copied().unwrap_or(f64::NAN),
    )
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("bench-flood runs the local cluster: run it as root");
    }
    crate::cluster::prepare_e2e()?;
    let bin = PathBuf::from("/var/tmp/roar-node-bench/bin");
    fs::create_dir_all(&bin)?;
    util::run(
        Command::new("gcc")
            .args(["-O2", "-static", "-o"])
            .arg(bin.join("flood"))
            .arg(root().join("xtask/bench/flood.c")),
    )?;
    let kc = kubeconfig();
    let ns = format!("roar-flood-{}", std::process::id());
    create_namespace(&kc, &ns);
    let pid = daemon_pid().context("no roar-node daemon process on this node")?;

    eprintln!("bench-flood: baseline ({} small pods)", args.probes);
    let sampler = RssSampler::start(pid);
    let base = run_probes(&ns, "base", args.probes)?;
    let base_rss = sampler.stop();

    eprintln!(
        "bench-flood: flood ({} files, {} s) with {} small pods",
        args.files, args.seconds, args.probes
    );
    let sampler = RssSampler::start(pid);
    let t_flood = wall_now();
    create(
        &kc,
        &pod(
            &ns,
            "flood",
            &format!("/bench/flood /work {} {}", args.files, args.seconds),
            Some(&bin),
        ),
    );
    // Let it create its files and start opening.
    std::thread::sleep(Duration::from_secs(8));
    let during = run_probes(&ns, "flood", args.probes)?;
    let flood_pod = wait_pod_done(&kc, &ns, "flood", Duration::from_secs(args.seconds + 300));
    let flood_uid = uid_of(&flood_pod);
    let t0 = Instant::now();
    let flood_rec = loop {
        if let Some((_, f)) = records_of(&bundles(), &flood_uid).into_iter().next() {
            break f;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("no record for the flood pod");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let flood_rss = sampler.stop();
    let log = util::output(crate::cluster::kubectl().args(["-n", &ns, "logs", "flood"]))
        .unwrap_or_default();
    let rate = log
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rate="))
        .and_then(|r| r.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let cap = &flood_rec["backend_metadata"]["capture"];
    let limit = fs::read_to_string(root().join("deploy/base/daemonset.yaml"))?
        .lines()
        .skip_while(|l| !l.contains("limits:"))
        .find_map(|l| {
            l.trim()
                .strip_prefix("memory:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();

    let (bm, bw) = stats(&base.iter().map(|p| p.delay_s).collect::<Vec<_>>());
    let (fm, fw) = stats(&during.iter().map(|p| p.delay_s).collect::<Vec<_>>());
    let lost_small: u64 = during.iter().map(|p| p.lost).sum();
    let result = json!({
        "flood": {
            "files": args.files, "seconds": args.seconds, "opens_per_second": rate,
            "events": cap["events"], "events_lost": cap["events_lost"],
            "partial": cap["partial"], "started": t_flood,
        },
        "small_pods": {
            "count": args.probes,
            "record_delay_s": {"baseline_median": bm, "baseline_worst": bw,
                               "flood_median": fm, "flood_worst": fw},
            "events_lost_during_flood": lost_small,
        },
        "daemon_rss_mib": {"baseline_peak": base_rss, "flood_peak": flood_rss, "limit": limit},
    });
    let md = format!(
        "| | baseline | during the flood |\n|---|---|---|\n\
         | small pods: record delay, median | {bm:.2} s | {fm:.2} s |\n\
         | small pods: record delay, worst | {bw:.2} s | {fw:.2} s |\n\
         | small pods: events lost | 0 | {lost_small} |\n\
         | daemon peak RSS | {base_rss:.1} MiB | {flood_rss:.1} MiB (limit {limit}) |\n\n\
         Flood pod: {rate:.0} opens/s over {} distinct files for {} s; its record: {} events, {} lost, partial {}.\n",
        args.files, args.seconds, cap["events"], cap["events_lost"], cap["partial"]
    );
    let out = root().join("target/bench");
    fs::create_dir_all(&out)?;
    fs::write(out.join("flood.json"), serde_json::to_vec_pretty(&result)?)?;
    fs::write(out.join("flood.md"), &md)?;
    println!("{md}");
    let _ = crate::cluster::kubectl()
        .args(["delete", "namespace", &ns, "--wait=false"])
        .status();
    Ok(())
}
