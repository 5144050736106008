//! `roar-node run -- CMD`: trace one command locally, no cluster. The
//! command runs in a fresh cgroup v2 (moved there before it execs), is
//! traced with every descendant until the whole tree has exited, and gets
//! one roar record.

use std::{
    ffi::OsString,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::PathBuf,
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use roar_node_common::traced::TRACE_NO_SUPPRESS;

use crate::{
    attribution::cgroupfs::{LocalCgroup, find_cgroup2},
    capture::Capture,
    engine::{Engine, TaskHome},
    events::reader::EventReader,
    probes::ProbeOptions,
    records::{
        Clock, LocalTask, Record, RecordBuilder, TaskIdentity, TracerUsage, hashing::HashBudget,
        path_filters::PathFilterConfig,
    },
    sinks::{Delivered, Delivery, SinkError, make_sink, store::Problem},
    tasks::TaskLimits,
};

/// What `run` is told.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) bundle_dir: PathBuf,
    /// An object store URL; `None`: the bundle directory.
    pub(crate) sink: Option<String>,
    /// The workflow the record is filed under in the store.
    pub(crate) workflow: Option<String>,
    pub(crate) fallback_dir: PathBuf,
    /// Task name in the record (default: the command line).
    pub(crate) name: Option<String>,
    pub(crate) ring_buffer_bytes: u32,
    /// Report every open, not only the first read and first write.
    pub(crate) no_suppress: bool,
    /// What hashing one file may cost.
    pub(crate) hash_budget: HashBudget,
    pub(crate) filters: PathFilterConfig,
    /// Say nothing but errors.
    pub(crate) quiet: bool,
    pub(crate) command: Vec<OsString>,
}

/// What a run ended with.
pub(crate) struct Outcome {
    /// CMD's exit code (128+N when killed by signal N).
    pub(crate) exit_code: i32,
    pub(crate) record: Record,
    /// Where the record went.
    pub(crate) at: String,
    pub(crate) elapsed: Duration,
}

/// Runs and traces the command; the record is delivered before this
/// returns.
pub(crate) async fn run(config: Config) -> anyhow::Result<Outcome> {
    let cgroot = find_cgroup2()?;
    let delivery = ready_delivery(&config)?;

    let t0 = Instant::now();
    let opts = ProbeOptions {
        ring_buffer_bytes: config.ring_buffer_bytes,
        ..ProbeOptions::default()
    };
    let Capture {
        mut probes,
        mut reader,
        pool,
        mut engine,
    } = Capture::<()>::start(
        opts,
        PathBuf::from("/proc"),
        2,
        config.hash_budget,
        TaskLimits::default(),
        TaskHome::OurNamespace,
    )?;
    let name = format!("run-{}-{}", std::process::id(), Clock::now_boot_ns());
    let cg = LocalCgroup::create(&cgroot, &name).context("creating a cgroup for the command")?;
    let flags = if config.no_suppress {
        TRACE_NO_SUPPRESS
    } else {
        0
    };
    probes
        .traced
        .trace(cg.id, flags)
        .context("adding the cgroup to the trace set")?;
    engine.register(cg.id, ());

    let (child_pid, status) = run_traced(&config, &cg, &mut reader, &mut engine).await?;
    let kernel = probes.traced.untrace(cg.id);
    let kernel_counters = probes.stats.read();
    let finished = engine.finish(cg.id).context("task state vanished")?;
    let _ = cg.remove();
    let exit_code = status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    });

    let host = hostname();
    let builder = RecordBuilder {
        pool: &pool,
        filters: &config.filters,
        clock: Clock::new(),
    };
    let mut record = builder
        .build(finished.into_task(kernel))
        .name(TaskIdentity::Local(LocalTask {
            boot_id: boot_id(),
            cgroup_id: cg.id,
            cgroup_path: cg.rel.clone(),
            name: config
                .name
                .clone()
                .unwrap_or_else(|| display_command(&config.command)),
            program: program_name(&config.command[0]),
            command_pid: child_pid,
            exit_code,
            kernel_counters,
            tracer_usage: tracer_usage(),
            host,
        }));
    // Where a store files it (not part of the fragment).
    record.owner.workflow_id = config.workflow.clone();
    // The sink may block on the network: not on a runtime worker's time.
    let at = match tokio::task::block_in_place(|| {
        delivery.deliver(&record.fragment.task_id, &record)
    })? {
        Delivered::At(at) | Delivered::Waiting(at) => at,
    };
    // Detaching waits on the kernel (RCU) for ~0.5 s: not the user's time.
    probes.detach_after_exit();
    Ok(Outcome {
        exit_code,
        record,
        at,
        elapsed: t0.elapsed(),
    })
}

