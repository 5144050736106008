//! How a workload is run: plain, under roar-node, beside roar-node, or
//! under one of roar-cli's own tracers. Every variant runs the workload
//! through `benchtime`, which stamps the workload's own start and end from
//! inside the wrapper, so tracer start-up and tear-down are measured apart.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The workload alone.
    Plain,
    /// Under `roar-node run`: the workload's cgroup is traced.
    Traced,
    /// Alone, while `roar-node run` traces another cgroup: what every
    /// untraced process on a node pays for the attached programs.
    Untraced,
    /// Alone, while an unrelated syscall tracepoint (`sys_exit_reboot`)
    /// is enabled through tracefs: the cost the kernel adds to every
    /// syscall of every process once any syscall tracepoint is in use
    /// (its slow syscall path), with no program running at all. The floor
    /// of any syscall-tracepoint tracer.
    SyscallTracingFloor,
    /// roar-cli 0.4.7's eBPF tracer (`roar-tracer-ebpf`).
    RoarEbpf,
    /// roar-cli 0.4.7's LD_PRELOAD tracer (`roar-tracer-preload`).
    RoarPreload,
    /// roar-cli 0.4.7's ptrace tracer (`roar-tracer`).
    RoarPtrace,
}

impl Variant {
    pub const ALL: [Variant; 7] = [
        Variant::Plain,
        Variant::Traced,
        Variant::Untraced,
        Variant::SyscallTracingFloor,
        Variant::RoarEbpf,
        Variant::RoarPreload,
        Variant::RoarPtrace,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Traced => "roar-node traced",
            Variant::Untraced => "roar-node untraced",
            Variant::SyscallTracingFloor => "syscall-tracing floor",
            Variant::RoarEbpf => "roar-tracer-ebpf",
            Variant::RoarPreload => "roar-tracer-preload",
            Variant::RoarPtrace => "roar-tracer (ptrace)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Traced => "traced",
            Variant::Untraced => "untraced",
            Variant::SyscallTracingFloor => "syscall_tracing_floor",
            Variant::RoarEbpf => "roar_ebpf",
            Variant::RoarPreload => "roar_preload",
            Variant::RoarPtrace => "roar_ptrace",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The workload's wall time, stamped inside the wrapper.
    pub workload_s: f64,
    /// The whole command's wall time (tracer start-up and tear-down too).
    pub total_s: f64,
    /// roar-node runs: events lost according to the record.
    pub lost: Option<u64>,
}

pub struct Runner {
    pub roar_node: PathBuf,
    pub benchtime: PathBuf,
    /// roar-cli's bin directory with roar-tracer, -preload, -ebpf.
    pub roar_tracers: PathBuf,
    pub scratch: PathBuf,
}

impl Runner {
    /// Runs `argv` once as `variant`.
    pub fn run(&self, variant: Variant, argv: &[OsString]) -> anyhow::Result<Sample> {
        let stamp = self.scratch.join("benchtime.out");
        let _ = fs::remove_file(&stamp);
        let bundles = self.scratch.join("bundles");
        let _ = fs::remove_dir_all(&bundles);
        let mut inner: Vec<OsString> = vec![self.benchtime.clone().into(), stamp.clone().into()];
        inner.extend(argv.iter().cloned());

        let mut background = None;
        let mut floor = None;
        let mut cmd = match variant {
            Variant::Plain => command(&inner),
            Variant::Untraced => {
                background = Some(Background::start(self, &self.scratch.join("bg-bundles"))?);
                command(&inner)
            }
            Variant::SyscallTracingFloor => {
                floor = Some(SyscallTracing::enable()?);
                command(&inner)
            }
            Variant::Traced => {
                let mut c = Command::new(&self.roar_node);
                c.args(["run", "-q", "--bundle-dir"])
                    .arg(&bundles)
                    .arg("--")
                    .args(&inner);
                c
            }
            Variant::RoarEbpf | Variant::RoarPreload | Variant::RoarPtrace => {
                let name = match variant {
                    Variant::RoarEbpf => "roar-tracer-ebpf",
                    Variant::RoarPreload => "roar-tracer-preload",
                    _ => "roar-tracer",
                };
                let mut c = Command::new(self.roar_tracers.join(name));
                c.arg(self.scratch.join("report.msgpack")).args(&inner);
                c
            }
        };
        let t0 = Instant::now();
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {:?}", variant.label()))?;
        let total_s = t0.elapsed().as_secs_f64();
        if let Some(bg) = background {
            bg.stop()?;
        }
        drop(floor);
        if !out.status.success() {
            bail!(
                "{} run of {:?} failed ({}): {}",
                variant.label(),
                argv[0],
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = fs::read_to_string(&stamp).context("benchtime wrote no time")?;
        let v: Vec<i64> = text
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        if v.len() != 3 || v[2] != 0 {
            bail!("benchtime: unexpected {text:?}");
        }
        let lost = (variant == Variant::Traced)
            .then(|| record_lost(&bundles))
            .transpose()?;
        Ok(Sample {
            workload_s: (v[1] - v[0]) as f64 / 1e9,
            total_s,
            lost,
        })
    }
}

fn command(argv: &[OsString]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// The one record in `dir`: its fragment.
pub fn read_record(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let entry = fs::read_dir(dir)
        .with_context(|| format!("no bundle in {}", dir.display()))?
        .next()
        .context("no bundle written")??;
    let bundle: serde_json::Value = serde_json::from_slice(&fs::read(entry.path())?)?;
    Ok(bundle["fragments"][0].clone())
}

fn record_lost(dir: &Path) -> anyhow::Result<u64> {
    read_record(dir)?["backend_metadata"]["capture"]["events_lost"]
        .as_u64()
        .context("record without capture.events_lost")
}

/// `roar-node run -- sleep` in the background: its programs are attached
/// and trace only its own cgroup.
pub struct Background {
    child: Child,
}

impl Background {
    pub fn start(r: &Runner, bundles: &Path) -> anyhow::Result<Self> {
        let _ = fs::remove_dir_all(bundles);
        let child = Command::new(&r.roar_node)
            .args(["run", "-q", "--bundle-dir"])
            .arg(bundles)
            .args(["--", "sleep", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the background roar-node")?;
        // The programs are attached before the command is started, so a
        // `sleep` child means they are in place.
        let children = format!("/proc/{0}/task/{0}/children", child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let kids = fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = kids.split_whitespace().next()
                && fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            {
                // Let its start-up work (threads, first timer ticks) finish
                // so it does not compete with the measured run.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(Self { child });
            }
            if Instant::now() > deadline {
                bail!("the background roar-node did not start its command in 20 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: roar-node passes it to its command, writes the record, exits.
    pub fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let status = self.child.wait()?;
        // 128 + SIGTERM: the command was terminated, as asked.
        if status.code() != Some(143) && !status.success() {
            bail!("background roar-node ended with {status}");
        }
        Ok(())
    }
}

/// An enabled `syscalls/sys_exit_reboot` trace event, disabled on drop.
pub struct SyscallTracing(PathBuf);

impl SyscallTracing {
    pub fn enable() -> anyhow::Result<Self> {
        let file = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .map(|t| Path::new(t).join("events/syscalls/sys_exit_reboot/enable"))
            .find(|p| p.exists())
            .context("tracefs with syscall events is not mounted (run `cargo xtask setup`)")?;
        fs::write(&file, "1").with_context(|| format!("enabling {}", file.display()))?;
        Ok(Self(file))
    }
}

impl Drop for SyscallTracing {
    fn drop(&mut self) {
        let _ = fs::write(&self.0, "0");
    }
}
