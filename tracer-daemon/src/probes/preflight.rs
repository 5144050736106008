//! Checks made before loading anything, so a user gets one clear line
//! instead of an EPERM from deep inside the loader.

use std::path::Path;

use super::ProbeError;

pub(crate) const CAP_DAC_READ_SEARCH: u32 = 2;
pub(crate) const CAP_SYS_CHROOT: u32 = 18;
pub(crate) const CAP_SYS_PTRACE: u32 = 19;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_PERFMON: u32 = 38;
pub(crate) const CAP_BPF: u32 = 39;

/// Capabilities roar-node cannot work without, and why. The kernel lets
/// CAP_SYS_ADMIN stand in for both (bpf_capable(), perfmon_capable()).
pub(crate) const REQUIRED: &[(u32, &str)] = &[
    (
        CAP_BPF,
        "CAP_BPF or CAP_SYS_ADMIN (load programs, create maps)",
    ),
    (
        CAP_PERFMON,
        "CAP_PERFMON or CAP_SYS_ADMIN (attach tracing programs, read kernel memory)",
    ),
];

/// The effective capability set of this process.
pub(crate) fn effective_caps() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| std::io::Error::other("no CapEff in /proc/self/status"))
}

/// Capabilities roar-node works without, at a cost it warns about.
pub(crate) const RECOMMENDED: &[(u32, &str)] = &[
    (
        CAP_SYS_ADMIN,
        "CAP_SYS_ADMIN: cannot enter another mount namespace (setns); files of tasks in their own mount namespace (containers) will be recorded unhashed",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH: files the task can read but roar-node cannot will be recorded unhashed",
    ),
    (
        CAP_SYS_CHROOT,
        "CAP_SYS_CHROOT: cannot enter another mount namespace (setns needs it with CAP_SYS_ADMIN); files seen only there will be recorded unhashed",
    ),
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE: mount namespaces of other users' processes cannot be held; their files may be recorded unhashed",
    ),
];

pub(crate) fn check_capabilities() -> Result<(), ProbeError> {
    let caps = effective_caps()
        .map_err(|e| ProbeError::Preflight(format!("cannot read capabilities: {e}")))?;
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let missing: Vec<&str> = REQUIRED
        .iter()
        // Some container runtimes do not know the newer names: the
        // kernel accepts CAP_SYS_ADMIN for both.
        .filter(|(bit, _)| !(has(*bit) || has(CAP_SYS_ADMIN)))
        .map(|(_, why)| *why)
        .collect();
    if missing.is_empty() {
        for (bit, why) in RECOMMENDED {
            if caps & (1u64 << bit) == 0 {
                tracing::warn!("missing {why}");
            }
        }
        return Ok(());
    }
    let who = if nix::unistd::geteuid().is_root() {
        "running as root but"
    } else {
        "not running as root and"
    };
    Err(ProbeError::Preflight(format!(
        "roar-node needs root or these capabilities; {who} missing: {}",
        missing.join(", ")
    )))
}

pub(crate) fn check_btf(path: &Path) -> Result<(), ProbeError> {
    if path.exists() {
        return Ok(());
    }
    Err(ProbeError::Preflight(format!(
        "no kernel BTF at {}: roar-node needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        path.display()
    )))
}
