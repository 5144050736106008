//! Programs and maps pinned in bpffs, so that capture goes on while the
//! daemon is down after a crash: the links keep the programs attached,
//! the trace filter keeps its entries, and events wait in the pinned ring
//! buffer (or are counted as lost on their task when it is full) for the
//! next daemon, which adopts them.
//!
//! A set is adopted only if it is complete and was made by the same eBPF
//! object with the same map sizes on this boot (the `id` file, written
//! last); anything else is replaced. A daemon that stops normally removes
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
pub const MAPS: [&str; 3] = ["EVENTS", "TRACED", "STATS"];
const ID_FILE: &str = "id";

/// What a previous daemon left attached.
pub struct Adopted {
    pub events: Map,
    pub traced: Map,
    pub stats: Map,
    pub links: Vec<PinnedLink>,
}

/// Identifies the pinned set: the object, the map sizes and the boot.
pub fn set_id(programs: &[u8], ring_buffer_bytes: u32, seen_entries: u32) -> String {
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

/// The set pinned in `dir`, if it is complete and `id`'s.
pub fn adopt(dir: &Path, id: &str, links: &[String]) -> Option<Adopted> {
    if fs::read_to_string(dir.join(ID_FILE)).ok()?.trim() != id {
        return None;
    }
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

/// Pins the freshly attached set in `dir` (after removing what was there:
/// an incompatible or incomplete set, whose programs detach now that ours
/// are attached). The id is written last: a set interrupted half-way is
/// never adopted. Returns the links (pinned, or not if pinning failed:
/// they must stay open either way) and the error, if any.
pub fn pin(
    dir: &Path,
    id: &str,
    ebpf: &Ebpf,
    links: Vec<(String, FdLink)>,
) -> (Vec<PinnedLink>, Vec<FdLink>, Option<String>) {
    remove(dir);
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
    if error.is_none() {
        let tmp = dir.join(format!("{ID_FILE}.tmp"));
        error = fs::write(&tmp, id)
            .and_then(|()| fs::rename(&tmp, dir.join(ID_FILE)))
            .err()
            .map(|e| format!("{}: {e}", dir.display()));
    }
    if error.is_some() {
        remove(dir);
    }
    (pinned, unpinned, error)
}

/// Removes the pins in `dir` (ours only: `id`, `map-*`, `link-*`).
pub fn remove(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == ID_FILE
            || name == "id.tmp"
            || name.starts_with("map-")
            || name.starts_with("link-")
        {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}
