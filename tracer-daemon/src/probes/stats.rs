//! The kernel's per-CPU counters (losses by cause, suppressed repeats).

use aya::maps::{MapData, PerCpuArray};
use roar_node_common::loss;

use super::ProbeError;

pub(crate) struct StatsReader {
    map: PerCpuArray<MapData, u64>,
}

/// Counter values summed over CPUs, indexed as `roar_node_common::loss`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelStats {
    pub(crate) counters: Vec<u64>,
}

impl KernelStats {
    /// Named non-zero counters.
    pub(crate) fn named(&self) -> Vec<(&'static str, u64)> {
        self.counters
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((loss::stat_name(i as u32)?, *v)))
            .collect()
    }

    /// Events lost in the kernel, all causes.
    #[cfg(test)]
    pub(crate) fn lost(&self) -> u64 {
        self.counters
            .iter()
            .enumerate()
            .filter(|(i, _)| loss::is_loss(*i as u32))
            .map(|(_, v)| v)
            .sum()
    }

    #[cfg(test)]
    pub(crate) fn get(&self, index: u32) -> u64 {
        self.counters.get(index as usize).copied().unwrap_or(0)
    }
}

impl StatsReader {
    pub(super) fn from_map(map: aya::maps::Map) -> Result<Self, ProbeError> {
        let map = PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
            map: "STATS",
            source,
        })?;
        Ok(Self { map })
    }

    pub(crate) fn read(&self) -> KernelStats {
        let counters = (0..loss::STATS_LEN)
            .map(|i| self.map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
            .collect();
        KernelStats { counters }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_read_failures_are_named_and_lost() {
        let mut counters = vec![0; loss::STATS_LEN as usize];
        counters[loss::KERNEL_READ_FAILED as usize] = 3;
        counters[loss::CGROUP_READ_FAILED as usize] = 5;
        counters[loss::OPEN_REPEAT_SUPPRESSED as usize] = 11;
        let stats = KernelStats { counters };
        let named = stats.named();
        assert!(named.contains(&("lost_kernel_read_failed", 3)), "{named:?}");
        assert!(named.contains(&("cgroup_read_failed", 5)), "{named:?}");
        // Only the kernel read failures are lost events.
        assert_eq!(stats.lost(), 3);
        assert_eq!(stats.get(loss::KERNEL_READ_FAILED), 3);
    }
}
