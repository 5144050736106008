//! `roar-node run -- CMD`: trace one command locally, no cluster.

use std::{
    ffi::OsString,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use roar_node_common::filter::FILTER_NO_SUPPRESS;
use serde_json::json;

use super::capture::{Capture, hostname, kernel_counters};
use crate::{
    attribution::cgroupfs::{LocalCgroup, find_cgroup2},
    probes::ProbeOptions,
    records::{Clock, RecordBuilder, TaskIdentity, filters::FilterConfig},
    sinks::bundle::BundleDir,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory the bundle is written to.
    #[arg(long, default_value = "./roar-bundles", env = "ROAR_NODE_BUNDLE_DIR")]
    pub bundle_dir: PathBuf,
    /// Where the record is kept if the bundle directory cannot take it
    /// (full, read-only, removed while the command ran).
    #[arg(long, default_value = "/var/tmp/roar-node-unsent", value_name = "DIR")]
    pub fallback_dir: PathBuf,
    /// Task name in the record (default: the command line).
    #[arg(long)]
    pub name: Option<String>,
    /// Ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = 8 << 20)]
    pub ring_buffer_bytes: u32,
    /// Report every open, not only the first read and first write of a
    /// file (more events; for debugging and benchmarks).
    #[arg(long)]
    pub no_suppress: bool,
    /// File filters as JSON (fields of `FilterConfig`; missing fields keep
    /// roar's defaults), e.g. `{"ignore_tmp_files": false}`.
    #[arg(long, value_name = "FILE")]
    pub filters: Option<PathBuf>,
    /// Leave out paths with this prefix (absolute) or containing it (repeatable).
    #[arg(long, value_name = "PATH")]
    pub ignore_path: Vec<String>,
    /// Always keep paths with this prefix, whatever else matches (repeatable).
    #[arg(long, value_name = "PATH")]
    pub keep_path: Vec<String>,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Also print the record to stdout after CMD's own output.
    #[arg(long)]
    pub print_record: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', "")[..8].to_string())
        .unwrap_or_else(|_| "noboot".into())
}

/// roar-node's own cost for this run (the command's is not included): CPU
/// time and peak resident memory of this process, all threads.
fn tracer_usage() -> serde_json::Value {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            json!({
                "cpu_user_seconds": secs(u.user_time()),
                "cpu_system_seconds": secs(u.system_time()),
                // Linux reports ru_maxrss in KiB.
                "max_rss_bytes": u.max_rss() as u64 * 1024,
            })
        }
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// "sh -c 'cat a > b'" style, shortened.
fn display_command(argv: &[OsString]) -> String {
    let mut s = argv
        .iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if s.chars().count() > 120 {
        s = s.chars().take(117).collect::<String>() + "...";
    }
    s
}

pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let filters = FilterConfig::load(args.filters.as_deref(), &args.ignore_path, &args.keep_path)?;
    let opts = ProbeOptions {
        ring_buffer_bytes: args.ring_buffer_bytes,
        ..ProbeOptions::default()
    };
    let cgroot = find_cgroup2()?;
    let sink = BundleDir::new(&args.bundle_dir).with_context(|| "bundle directory")?;
    sink.check_writable().context("bundle directory")?;

    let t0 = Instant::now();
    let Capture {
        mut probes,
        mut reader,
        pool,
        mut engine,
    } = Capture::start(
        opts,
        PathBuf::from("/proc"),
        2,
        crate::tasks::TaskLimits::default(),
    )?;
    let name = format!("run-{}-{}", std::process::id(), Clock::now_boot_ns());
    let cg = LocalCgroup::create(&cgroot, &name).context("creating a cgroup for the command")?;
    let flags = if args.no_suppress {
        FILTER_NO_SUPPRESS
    } else {
        0
    };
    probes
        .traced
        .trace(cg.id, flags)
        .context("adding the cgroup to the trace filter")?;

    engine.register(cg.id, None);

    // Signals: SIGINT reaches the command from the terminal; we wait for
    // it to finish and still write the record. SIGTERM is passed on.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    let procs_fd = cg.procs_fd();
    // SAFETY: only async-signal-safe calls (write) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process: the child, before it execs.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => bail!("cannot run {}: {e}", args.command[0].to_string_lossy()),
    };
    let child_pid = child.id();
    let (tx, mut exited) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });

    let mut status = None;
    let mut waiting_note = None;
    loop {
        tokio::select! {
            _ = reader.wait() => {}
            s = &mut exited, if status.is_none() => {
                status = Some(s.context("waiting for the command")??);
                waiting_note = Some(Instant::now());
            }
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child_pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
        }
        reader.drain(|b| {
            engine.handle(b);
        });
        if status.is_some() {
            if !cg.populated().unwrap_or(false) {
                break;
            }
            if let Some(since) = waiting_note
                && since.elapsed() > Duration::from_secs(2)
            {
                if !args.quiet {
                    eprintln!(
                        "roar-node: {} exited; waiting for the processes it left running",
                        args.command[0].to_string_lossy()
                    );
                }
                waiting_note = None;
            }
        }
    }
    // Every process has left the cgroup, so every event it caused is in
    // the ring buffer: one last drain gets them all.
    reader.drain(|b| {
        engine.handle(b);
    });
    let entry = probes.traced.untrace(cg.id);
    let kernel_stats = probes.stats.read();
    let finished = engine.finish(cg.id).context("task state vanished")?;
    let _ = cg.remove();

    let status = status.context("no exit status")?;
    let exit_code = status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    });

    let host = hostname();
    let argv0 = std::path::Path::new(&args.command[0])
        .file_name()
        .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        .unwrap_or_else(|| "cmd".into());
    let mut metadata = serde_json::Map::new();
    metadata.insert("mode".into(), json!("run"));
    metadata.insert("cgroup".into(), json!({"id": cg.id, "path": cg.rel}));
    metadata.insert("kernel_counters".into(), kernel_counters(&kernel_stats));
    metadata.insert("tracer".into(), tracer_usage());
    let identity = TaskIdentity {
        task_id: format!("local:{host}:{}:{}", boot_id(), cg.id),
        task_name: args
            .name
            .clone()
            .unwrap_or_else(|| display_command(&args.command)),
        backend: "local".into(),
        node: host.clone(),
        execution_role: "task".into(),
        bundle: Default::default(),
        command_pid: Some(child_pid),
        exit_code: Some(exit_code),
        metadata,
    };
    let builder = RecordBuilder {
        pool: &pool,
        filters: &filters,
        clock: Clock::new(),
        host,
    };
    let mut record = builder.build(finished.into_task(identity, entry));
    record.bundle.pod = format!("run-{}", record.fragment.job_uid);
    record.bundle.container = argv0;
    record.bundle.attempt = "0".into();
    let path = crate::sinks::emit_or_keep(&sink, &args.fallback_dir, &record)?;
    let s = &record.summary;
    if !args.quiet {
        eprintln!(
            "roar-node: {} processes, {} reads, {} writes, {} events, {} lost, {:.2}s -> {}",
            s.processes,
            s.reads,
            s.writes,
            s.events,
            s.lost,
            t0.elapsed().as_secs_f64(),
            path.display()
        );
        if s.lost > 0 {
            eprintln!(
                "roar-node: warning: {} events were lost; the record is marked partial",
                s.lost
            );
        }
    }
    if args.print_record {
        println!("{}", serde_json::to_string_pretty(&record.fragment)?);
    }
    probes.detach_after_exit();
    Ok(exit_code)
}