/// Delivery to `--sink` or the bundle directory, checked before the
/// command runs: a bad URL, a missing bucket, no credentials or a
/// directory that cannot be written stop here, not after the work. A store
/// that does not answer is only a warning: the command runs, and if the
/// store still refuses at the end the record is kept in the fallback
/// directory.
fn ready_delivery(config: &Config) -> anyhow::Result<Delivery> {
    let sink =
        make_sink(config.sink.as_deref(), &config.bundle_dir, None).context("bundle directory")?;
    match tokio::task::block_in_place(|| sink.check()) {
        Ok(()) => {}
        Err(SinkError::Store(e)) if e.problem == Problem::Unreachable => {
            tracing::warn!(error = %e, "the store does not answer now: running the command anyway");
            if !config.quiet {
                eprintln!("roar-node: warning: {e}; running the command anyway");
            }
        }
        Err(e @ SinkError::Store(_)) => return Err(e.into()),
        Err(e) => return Err(anyhow::Error::new(e).context("bundle directory")),
    }
    Ok(Delivery::new(sink, config.fallback_dir.clone()))
}

/// Starts the command in the cgroup and drains its events until it and
/// every process it left have exited. Returns its pid and exit status.
async fn run_traced(
    config: &Config,
    cg: &LocalCgroup,
    reader: &mut EventReader,
    engine: &mut Engine,
) -> anyhow::Result<(u32, ExitStatus)> {
    use tokio::signal::unix::{SignalKind, signal};
    // Signals: SIGINT reaches the command from the terminal; we wait for
    // it to finish and still write the record. SIGTERM is passed on.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut child = spawn_in_cgroup(&config.command, cg)?;
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
        let Some(status) = status else { continue };
        if !cg.populated().unwrap_or(false) {
            // Every process has left the cgroup, so every event it caused
            // is in the ring buffer: one last drain gets them all.
            reader.drain(|b| {
                engine.handle(b);
            });
            return Ok((child_pid, status));
        }
        if let Some(since) = waiting_note
            && since.elapsed() > Duration::from_secs(2)
        {
            if !config.quiet {
                tracing::warn!(
                    command = %config.command[0].to_string_lossy(),
                    "the command exited; waiting for the processes it left running"
                );
            }
            waiting_note = None;
        }
    }
}

/// Spawns the command, moved into `cg` before it execs.
fn spawn_in_cgroup(command: &[OsString], cg: &LocalCgroup) -> anyhow::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
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
    match cmd.spawn() {
        Ok(c) => Ok(c),
        Err(e) => bail!("cannot run {}: {e}", command[0].to_string_lossy()),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', "")[..8].to_string())
        .unwrap_or_else(|_| "noboot".into())
}

/// The command's file name, for the bundle's name.
fn program_name(argv0: &OsString) -> String {
    std::path::Path::new(argv0)
        .file_name()
        .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        .unwrap_or_else(|| "cmd".into())
}

/// roar-node's own cost for this run (the command's is not included): CPU
/// time and peak resident memory of this process, all threads.
fn tracer_usage() -> Result<TracerUsage, String> {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).map_err(|e| e.to_string())?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(TracerUsage {
        cpu_user_seconds: secs(u.user_time()),
        cpu_system_seconds: secs(u.system_time()),
        // Linux reports ru_maxrss in KiB.
        max_rss_bytes: u.max_rss() as u64 * 1024,
    })
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
