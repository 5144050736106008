//! The kernel's trace filter, seen from userspace.

use aya::maps::{HashMap, MapData, MapError};
use roar_node_common::traced::TracedCgroup;

use super::ProbeError;

const BPF_ANY: u64 = 0;

/// cgroup id -> filter entry (see `roar_node_common::filter`).
pub(crate) struct TracedCgroups {
    map: HashMap<MapData, u64, TracedCgroup>,
}

impl TracedCgroups {
    pub(super) fn from_map(map: aya::maps::Map) -> Result<Self, ProbeError> {
        let map = HashMap::try_from(map).map_err(|source| ProbeError::Map {
            map: "TRACED",
            source,
        })?;
        Ok(Self { map })
    }

    /// Starts tracing `cgroup` as a task root.
    pub(crate) fn trace(&mut self, cgroup: u64, flags: u32) -> Result<(), MapError> {
        // Already a task root (in a filter a crashed daemon left, adopted
        // from its pin): keep its epoch and its loss count.
        let entry = match self.get(cgroup) {
            Some(e) if e.root == cgroup && e.flags == flags => return Ok(()),
            Some(e) if e.root == cgroup => TracedCgroup { flags, ..e },
            _ => TracedCgroup {
                root: cgroup,
                flags,
                ..TracedCgroup::default()
            },
        };
        self.map.insert(cgroup, entry, BPF_ANY)
    }

    /// Inserts an entry as is (tests fill the map with it).
    #[cfg(test)]
    pub(crate) fn insert_raw(&mut self, cgroup: u64, entry: TracedCgroup) -> Result<(), MapError> {
        self.map.insert(cgroup, entry, BPF_ANY)
    }

    /// The task's entry (its epoch and kernel-side loss count).
    pub(crate) fn get(&self, cgroup: u64) -> Option<TracedCgroup> {
        self.map.get(&cgroup, 0).ok()
    }

    /// Every entry (the map holds at most 16 Ki).
    pub(crate) fn entries(&self) -> Vec<(u64, TracedCgroup)> {
        self.map.iter().filter_map(|kv| kv.ok()).collect()
    }

    /// Removes one entry, whatever it is.
    pub(crate) fn remove(&mut self, id: u64) {
        let _ = self.map.remove(&id);
    }

    /// Stops tracing a task: removes its root and every descendant the
    /// kernel added for it. Returns the root's last entry.
    pub(crate) fn untrace(&mut self, root: u64) -> Option<TracedCgroup> {
        let last = self.get(root);
        let children: Vec<u64> = self
            .map
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(id, e)| e.root == root && *id != root)
            .map(|(id, _)| id)
            .collect();
        for id in children {
            let _ = self.map.remove(&id);
        }
        let _ = self.map.remove(&root);
        last
    }
}
