//! Counters the kernel keeps in the per-CPU `STATS` array.
//!
//! Losses are counted twice: here (global, per cause) and in the traced
//! task's `TracedCgroup::lost` (so the loss reaches that task's record).

use crate::event::EventKind;

/// Index of the "ring buffer full" loss counter for events of `kind`.
pub const fn ringbuf_full(kind: EventKind) -> u32 {
    kind as u32
}

/// An event could not be assembled (scratch buffer unavailable).
pub const SCRATCH_UNAVAILABLE: u32 = EventKind::COUNT as u32;
/// Opens suppressed in the kernel because this task already reported the
/// same file with the same access.
pub const OPEN_REPEAT_SUPPRESSED: u32 = SCRATCH_UNAVAILABLE + 1;
/// Successful opens of things that are not regular files (pipes, sockets,
/// directories, devices, anonymous inodes): not files, not reported.
pub const OPEN_NOT_REGULAR: u32 = SCRATCH_UNAVAILABLE + 2;
/// Forced ring-buffer wakeups (buffer filling up between timer drains).
pub const FORCED_WAKEUPS: u32 = SCRATCH_UNAVAILABLE + 3;
/// The dedup map refused an insert: the event was still sent.
pub const DEDUP_INSERT_FAILED: u32 = SCRATCH_UNAVAILABLE + 4;
/// An event of a traced task was abandoned before it was sent because a
/// read of kernel memory (`bpf_probe_read_kernel`, a NULL pointer where a
/// struct was expected, a saved syscall argument) failed. Also counted on
/// the task's `TracedCgroup` (`lost` and `read_failed`).
pub const KERNEL_READ_FAILED: u32 = SCRATCH_UNAVAILABLE + 5;
/// A cgroup mkdir/rmdir could not be read far enough to tell whether the
/// cgroup is traced. Not attributable to a task and usually about a cgroup
/// nobody traces, so not counted as a loss; it should stay zero.
pub const CGROUP_READ_FAILED: u32 = SCRATCH_UNAVAILABLE + 6;

/// A new cgroup below a traced one could not be added to the trace filter
/// (the map is full): the processes in it are not traced. Its task's
/// record (if it is a task's sub-cgroup) counts the loss; a new container
/// is retried from userspace and recorded as partial.
pub const TRACE_SET_FULL: u32 = SCRATCH_UNAVAILABLE + 7;

/// An event was sent with a path the kernel could not resolve to the end
/// (`path::PATH_INCOMPLETE`: deeper than PATH_MAX, a failed read during the
/// walk, an unreadable file name argument, ...). The event is not lost,
/// the exact path is: its record names the path as inexact and is partial.
pub const PATH_INEXACT: u32 = SCRATCH_UNAVAILABLE + 8;
/// An event was sent with a field a failed kernel read left unknown (the
/// parent, mount namespace or uid of an exec; the flags or size of an
/// open): flagged on the event, never sent as 0. Its record says which and
/// is partial.
pub const FIELD_UNREADABLE: u32 = SCRATCH_UNAVAILABLE + 9;

/// Size of the `STATS` array.
pub const STATS_LEN: u32 = SCRATCH_UNAVAILABLE + 10;

/// Human names for the counters, for metrics and records.
pub fn stat_name(index: u32) -> Option<&'static str> {
    if index >= 1 && (index as usize) < EventKind::COUNT {
        return EventKind::from_u16(index as u16).map(|k| match k {
            EventKind::Exec => "lost_ringbuf_full_exec",
            EventKind::Fork => "lost_ringbuf_full_fork",
            EventKind::Exit => "lost_ringbuf_full_exit",
            EventKind::Open => "lost_ringbuf_full_open",
            EventKind::Rename => "lost_ringbuf_full_rename",
            EventKind::Unlink => "lost_ringbuf_full_unlink",
            EventKind::CgroupMkdir => "lost_ringbuf_full_cgroup_mkdir",
            EventKind::CgroupRmdir => "lost_ringbuf_full_cgroup_rmdir",
            EventKind::Link => "lost_ringbuf_full_link",
        });
    }
    Some(match index {
        SCRATCH_UNAVAILABLE => "lost_scratch_unavailable",
        OPEN_REPEAT_SUPPRESSED => "open_repeat_suppressed",
        OPEN_NOT_REGULAR => "open_not_regular_file",
        FORCED_WAKEUPS => "ringbuf_forced_wakeups",
        DEDUP_INSERT_FAILED => "dedup_insert_failed",
        KERNEL_READ_FAILED => "lost_kernel_read_failed",
        CGROUP_READ_FAILED => "cgroup_read_failed",
        TRACE_SET_FULL => "lost_filter_full",
        PATH_INEXACT => "lost_path_inexact",
        FIELD_UNREADABLE => "lost_field_unreadable",
        _ => return None,
    })
}

/// Whether the counter at `index` counts losses: events lost, or events
/// sent without something they should carry (an exact path, a field).
pub const fn is_loss(index: u32) -> bool {
    (index >= 1 && (index as usize) < EventKind::COUNT)
        || index == SCRATCH_UNAVAILABLE
        || index == KERNEL_READ_FAILED
        || index == TRACE_SET_FULL
        || index == PATH_INEXACT
        || index == FIELD_UNREADABLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_fits_in_stats_and_has_one_name() {
        let named = [
            SCRATCH_UNAVAILABLE,
            OPEN_REPEAT_SUPPRESSED,
            OPEN_NOT_REGULAR,
            FORCED_WAKEUPS,
            DEDUP_INSERT_FAILED,
            KERNEL_READ_FAILED,
            CGROUP_READ_FAILED,
            TRACE_SET_FULL,
            PATH_INEXACT,
            FIELD_UNREADABLE,
        ];
        for (i, a) in named.iter().enumerate() {
            assert!(*a < STATS_LEN, "counter {a} is outside STATS");
            assert!(stat_name(*a).is_some(), "counter {a} has no name");
            for b in &named[i + 1..] {
                assert_ne!(a, b);
                assert_ne!(stat_name(*a), stat_name(*b));
            }
        }
        for k in EventKind::ALL {
            assert!(ringbuf_full(k) < SCRATCH_UNAVAILABLE);
        }
    }

    #[test]
    fn kernel_read_failures_are_losses() {
        assert_eq!(
            stat_name(KERNEL_READ_FAILED),
            Some("lost_kernel_read_failed")
        );
        assert!(is_loss(KERNEL_READ_FAILED));
        assert!(is_loss(SCRATCH_UNAVAILABLE));
        // Not attributable to a traced task: named, not a loss.
        assert_eq!(stat_name(CGROUP_READ_FAILED), Some("cgroup_read_failed"));
        assert!(!is_loss(CGROUP_READ_FAILED));
        assert!(!is_loss(OPEN_REPEAT_SUPPRESSED));
        assert!(!is_loss(DEDUP_INSERT_FAILED));
        // Events sent without their exact path or a field: losses too.
        assert!(is_loss(PATH_INEXACT) && is_loss(FIELD_UNREADABLE));
        assert_eq!(stat_name(PATH_INEXACT), Some("lost_path_inexact"));
        assert_eq!(stat_name(FIELD_UNREADABLE), Some("lost_field_unreadable"));
    }
}
