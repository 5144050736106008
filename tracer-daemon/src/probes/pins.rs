//! Programs and maps pinned in bpffs, so that capture goes on while the
//! daemon is down after a crash: the links keep the programs attached,
//! the trace filter keeps its entries, and events wait in the pinned ring
//! buffer (or are counted as lost on their task when it is full) for the
//! next daemon, which adopts them.
//!
//! A set lives in a directory named after its id (the eBPF object, the map
//! sizes and the boot: bpffs holds pins and directories, no plain files),
//! and is adopted only if it is this daemon's id and complete; anything
//! else is replaced. A daemon that stops normally removes
//! its pins (the programs detach when it exits): an uninstalled DaemonSet
//! leaves nothing attached.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
    programs::links::{FdLink, PinnedLink},
};

/// The maps userspace needs after a restart (the others stay alive
/// through the programs that use them).
pub(crate) const MAPS: [&str; 3] = ["EVENTS", "TRACED", "STATS"];

/// What a previous daemon left attached.
pub(crate) struct Adopted {
    pub(crate) events: Map,
    pub(crate) traced: Map,
    pub(crate) stats: Map,
    pub(crate) links: Vec<PinnedLink>,
}

/// Identifies the pinned set: the object, the map sizes and the boot.
pub(crate) fn set_id(programs: &[u8], ring_buffer_bytes: u32, seen_entries: u32) -> String {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(programs);
    h.update(&ring_buffer_bytes.to_le_bytes());
    h.update(&seen_entries.to_le_bytes());
    h.update(boot.trim().as_bytes());
    h.finalize().to_hex().to_string()
}

fn map_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("map-{name}"))
}

fn link_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("link-{name}"))
}

fn set_dir(root: &Path, id: &str) -> PathBuf {
    root.join(&id[..16.min(id.len())])
}

/// The set pinned under `root`, if it is `id`'s and complete.
pub(crate) fn adopt(root: &Path, id: &str, links: &[String]) -> Option<Adopted> {
    let dir = &set_dir(root, id);
    let map = |name: &str| MapData::from_pin(map_path(dir, name)).ok();
    let events = Map::RingBuf(map("EVENTS")?);
    let traced = Map::HashMap(map("TRACED")?);
    let stats = Map::PerCpuArray(map("STATS")?);
    let links = links
        .iter()
        .map(|l| PinnedLink::from_pin(link_path(dir, l)).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(Adopted {
        events,
        traced,
        stats,
        links,
    })
}

/// Pins the freshly attached set under `root` (after removing what was
/// there: an incompatible or incomplete set, whose programs detach now
/// that ours are attached). A set interrupted half-way is incomplete, so
/// never adopted. Returns the links (pinned, or not if pinning failed:
/// they must stay open either way) and the error, if any.
pub(crate) fn pin(
    root: &Path,
    id: &str,
    ebpf: &Ebpf,
    links: Vec<(String, FdLink)>,
) -> (Vec<PinnedLink>, Vec<FdLink>, Option<String>) {
    remove(root);
    let dir = &set_dir(root, id);
    let mut pinned = Vec::new();
    let mut unpinned = Vec::new();
    let mut error = fs::create_dir_all(dir)
        .err()
        .map(|e| format!("{}: {e}", dir.display()));
    for name in MAPS {
        if error.is_some() {
            break;
        }
        error = match ebpf.map(name) {
            Some(map) => map
                .pin(map_path(dir, name))
                .err()
                .map(|e| format!("pinning map {name} in {}: {e}", dir.display())),
            None => Some(format!("map {name} missing")),
        };
    }
    for (name, link) in links {
        if error.is_some() {
            unpinned.push(link);
            continue;
        }
        // Our PinnedLink keeps an fd; the pin keeps it attached after us.
        match link.pin(link_path(dir, &name)) {
            Ok(p) => pinned.push(p),
            Err(e) => error = Some(format!("pinning link {name} in {}: {e}", dir.display())),
        }
    }
    if error.is_some() {
        remove(root);
    }
    (pinned, unpinned, error)
}

/// Removes every set under `root` (ours only: `map-*` and `link-*` pins in
/// the sets' directories), then `root` if empty.
pub(crate) fn remove(root: &Path) {
    let Ok(sets) = fs::read_dir(root) else {
        return;
    };
    for set in sets.flatten() {
        let Ok(pins) = fs::read_dir(set.path()) else {
            continue;
        };
        for e in pins.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("map-") || name.starts_with("link-") {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(set.path());
    }
    let _ = fs::remove_dir(root);
}
