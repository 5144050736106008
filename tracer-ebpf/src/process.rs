//! The process tree: exec (with argv), fork/clone, exit.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, generated::bpf_probe_read_user},
    programs::BtfTracePointContext,
};
use roar_node_common::{
    event::{
        EXEC_ARGV_READ_ERROR, EXEC_ARGV_TRUNCATED, EXEC_MNT_NS_UNKNOWN, EXEC_PPID_UNKNOWN,
        EXEC_UID_UNKNOWN, EXIT_GROUP_DEAD, EventHeader, EventKind, ExecData, ExitData, FORK_THREAD,
        ForkData,
    },
    limits::ARGV_MAX,
    loss,
    path::{PATH_READ_ERROR, PathHeader},
};

use crate::{
    emit::{header, put, scratch, submit},
    kernel::*,
    maps::{count, global},
    path::{count_if_incomplete, walk},
    traced::Traced,
};

/// Fields whose failed read `try_exec` flags (and counts) instead of
/// sending a made-up value.
const EXEC_UNKNOWN: u32 =
    EXEC_ARGV_READ_ERROR | EXEC_PPID_UNKNOWN | EXEC_MNT_NS_UNKNOWN | EXEC_UID_UNKNOWN;

const EXEC_TAIL: usize = size_of::<EventHeader>() + size_of::<ExecData>();
/// argv lands after the executable's path (at most ~4.3 KiB past
/// EXEC_TAIL); masking its offset with this proves the bound.
const ARGV_OFFSET_MASK: usize = 0x1fff;

/// argv as copied into an exec event.
struct Argv {
    /// Bytes copied.
    len: u64,
    /// Bytes in the process image.
    total: u64,
    /// `EXEC_ARGV_*` flags.
    flags: u32,
}

/// Copies the new image's argv (the kernel just wrote it, so it is
/// resident) to scratch offset `at`, cut at `ARGV_MAX`. A failed read of
/// its bounds or bytes is flagged: an empty argv would look like a fact.
#[inline(always)]
fn read_argv(task: u64, buf: *mut u8, at: usize) -> Argv {
    let bounds = read_ptr(task, global!(KERNEL.task_mm)).and_then(|mm| {
        let start: u64 = read(mm, global!(KERNEL.mm_arg_start))?;
        let end: u64 = read(mm, global!(KERNEL.mm_arg_end))?;
        Ok((start, end))
    });
    let Ok((start, end)) = bounds else {
        return Argv {
            len: 0,
            total: 0,
            flags: EXEC_ARGV_READ_ERROR,
        };
    };
    let total = end.saturating_sub(start);
    let (len, mut flags) = if total > (ARGV_MAX - 1) as u64 {
        ((ARGV_MAX - 1) as u64, EXEC_ARGV_TRUNCATED)
    } else {
        (total, 0)
    };
    let rc = unsafe {
        bpf_probe_read_user(
            buf.add(at & ARGV_OFFSET_MASK).cast::<c_void>(),
            (len as u32) & (ARGV_MAX as u32 - 1),
            start as *const c_void,
        )
    };
    if rc < 0 {
        flags |= EXEC_ARGV_READ_ERROR;
        return Argv {
            len: 0,
            total,
            flags,
        };
    }
    Argv { len, total, flags }
}

/// sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
/// For a traced task; an error means the event was abandoned.
pub fn try_exec(ctx: &BtfTracePointContext, t: Traced) -> Result<(), i64> {
    let task: u64 = ctx.arg(0);
    let bprm: u64 = ctx.arg(2);
    let buf = scratch()?;

    let exe = read_ptr(bprm, global!(KERNEL.bprm_file))
        .and_then(|f| read_path(f, global!(KERNEL.file_f_path)))
        .and_then(|start| Ok((start, task_fs_path(task, global!(KERNEL.fs_root))?)));
    let (exe_len, exe_flags) = match exe {
        Ok((start, root)) => {
            let w = walk(EXEC_TAIL, start, root);
            (w.len, w.flags)
        }
        Err(_) => (0, PATH_READ_ERROR),
    };
    count_if_incomplete(exe_flags);

    let argv_at = EXEC_TAIL + exe_len as usize;
    let argv = read_argv(task, buf, argv_at);
    let (len, total, mut flags) = (argv.len, argv.total, argv.flags);

    // A failed read is flagged, never sent as a value: ppid 0 or mount
    // namespace 0 would be taken for facts.
    let ppid = read_ptr(task, global!(KERNEL.task_real_parent))
        .and_then(|p| read::<u32>(p, global!(KERNEL.task_tgid)))
        .unwrap_or_else(|_| {
            flags |= EXEC_PPID_UNKNOWN;
            0
        });
    let mnt_ns = read_ptr(task, global!(KERNEL.task_nsproxy))
        .and_then(|n| read_ptr(n, global!(KERNEL.nsproxy_mnt_ns)))
        .and_then(|m| read::<u32>(m, global!(KERNEL.mnt_ns_inum)))
        .unwrap_or_else(|_| {
            flags |= EXEC_MNT_NS_UNKNOWN;
            0
        });
    let uid = read_ptr(task, global!(KERNEL.task_real_cred))
        .and_then(|c| read::<u32>(c, global!(KERNEL.cred_uid)))
        .unwrap_or_else(|_| {
            flags |= EXEC_UID_UNKNOWN;
            u32::MAX
        });
    if flags & EXEC_UNKNOWN != 0 {
        count(loss::FIELD_UNREADABLE);
    }

    put(buf, 0, header(EventKind::Exec, t.root));
    put(
        buf,
        size_of::<EventHeader>(),
        ExecData {
            ppid,
            flags,
            argv_len: len as u32,
            argv_total_len: total.min(u32::MAX as u64) as u32,
            mnt_ns,
            uid,
            own_cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            exe: PathHeader {
                walked_len: exe_len,
                raw_len: 0,
                flags: exe_flags,
                _pad: 0,
            },
        },
    );
    submit(buf, argv_at + len as usize, EventKind::Exec, t.entry);
    Ok(())
}

/// sched_process_fork(struct task_struct *parent, struct task_struct *child),
/// run by the parent.
/// For a traced task; an error means the event was abandoned.
pub fn try_fork(ctx: &BtfTracePointContext, t: Traced) -> Result<(), i64> {
    let child: u64 = ctx.arg(1);
    let child_tgid: u32 = read(child, global!(KERNEL.task_tgid))?;
    let child_pid: u32 = read(child, global!(KERNEL.task_pid))?;
    let buf = scratch()?;
    put(buf, 0, header(EventKind::Fork, t.root));
    put(
        buf,
        size_of::<EventHeader>(),
        ForkData {
            child_tgid,
            child_pid,
            flags: if child_tgid != child_pid {
                FORK_THREAD
            } else {
                0
            },
            _pad: 0,
        },
    );
    submit(
        buf,
        size_of::<EventHeader>() + size_of::<ForkData>(),
        EventKind::Fork,
        t.entry,
    );
    Ok(())
}

/// sched_process_exit(struct task_struct *p, bool group_dead), run by the
/// exiting thread before its files and cgroup are released. Only the last
/// thread of a process is reported: the process tree is made of processes.
#[inline(always)]
pub fn group_dead(ctx: &BtfTracePointContext) -> bool {
    let group_dead: u64 = ctx.arg(1);
    group_dead & 0xff != 0
}

/// For the last thread (`group_dead`) of a traced task; an error means the
/// event was abandoned.
pub fn try_exit(ctx: &BtfTracePointContext, t: Traced) -> Result<(), i64> {
    let task: u64 = ctx.arg(0);
    let exit_code: u32 = read(task, global!(KERNEL.task_exit_code))?;
    let buf = scratch()?;
    put(buf, 0, header(EventKind::Exit, t.root));
    put(
        buf,
        size_of::<EventHeader>(),
        ExitData {
            exit_code,
            flags: EXIT_GROUP_DEAD,
        },
    );
    submit(
        buf,
        size_of::<EventHeader>() + size_of::<ExitData>(),
        EventKind::Exit,
        t.entry,
    );
    Ok(())
}
