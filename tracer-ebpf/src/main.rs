//! roar-node's kernel half: every program here is attached by the daemon's
//! `probes` module. Entry points only dispatch (`try_` pattern); the work is
//! in the modules below.
//!
//! What runs where:
//! - `sys_exit_file` (tracepoint, attached to `syscalls/sys_exit_<name>` of
//!   each open, rename and unlink variant): checked at syscall exit so only
//!   successful calls are reported, and the syscall's arguments are read
//!   from the saved registers (the kernel has already faulted the user
//!   strings in). Per-syscall tracepoints, not the raw `sys_exit` one, so
//!   no program runs for any other syscall on the machine.
//! - `sched_process_exec/fork/exit` (tp_btf): the process tree and argv.
//! - `cgroup_mkdir/rmdir` (tp_btf): cgroup lifecycle, and in-kernel
//!   propagation of the trace filter to new child cgroups.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds on map values: core's atomics have no RMW for the bpf target.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod cgroups;
mod emit;
mod files;
mod kernel;
mod maps;
mod path;
mod process;
mod traced;

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use roar_node_common::loss;

#[tracepoint]
pub fn sys_exit_file(ctx: TracePointContext) -> u32 {
    if let Some((t, nr, ret)) = files::traced_exit(&ctx) {
        traced(t, files::try_sys_exit(t, nr, ret));
    }
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    if let Some(t) = traced::current() {
        traced(t, process::try_exec(&ctx, t));
    }
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    if let Some(t) = traced::current() {
        traced(t, process::try_fork(&ctx, t));
    }
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    if process::group_dead(&ctx)
        && let Some(t) = traced::current()
    {
        traced(t, process::try_exit(&ctx, t));
    }
    0
}

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    if cgroups::try_mkdir(&ctx).is_err() {
        maps::count(loss::CGROUP_READ_FAILED);
    }
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    if cgroups::try_rmdir(&ctx).is_err() {
        maps::count(loss::CGROUP_READ_FAILED);
    }
    0
}

/// The one exit of a traced task's handler: an error there is an event
/// given up (a kernel read failed after the filter let the task through),
/// never silently: counted globally and on the task, so its record shows
/// the loss and is marked partial.
#[inline(always)]
fn traced(t: traced::Traced, result: Result<(), i64>) {
    if let Err(e) = result {
        emit::abandoned(t.entry, e);
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
