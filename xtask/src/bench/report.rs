//! The benchmark's tables (markdown for humans and the README) and the
//! targets from the benchmark issue, each marked met or missed.

use std::fmt::Write;

use serde::Serialize;

use super::{Results, variants::Variant};

#[derive(Serialize)]
pub struct Target {
    what: String,
    limit: String,
    figure: String,
    met: bool,
}

fn ratio(r: &Results, workload: &str, variant: &str) -> Option<f64> {
    r.workloads
        .iter()
        .find(|w| w.name == workload)
        .and_then(|w| w.ratio.get(variant).copied())
}

pub fn targets(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    let mut ratio_target = |what: &str, workload: &str, variant: &str, limit: f64| {
        if let Some(x) = ratio(r, workload, variant) {
            t.push(Target {
                what: what.into(),
                limit: format!("≤ {limit:.2}x"),
                figure: format!("{x:.3}x"),
                met: x <= limit,
            });
        }
    };
    ratio_target("untraced open+close", "open_close", "untraced", 1.02);
    ratio_target("traced open+close", "open_close", "traced", 1.10);
    ratio_target("traced 5,000 small files", "small_files", "traced", 1.10);
    ratio_target("traced 500 MB read", "big_read", "traced", 1.01);
    ratio_target("traced fork+exec", "fork_exec", "traced", 1.15);
    if let Some(f) = &r.full_path {
        t.push(Target {
            what: format!("full `roar-node run`, {} files", f.files),
            limit: "≤ 1.50x".into(),
            figure: format!(
                "{:.2}x (full `roar run`: {:.1}x)",
                f.roar_node_ratio, f.roar_run_ratio
            ),
            met: f.roar_node_ratio <= 1.5,
        });
    }
    // The fastest rate at or above 100k/s that was reached.
    let at_100k: Vec<_> = r
        .throughput
        .iter()
        .filter(|p| p.achieved_per_s >= 95_000.0)
        .collect();
    if !at_100k.is_empty() {
        let lost: u64 = at_100k.iter().map(|p| p.lost).sum();
        t.push(Target {
            what: "loss at ≥ 100k opens/s".into(),
            limit: "0".into(),
            figure: lost.to_string(),
            met: lost == 0,
        });
    }
    t.push(Target {
        what: "tracer RSS, idle".into(),
        limit: "≤ 64 MiB".into(),
        figure: format!("{:.1} MiB", r.memory.idle_rss_mib),
        met: r.memory.idle_rss_mib <= 64.0,
    });
    t
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} ({} cores, {}), kernel {}; {}; median of {} run(s){}.\n",
        m.get("cpu").map(String::as_str).unwrap_or("?"),
        m.get("cores").map(String::as_str).unwrap_or("?"),
        m.get("memory").map(String::as_str).unwrap_or("?"),
        m.get("kernel").map(String::as_str).unwrap_or("?"),
        m.get("roar_node").map(String::as_str).unwrap_or("?"),
        r.runs,
        if r.quick {
            ", QUICK sizes (harness check only)"
        } else {
            ""
        }
    );

    let _ = writeln!(
        s,
        "Workload time, ratio to the plain run (lower is better):\n"
    );
    let _ = write!(s, "| workload | plain |");
    for v in &Variant::ALL[1..] {
        let _ = write!(s, " {} |", v.label());
    }
    let _ = writeln!(s, "\n|---|---:|{}", "---:|".repeat(Variant::ALL.len() - 1));
    for w in &r.workloads {
        let _ = write!(s, "| {} | {:.3}s |", w.name, w.median_s["plain"]);
        for v in &Variant::ALL[1..] {
            match w.ratio.get(v.key()) {
                Some(x) => {
                    let _ = write!(s, " {x:.3}x |");
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\n\"syscall-tracing floor\": the plain run while an unrelated syscall tracepoint is enabled and no \
         program runs: what the kernel's slow syscall path costs every process once any syscall tracepoint \
         is in use. No syscall-tracepoint tracer can go below it."
    );
    let lost: u64 = r.workloads.iter().map(|w| w.roar_node_lost_max).sum();
    let _ = writeln!(s, "\nroar-node events lost in these runs: {lost}.\n");

    if let Some(f) = &r.full_path {
        let _ = writeln!(
            s,
            "Full path to a record, {} small files written then read (wall time incl. start-up, hashing, record):\n",
            f.files
        );
        let _ = writeln!(
            s,
            "| plain | `roar-node run` | `roar run` (roar-cli 0.4.7) |\n|---:|---:|---:|"
        );
        let _ = writeln!(
            s,
            "| {:.3}s | {:.3}s ({:.2}x) | {:.3}s ({:.1}x) |\n",
            super::median(&f.plain_s),
            super::median(&f.roar_node_run_s),
            f.roar_node_ratio,
            super::median(&f.roar_run_s),
            f.roar_run_ratio
        );
    }

    let _ = writeln!(
        s,
        "Throughput: opens of 1,000 files at a fixed rate, every open an event (`--no-suppress`):\n"
    );
    let _ = writeln!(
        s,
        "| target opens/s | achieved | events | lost | roar-node CPU | roar-node peak RSS |\n|---:|---:|---:|---:|---:|---:|"
    );
    for p in &r.throughput {
        let target = if p.target_per_s == 0 {
            "max".to_string()
        } else {
            p.target_per_s.to_string()
        };
        let _ = writeln!(
            s,
            "| {target} | {:.0} | {} | {} | {:.1}% | {:.1} MiB |",
            p.achieved_per_s, p.open_events, p.lost, p.tracer_cpu_percent, p.tracer_max_rss_mib
        );
    }
    let best = r
        .throughput
        .iter()
        .filter(|p| p.lost == 0)
        .map(|p| p.achieved_per_s)
        .fold(0.0, f64::max);
    let _ = writeln!(s, "\nHighest rate with zero loss: {best:.0} opens/s.\n");
    let _ = writeln!(
        s,
        "Memory: roar-node resident {:.1} MiB while tracing an idle command (peak {:.1} MiB, during program load).\n",
        r.memory.idle_rss_mib, r.memory.idle_peak_rss_mib
    );

    let _ = writeln!(
        s,
        "Targets:\n\n| target | limit | figure | |\n|---|---|---|---|"
    );
    for t in &r.targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.what,
            t.limit,
            t.figure,
            if t.met { "met" } else { "**missed**" }
        );
    }
    s
}
