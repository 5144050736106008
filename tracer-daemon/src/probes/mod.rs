//! The only code that talks to aya: load the eBPF object with this
//! kernel's struct offsets, attach every program, and own the maps the
//! rest of the daemon uses (trace filter, loss counters, ring buffer).

mod btf;
#[cfg(test)]
mod kernel_tests;
mod pins;
pub(crate) mod preflight;
mod ring_fill;
mod stats;
mod syscall_exit_layout;
mod traced;

use std::path::PathBuf;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Map, MapData, RingBuf},
    programs::{
        BtfTracePoint, ProgramError, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use roar_node_common::{offsets::TracerConfig, syscalls};

pub(crate) use self::{
    btf::KernelBtf,
    ring_fill::RingFill,
    stats::{KernelStats, LossCause, StatsReader},
    traced::TracedCgroups,
};

/// The compiled programs, built by build.rs from tracer-ebpf.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/roar-node"));

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("kernel BTF: {0}")]
    Btf(String),
    #[error(
        "this roar-node was built without its eBPF programs (AYA_BUILD_SKIP was set); rebuild with `cargo build`"
    )]
    NoPrograms,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel refused program `{program}`: {reason}")]
    Refused { program: String, reason: String },
    #[error("program `{0}` is missing from the eBPF object")]
    Missing(&'static str),
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{0}")]
    Preflight(String),
}

/// Knobs for loading.
#[derive(Clone, Debug)]
pub(crate) struct ProbeOptions {
    /// Ring buffer size: a power of two, at least one page.
    pub(crate) ring_buffer_bytes: u32,
    /// Wake the consumer once this many bytes are waiting; below that the
    /// daemon drains on its timer.
    pub(crate) wakeup_bytes: u64,
    /// Entries of the repeat-open suppression map.
    pub(crate) seen_entries: u32,
    /// Where the kernel's BTF is.
    pub(crate) btf_path: PathBuf,
    /// Pin programs and maps here (a bpffs directory) and adopt a set a
    /// crashed daemon left: capture goes on while no daemon runs.
    pub(crate) pin_dir: Option<PathBuf>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 8 << 20,
            wakeup_bytes: 1 << 20,
            seen_entries: 256 * 1024,
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
            pin_dir: None,
        }
    }
}

/// Which programs attach where. tracepoints, raw tracepoints and tp_btf
/// only: this is the set every kernel we support allows (fentry and LSM
/// are refused on some, kprobes are missing on others).
///
/// File syscalls: one program on each `syscalls/sys_exit_<name>` of
/// `syscalls::TRACED_EXITS` (not the raw `sys_exit`, which would run a
/// program on every syscall of every process on the node).
const FILE_PROGRAM: &str = "sys_exit_file";
const BTF_TRACEPOINTS: &[(&str, &str)] = &[
    ("sched_process_exec", "sched_process_exec"),
    ("sched_process_fork", "sched_process_fork"),
    ("sched_process_exit", "sched_process_exit"),
    ("cgroup_mkdir", "cgroup_mkdir"),
    ("cgroup_rmdir", "cgroup_rmdir"),
];

/// Loaded and attached programs, and the maps userspace needs.
pub(crate) struct Probes {
    /// The loaded object: it holds the programs and links not taken out
    /// of it (absent when adopted from pins).
    _ebpf: Option<Ebpf>,
    /// The ring buffer, until `take_events` (adopted: from its pin).
    events: Option<Map>,
    /// Its producer and consumer positions, once `take_events` ran.
    pub(crate) ring_fill: Option<RingFill>,
    pub(crate) traced: TracedCgroups,
    pub(crate) stats: StatsReader,
    pub(crate) options: ProbeOptions,
    /// The links, held for our lifetime (pinned ones outlive us).
    _pinned_links: Vec<PinnedLink>,
    _links: Vec<FdLink>,
    /// A crashed daemon's programs were found attached and adopted: what
    /// happened while no daemon ran is in the ring buffer (or counted as
    /// lost on its task).
    pub(crate) adopted: bool,
    /// Why pinning failed, if it was asked for and did.
    pub(crate) pin_error: Option<String>,
}

/// Names of the pinned links: one per syscall exit, one per tp_btf.
fn link_names() -> Vec<String> {
    syscalls::TRACED_EXITS
        .iter()
        .map(|n| format!("{FILE_PROGRAM}-{n}"))
        .chain(BTF_TRACEPOINTS.iter().map(|(n, _)| (*n).to_string()))
        .collect()
}

