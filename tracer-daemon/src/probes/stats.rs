//! The kernel's per-CPU counters (losses by cause, suppressed repeats),
//! and the one list of names for why an event of a traced task was lost,
//! used by the record (`capture.lost_by_cause`) and by `/metrics`
//! (`events_lost_total{cause}`) alike.

use aya::maps::{MapData, PerCpuArray};
use roar_node_common::{event::EventKind, loss};

use super::ProbeError;

/// Why an event of a traced task never reached its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum LossCause {
    /// The ring buffer had no room for it (every kind of event).
    KernelRingBufferFull,
    /// A read of kernel memory failed while it was being assembled.
    KernelReadFailed,
    /// The program had no per-CPU scratch buffer to assemble it in.
    KernelScratchUnavailable,
    /// A new cgroup below a traced one could not enter the full trace set:
    /// its processes' events are never sent.
    TraceSetFull,
    /// Read from the ring buffer, rejected by the decoder.
    Undecodable,
}

impl LossCause {
    pub(crate) const ALL: [LossCause; 5] = [
        LossCause::KernelRingBufferFull,
        LossCause::KernelReadFailed,
        LossCause::KernelScratchUnavailable,
        LossCause::TraceSetFull,
        LossCause::Undecodable,
    ];

    /// The name in records, stats and `/metrics`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            LossCause::KernelRingBufferFull => "kernel_ring_buffer_full",
            LossCause::KernelReadFailed => "kernel_read_failed",
            LossCause::KernelScratchUnavailable => "kernel_scratch_unavailable",
            LossCause::TraceSetFull => "trace_set_full",
            LossCause::Undecodable => "undecodable",
        }
    }

    /// The cause a kernel `STATS` counter counts, if it counts losses.
    pub(crate) fn of_kernel_counter(index: u32) -> Option<Self> {
        if !loss::is_loss(index) {
            return None;
        }
        Some(match index {
            loss::SCRATCH_UNAVAILABLE => LossCause::KernelScratchUnavailable,
            loss::KERNEL_READ_FAILED => LossCause::KernelReadFailed,
            loss::TRACE_SET_FULL => LossCause::TraceSetFull,
            // Sent, flagged: the event reached its task without an exact
            // path or with a field unknown. Not a lost event; its record
            // counts it (`inexact_events`, `unreadable_fields`) and
            // /metrics has the raw counter (`kernel_counters_total`).
            loss::PATH_INEXACT | loss::FIELD_UNREADABLE => return None,
            i if EventKind::ALL.iter().any(|k| loss::ringbuf_full(*k) == i) => {
                LossCause::KernelRingBufferFull
            }
            // A loss counter this build does not know: never hidden under
            // another cause's name, so not counted here (the raw counter
            // still reaches `kernel_counters`).
            _ => return None,
        })
    }
}

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

    /// Events lost in the kernel on this node, by cause (every cause the
    /// kernel counts, zeros included).
    pub(crate) fn lost_by_cause(&self) -> Vec<(LossCause, u64)> {
        let mut by: std::collections::BTreeMap<LossCause, u64> = LossCause::ALL
            .into_iter()
            .filter(|c| *c != LossCause::Undecodable)
            .map(|c| (c, 0))
            .collect();
        for (i, v) in self.counters.iter().enumerate() {
            if let Some(c) = LossCause::of_kernel_counter(i as u32) {
                *by.entry(c).or_default() += v;
            }
        }
        by.into_iter().collect()
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

    /// Every kernel counter of lost events is one cause's, and the causes
    /// add up to every event the kernel lost (ring-buffer losses of every
    /// kind under one name); events sent flagged inexact are not lost.
    #[test]
    fn every_kernel_loss_counter_has_one_cause() {
        let mut counters = vec![0; loss::STATS_LEN as usize];
        for (i, c) in counters.iter_mut().enumerate() {
            *c = 1 << i;
        }
        let stats = KernelStats { counters };
        let by = stats.lost_by_cause();
        let flagged = [loss::PATH_INEXACT, loss::FIELD_UNREADABLE];
        let sent_flagged: u64 = flagged.iter().map(|i| stats.get(*i)).sum();
        assert_eq!(
            by.iter().map(|(_, v)| v).sum::<u64>(),
            stats.lost() - sent_flagged
        );
        let get = |c| by.iter().find(|(x, _)| *x == c).map(|(_, v)| *v);
        let ring: u64 = EventKind::ALL
            .iter()
            .map(|k| 1u64 << loss::ringbuf_full(*k))
            .sum();
        assert_eq!(get(LossCause::KernelRingBufferFull), Some(ring));
        assert_eq!(
            get(LossCause::TraceSetFull),
            Some(1 << loss::TRACE_SET_FULL)
        );
        for i in 0..loss::STATS_LEN {
            assert_eq!(
                loss::is_loss(i) && !flagged.contains(&i),
                LossCause::of_kernel_counter(i).is_some(),
                "counter {i} ({:?})",
                loss::stat_name(i)
            );
        }
        let names: std::collections::BTreeSet<_> =
            LossCause::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), LossCause::ALL.len());
    }
}
