//! cgroup v2 lifecycle: reported to userspace (which maps cgroups to pods)
//! and used to extend the trace filter to new descendants of traced
//! cgroups before any process can run in them.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{helpers::generated::bpf_probe_read_kernel_str, programs::BtfTracePointContext};
use roar_node_common::{
    event::{CGROUP_PATH_TRUNCATED, CGROUP_TRACED, CgroupData, EventHeader, EventKind},
    limits::CGROUP_PATH_MAX,
    loss,
    traced::{TRACE_CHILDREN_ARE_ROOTS, TRACE_NO_SUPPRESS, TRACE_PROPAGATED, TracedCgroup},
};

use crate::{
    emit::{abandoned, header, put, scratch, submit},
    kernel::{read, read_ptr},
    maps::{TRACED, atomic_add, count, global},
};

const CGROUP_TAIL: usize = size_of::<EventHeader>() + size_of::<CgroupData>();
const BPF_NOEXIST: u64 = 1;

struct Cgroup {
    id: u64,
    parent_id: u64,
    level: u32,
}

/// Whether `cgrp` is in the cgroup v2 hierarchy (`cgrp_dfl_root`, whose
/// hierarchy id is 0). On a hybrid host the same tracepoints fire for every
/// v1 hierarchy, whose kernfs ids are a separate numbering: a v1 cgroup's
/// id can equal a v2 cgroup's, so v1 events must neither touch the filter
/// nor reach userspace.
#[inline(always)]
fn is_v2(cgrp: u64) -> Result<bool, i64> {
    let root = read_ptr(cgrp, global!(KERNEL.cgroup_root))?;
    let hierarchy_id: i32 = read(root, global!(KERNEL.cgroup_root_hierarchy_id))?;
    Ok(hierarchy_id == 0)
}

#[inline(always)]
fn cgroup(cgrp: u64) -> Result<Cgroup, i64> {
    let kn = read_ptr(cgrp, global!(KERNEL.cgroup_kn))?;
    let id: u64 = read(kn, global!(KERNEL.kn_id))?;
    let parent_id = match read_ptr(kn, global!(KERNEL.kn_parent)) {
        Ok(p) => read(p, global!(KERNEL.kn_id))?,
        Err(_) => 0,
    };
    let level: u32 = read(cgrp, global!(KERNEL.cgroup_level))?;
    Ok(Cgroup {
        id,
        parent_id,
        level,
    })
}

/// cgroup_mkdir(struct cgroup *cgrp, const char *path). An error is a
/// failed read before the cgroup was known to be traced or not (counted
/// by the caller as `CGROUP_READ_FAILED`); once it is known, `emit`
/// counts its own failure on the task.
pub fn try_mkdir(ctx: &BtfTracePointContext) -> Result<(), i64> {
    if !is_v2(ctx.arg(0))? {
        return Ok(());
    }
    let cg = cgroup(ctx.arg(0))?;
    let mut flags = 0;
    let mut root = 0;
    if let Some(parent) = unsafe { TRACED.get(cg.parent_id) } {
        let entry = if parent.flags & TRACE_CHILDREN_ARE_ROOTS != 0 {
            TracedCgroup {
                root: cg.id,
                flags: TRACE_PROPAGATED | (parent.flags & TRACE_NO_SUPPRESS),
                ..TracedCgroup::default()
            }
        } else {
            TracedCgroup {
                root: parent.root,
                flags: TRACE_PROPAGATED | (parent.flags & TRACE_NO_SUPPRESS),
                ..TracedCgroup::default()
            }
        };
        if TRACED.insert(cg.id, entry, BPF_NOEXIST).is_ok() {
            flags |= CGROUP_TRACED;
            root = entry.root;
        } else if unsafe { TRACED.get(cg.id) }.is_none() {
            // Not already there (a racing insert): the map is full and
            // this cgroup's processes go untraced. Never silently: counted
            // here and, for a sub-cgroup of a task, in that task's `lost`
            // (its record is partial; the cause shows as the ring buffer's,
            // the entry has no field of its own for it).
            count(loss::TRACE_SET_FULL);
            if parent.flags & TRACE_CHILDREN_ARE_ROOTS == 0
                && let Some(task) = TRACED.get_ptr_mut(parent.root)
            {
                atomic_add(unsafe { &raw mut (*task).lost }, 1);
            }
        }
    }
    emit(ctx, EventKind::CgroupMkdir, cg, flags, root);
    Ok(())
}

/// cgroup_rmdir(struct cgroup *cgrp, const char *path); errors as for
/// `try_mkdir`.
pub fn try_rmdir(ctx: &BtfTracePointContext) -> Result<(), i64> {
    if !is_v2(ctx.arg(0))? {
        return Ok(());
    }
    let cg = cgroup(ctx.arg(0))?;
    let mut root = 0;
    if let Some(entry) = unsafe { TRACED.get(cg.id) } {
        root = entry.root;
        // A propagated sub-cgroup holds no task state: forget it here. Task
        // roots stay until userspace has read their loss counter.
        if entry.flags & TRACE_PROPAGATED != 0 && entry.root != cg.id {
            let _ = TRACED.remove(cg.id);
        }
    }
    emit(ctx, EventKind::CgroupRmdir, cg, 0, root);
    Ok(())
}

/// Sends the event, attributed to task `root` (0: none); a failure is
/// counted here, on the task when there is one.
#[inline(always)]
fn emit(ctx: &BtfTracePointContext, kind: EventKind, cg: Cgroup, mut flags: u32, root: u64) {
    let task = if root != 0 {
        TRACED.get_ptr_mut(root).unwrap_or(core::ptr::null_mut())
    } else {
        core::ptr::null_mut()
    };
    let path: u64 = ctx.arg(1);
    let buf = match scratch() {
        Ok(buf) => buf,
        Err(e) => return abandoned(task, e),
    };
    let n = unsafe {
        bpf_probe_read_kernel_str(
            buf.add(CGROUP_TAIL).cast::<c_void>(),
            CGROUP_PATH_MAX as u32,
            path as *const c_void,
        )
    };
    let len = if n > 0 { (n - 1) as usize } else { 0 };
    if len >= CGROUP_PATH_MAX - 1 {
        flags |= CGROUP_PATH_TRUNCATED;
    }
    put(buf, 0, header(kind, root));
    put(
        buf,
        size_of::<EventHeader>(),
        CgroupData {
            id: cg.id,
            parent_id: cg.parent_id,
            level: cg.level,
            flags,
            path_len: len as u32,
            _pad: 0,
        },
    );
    submit(buf, CGROUP_TAIL + len, kind, task);
}