impl Probes {
    /// Loads and attaches everything (or adopts a set a crashed daemon
    /// left pinned). Errors are one line each, saying what the kernel
    /// refused.
    pub(crate) fn load(options: ProbeOptions) -> Result<Self, ProbeError> {
        if PROGRAMS.is_empty() {
            return Err(ProbeError::NoPrograms);
        }
        if !options.ring_buffer_bytes.is_power_of_two() || options.ring_buffer_bytes < 4096 {
            return Err(ProbeError::Preflight(format!(
                "ring buffer size {} is not a power of two of at least 4096 bytes",
                options.ring_buffer_bytes
            )));
        }
        let set_id = options
            .pin_dir
            .as_ref()
            .map(|_| pins::set_id(PROGRAMS, options.ring_buffer_bytes, options.seen_entries));
        if let (Some(dir), Some(id)) = (&options.pin_dir, &set_id)
            && let Some(a) = pins::adopt(dir, id, &link_names())
        {
            return Ok(Self {
                _ebpf: None,
                events: Some(a.events),
                ring_fill: None,
                traced: TracedCgroups::from_map(a.traced)?,
                stats: StatsReader::from_map(a.stats)?,
                options,
                _pinned_links: a.links,
                _links: Vec::new(),
                adopted: true,
                pin_error: None,
            });
        }
        let (mut ebpf, links) = load_and_attach(&options)?;
        let (pinned, unpinned, pin_error) = match (&options.pin_dir, &set_id) {
            (Some(dir), Some(id)) if links.len() == link_names().len() => {
                pins::pin(dir, id, &ebpf, links)
            }
            (Some(_), _) => (
                Vec::new(),
                links.into_iter().map(|(_, l)| l).collect(),
                Some("not every link can be pinned on this kernel".into()),
            ),
            _ => (Vec::new(), Vec::new(), None),
        };
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
        };
        let traced = TracedCgroups::from_map(take(&mut ebpf, "TRACED")?)?;
        let stats = StatsReader::from_map(take(&mut ebpf, "STATS")?)?;
        let events = Some(take(&mut ebpf, "EVENTS")?);
        Ok(Self {
            _ebpf: Some(ebpf),
            events,
            ring_fill: None,
            traced,
            stats,
            options,
            _pinned_links: pinned,
            _links: unpinned,
            adopted: false,
            pin_error,
        })
    }

    /// Leaves the programs attached until this process has exited, and
    /// detaches them in a short-lived child instead of here. Detaching a
    /// syscall tracepoint waits for RCU grace periods (tens of milliseconds
    /// each, ten tracepoints): half a second added to every `roar-node run`
    /// for nothing, since the record is already written and the filter is
    /// empty. The child holds the last references to the programs' links
    /// and exits when this process does (its pipe closes), so the kernel
    /// tears them down there. If the fork fails, they are detached here.
    pub(crate) fn detach_after_exit(self) {
        let mut fds = [0i32; 2];
        // SAFETY: plain syscalls; the child only calls async-signal-safe
        // functions (close, read, _exit) before exiting.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return;
            }
            match libc::fork() {
                0 => {
                    // Let whoever reads our stdout/stderr see EOF when the
                    // parent exits, not when this child does.
                    for fd in 0..3 {
                        libc::close(fd);
                    }
                    libc::close(fds[1]);
                    let mut byte = 0u8;
                    libc::read(fds[0], (&raw mut byte).cast(), 1);
                    libc::_exit(0);
                }
                -1 => {
                    libc::close(fds[0]);
                    libc::close(fds[1]);
                }
                _ => {
                    libc::close(fds[0]);
                    // The write end stays open until this process exits.
                    std::mem::forget(self);
                }
            }
        }
    }

    /// The ring buffer, for the one consumer. A view of how full it is
    /// stays here (`ring_fill`; `None`, said in the log, if its pages
    /// cannot be mapped).
    pub(crate) fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.events.take().ok_or(ProbeError::MissingMap("EVENTS"))?;
        if let Map::RingBuf(data) = &map {
            self.ring_fill = RingFill::new(data.fd())
                .map_err(|e| tracing::warn!(error = %e, "cannot map the ring buffer's positions: its unread bytes are not reported"))
                .ok();
        }
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            map: "EVENTS",
            source,
        })
    }

    /// Removes the pins (a normal stop): the programs detach when this
    /// process exits, and nothing stays attached after an uninstall.
    pub(crate) fn unpin(&self) {
        if let Some(dir) = &self.options.pin_dir {
            pins::remove(dir);
        }
    }
}

