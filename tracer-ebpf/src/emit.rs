//! Assembling an event in the per-CPU scratch buffer and sending it.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns};
use roar_node_common::{
    event::{EventHeader, EventKind},
    limits::SCRATCH_SIZE,
    loss,
    traced::TracedCgroup,
};

use crate::maps::{EVENTS, SCRATCH, atomic_add, atomic_add32, count, global};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// The error `scratch` returns. No helper returns it, so `abandoned` can
/// tell it from a failed kernel read.
pub const NO_SCRATCH: i64 = i64::MIN;

/// The scratch buffer of this CPU. Its absence is counted by `abandoned`,
/// where the error ends up.
#[inline(always)]
pub fn scratch() -> Result<*mut u8, i64> {
    match SCRATCH.get_ptr_mut(0) {
        Some(p) => Ok(p.cast::<u8>()),
        None => Err(NO_SCRATCH),
    }
}

/// An event given up before it was sent, with the error that stopped it:
/// every program's single exit for errors, reached only once the task was
/// known to be traced (`task`: its root entry, or NULL when it is not
/// known, as for an untraced cgroup's lifecycle event). Counted per cause
/// in `STATS` and on the task's entry (`lost`, and `read_failed`), like a
/// full ring buffer, so the loss reaches the task's record. Costs nothing
/// on success: callers hold the entry already.
#[inline(always)]
pub fn abandoned(task: *mut TracedCgroup, err: i64) {
    count(if err == NO_SCRATCH {
        loss::SCRATCH_UNAVAILABLE
    } else {
        loss::KERNEL_READ_FAILED
    });
    if !task.is_null() {
        atomic_add(unsafe { &raw mut (*task).lost }, 1);
        atomic_add32(unsafe { &raw mut (*task).read_failed }, 1);
    }
}

/// Writes `v` at byte offset `at` of the scratch buffer. `at` is a constant
/// at every call site, so the verifier can check the bounds.
#[inline(always)]
pub fn put<T>(buf: *mut u8, at: usize, v: T) {
    unsafe { core::ptr::write_unaligned(buf.add(at).cast::<T>(), v) }
}

/// A header for an event of the current task, attributed to task `root`.
#[inline(always)]
pub fn header(kind: EventKind, root: u64) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind: kind as u16,
        flags: 0,
        size: 0,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        cgroup_id: root,
        timestamp_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// Sends `size` bytes of the scratch buffer (which starts with a header
/// whose `size` field this fills in). A failed send is never silent: it is
/// counted per kind in `STATS` and on the task's filter entry, so it shows
/// up in the task's record.
#[inline(always)]
pub fn submit(buf: *mut u8, size: usize, kind: EventKind, task: *mut TracedCgroup) -> bool {
    // Masking proves to the verifier that the read stays inside the buffer.
    let size = size & (SCRATCH_SIZE - 1);
    put::<u32>(buf, core::mem::offset_of!(EventHeader, size), size as u32);
    let data = unsafe { core::slice::from_raw_parts(buf as *const u8, size) };
    // Wake the consumer at once for an exec (it must open the new
    // process's mount namespace while the process still lives) and for a
    // new cgroup (a container's cgroup must reach the filter before its
    // first exec); batch everything else by fill level.
    let urgent = matches!(kind, EventKind::Exec | EventKind::CgroupMkdir);
    let flags = if urgent || EVENTS.query(BPF_RB_AVAIL_DATA) >= global!(CONFIG.wakeup_bytes) {
        count(loss::FORCED_WAKEUPS);
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<[u8]>(data, flags).is_ok() {
        return true;
    }
    count(loss::ringbuf_full(kind));
    if !task.is_null() {
        atomic_add(unsafe { &raw mut (*task).lost }, 1);
    }
    false
}