/// Loads the object with this kernel's offsets and attaches every
/// program. With a pin directory, the links are taken out of aya's
/// programs (ours to pin), named as `link_names` says.
fn load_and_attach(options: &ProbeOptions) -> Result<(Ebpf, Vec<(String, FdLink)>), ProbeError> {
    // Two parses of vmlinux BTF (ours for offsets, aya's for
    // relocations) are the daemon's peak memory: never hold both.
    let offsets = KernelBtf::from_file(&options.btf_path)?.kernel_offsets()?;
    let config = TracerConfig {
        wakeup_bytes: options.wakeup_bytes,
        daemon_tgid: std::process::id(),
        _pad: 0,
    };
    let btf = Btf::parse_file(&options.btf_path, aya::Endianness::default())
        .map_err(|e| ProbeError::Btf(e.to_string()))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("KERNEL", &offsets, true)
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", options.ring_buffer_bytes)
        .map_max_entries("SEEN", options.seen_entries)
        .load(PROGRAMS)?;

    syscall_exit_layout::check()?;
    let pinning = options.pin_dir.is_some();
    let mut links: Vec<(String, FdLink)> = Vec::new();
    let prog: &mut TracePoint = program(&mut ebpf, FILE_PROGRAM)?;
    prog.load().map_err(|e| refused(FILE_PROGRAM, e))?;
    for name in syscalls::TRACED_EXITS {
        let id = prog
            .attach("syscalls", &format!("sys_exit_{name}"))
            .map_err(|e| refused(&format!("{FILE_PROGRAM} on sys_exit_{name}"), e))?;
        if pinning {
            let link = prog.take_link(id).map_err(|e| refused(FILE_PROGRAM, e))?;
            match FdLink::try_from(link) {
                Ok(l) => links.push((format!("{FILE_PROGRAM}-{name}"), l)),
                Err(e) => {
                    tracing::warn!(error = %e, "tracepoint link cannot be pinned on this kernel")
                }
            }
        }
    }
    for (name, tp) in BTF_TRACEPOINTS {
        let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
        prog.load(tp, &btf).map_err(|e| refused(name, e))?;
        let id = prog.attach().map_err(|e| refused(name, e))?;
        if pinning {
            let link = prog.take_link(id).map_err(|e| refused(name, e))?;
            links.push(((*name).to_string(), FdLink::from(link)));
        }
    }
    drop(btf);
    // Hand the parsed BTF's freed heap back to the kernel: otherwise it
    // stays resident for the daemon's whole life.
    // SAFETY: malloc_trim only releases free memory.
    unsafe { libc::malloc_trim(0) };
    Ok((ebpf, links))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
    prog.try_into().map_err(|e| refused(name, e))
}

/// One line for the user; the verifier log goes to the debug log.
fn refused(name: &str, e: ProgramError) -> ProbeError {
    let reason = match &e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            tracing::debug!(program = name, "verifier log:\n{verifier_log}");
            let last = verifier_log.to_string();
            let last = last
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            if last.is_empty() {
                format!(
                    "{io_error} (empty verifier log: the program type is probably not allowed here)"
                )
            } else {
                format!("{io_error}: {last} (RUST_LOG=debug shows the verifier log)")
            }
        }
        other => other.to_string(),
    };
    ProbeError::Refused {
        program: name.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned in bpffs, the programs and the filter outlive the process
    /// that loaded them (dropped here as a crash would: its fds closed, no
    /// unpin); the next load adopts them, filter entries and all; a normal
    /// stop removes the pins. Needs root and bpffs at /sys/fs/bpf.
    #[test]
    fn pinned_set_is_adopted_after_a_crash() {
        let bpffs = std::path::Path::new("/sys/fs/bpf");
        if PROGRAMS.is_empty()
            || !nix::unistd::Uid::effective().is_root()
            || !std::fs::read_to_string("/proc/self/mounts")
                .is_ok_and(|m| m.lines().any(|l| l.contains(" /sys/fs/bpf bpf ")))
        {
            crate::test_support::skip(&format!(
                "needs root, the eBPF programs and bpffs at {}",
                bpffs.display()
            ));
            return;
        }
        let root = bpffs.join(format!("roar-node-test-{}", std::process::id()));
        let opts = ProbeOptions {
            pin_dir: Some(root.clone()),
            ..ProbeOptions::default()
        };
        let mut first = Probes::load(opts.clone()).unwrap();
        assert_eq!((first.adopted, &first.pin_error), (false, &None));
        first.traced.trace(0xfeed, 0).unwrap();
        drop(first);
        assert!(root.exists());
        let second = Probes::load(opts.clone()).unwrap();
        assert!(second.adopted, "{:?}", second.pin_error);
        assert_eq!(second.traced.get(0xfeed).map(|e| e.root), Some(0xfeed));
        second.unpin();
        assert!(!root.exists());
        drop(second);
        // Nothing pinned any more: a fresh load, not an adoption.
        let third = Probes::load(opts).unwrap();
        assert!(!third.adopted);
        third.unpin();
    }
}
