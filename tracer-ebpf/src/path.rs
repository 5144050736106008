//! Resolving paths in the kernel.
//!
//! `walk` climbs from a `struct path` to the process's root, crossing mount
//! points, and writes the components leaf-first into the scratch buffer
//! (see `roar_node_common::path`). It runs in a `bpf_loop` callback: an
//! unrolled walk of the needed depth does not fit the verifier's budget.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel_str, bpf_probe_read_user_str};
use roar_node_common::{
    limits::{NAME_BUF, PATH_MAX, WALK_MAX_STEPS},
    loss,
    path::{
        PATH_DISCONNECTED, PATH_INCOMPLETE, PATH_OUTSIDE_ROOT, PATH_RAW_READ_ERROR,
        PATH_READ_ERROR, PATH_TRUNCATED,
    },
};

use crate::{
    kernel::{KPath, read, read_ptr},
    maps::{SCRATCH, count, global},
};

/// Counts an event about to be sent with a path that is only part of the
/// real one (its record says so; `/metrics` counts it as a loss).
#[inline(always)]
pub fn count_if_incomplete(flags: u16) {
    if flags & PATH_INCOMPLETE != 0 {
        count(loss::PATH_INEXACT);
    }
}

/// Offsets into the scratch buffer are masked with this before use: with
/// at most `PATH_MAX + NAME_BUF` bytes written past it, every write stays
/// inside the 32 KiB buffer, which is what the verifier needs to see.
pub const OFFSET_MASK: usize = 0x3fff;

/// State of one walk, on the caller's stack (bpf_loop's context).
#[repr(C)]
struct Walk {
    dentry: u64,
    vfsmnt: u64,
    root_dentry: u64,
    root_mnt: u64,
    /// Where this path's bytes start in the scratch buffer.
    base: u64,
    /// Bytes written so far.
    len: u64,
    flags: u64,
    done: u64,
}

/// Result of a walk or a string read: bytes written and `PATH_*` flags.
#[derive(Clone, Copy, Default)]
pub struct Written {
    pub len: u16,
    pub flags: u16,
}

/// Walks from `start` up to `root`, writing at scratch offset `base`.
#[inline(always)]
pub fn walk(base: usize, start: KPath, root: KPath) -> Written {
    let mut w = Walk {
        dentry: start.dentry,
        vfsmnt: start.mnt,
        root_dentry: root.dentry,
        root_mnt: root.mnt,
        base: base as u64,
        len: 0,
        flags: 0,
        done: 0,
    };
    let rc = unsafe {
        bpf_loop(
            WALK_MAX_STEPS,
            walk_step as *mut c_void,
            (&raw mut w).cast::<c_void>(),
            0,
        )
    };
    if rc < 0 {
        w.flags |= PATH_READ_ERROR as u64;
    } else if w.done == 0 {
        w.flags |= PATH_TRUNCATED as u64;
    }
    Written {
        len: w.len as u16,
        flags: w.flags as u16,
    }
}

/// One step up. Returns 1 to stop the loop, 0 to go on.
#[inline(never)]
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    match step(w) {
        Ok(0) => 0,
        Ok(_) => {
            w.done = 1;
            1
        }
        Err(_) => {
            w.flags |= PATH_READ_ERROR as u64;
            w.done = 1;
            1
        }
    }
}

#[inline(always)]
fn step(w: &mut Walk) -> Result<u32, i64> {
    if w.dentry == w.root_dentry && w.vfsmnt == w.root_mnt {
        return Ok(1);
    }
    let mnt_root = read_ptr(w.vfsmnt, global!(KERNEL.vfsmount_mnt_root))?;
    if w.dentry == mnt_root {
        // At the root of a mount: continue from where it is mounted.
        let mount = w.vfsmnt - global!(KERNEL.mount_mnt) as u64;
        let parent = read_ptr(mount, global!(KERNEL.mount_mnt_parent))?;
        if parent == mount {
            // Top of the mount tree, and the process's root was not on the
            // way. With no name walked yet, the file is the root of a
            // mount attached nowhere (runc execs its own binary from such
            // a clone, `open_tree(OPEN_TREE_CLONE)`, in every container):
            // it has no path in any namespace. Otherwise the file is
            // outside the root the process sees.
            w.flags |= if w.len == 0 {
                PATH_DISCONNECTED
            } else {
                PATH_OUTSIDE_ROOT
            } as u64;
            return Ok(1);
        }
        w.dentry = read_ptr(mount, global!(KERNEL.mount_mnt_mountpoint))?;
        w.vfsmnt = parent + global!(KERNEL.mount_mnt) as u64;
        return Ok(0);
    }
    let parent = read_ptr(w.dentry, global!(KERNEL.dentry_d_parent))?;
    if parent == w.dentry {
        w.flags |= PATH_DISCONNECTED as u64;
        return Ok(1);
    }
    if w.len >= PATH_MAX as u64 {
        w.flags |= PATH_TRUNCATED as u64;
        return Ok(1);
    }
    let name: u64 = read(
        w.dentry,
        global!(KERNEL.dentry_d_name) + global!(KERNEL.qstr_name),
    )?;
    let buf = match SCRATCH.get_ptr_mut(0) {
        Some(p) => p.cast::<u8>(),
        None => return Err(-12),
    };
    let at = (w.base as usize & OFFSET_MASK) + (w.len as usize & (PATH_MAX - 1));
    let n = unsafe {
        bpf_probe_read_kernel_str(
            buf.add(at).cast::<c_void>(),
            NAME_BUF as u32,
            name as *const c_void,
        )
    };
    if n <= 0 {
        return Err(n);
    }
    w.len += n as u64;
    w.dentry = parent;
    Ok(0)
}

/// Copies a NUL-terminated user string to scratch offset `base`; the
/// length excludes the NUL.
#[inline(always)]
pub fn read_user_str(buf: *mut u8, base: usize, src: u64) -> Written {
    let n = unsafe {
        bpf_probe_read_user_str(
            buf.add(base & OFFSET_MASK).cast::<c_void>(),
            PATH_MAX as u32,
            src as *const c_void,
        )
    };
    if n <= 0 {
        return Written {
            len: 0,
            flags: PATH_RAW_READ_ERROR,
        };
    }
    // A successful syscall accepted the string, so it fits PATH_MAX.
    Written {
        len: (n - 1) as u16,
        flags: 0,
    }
}
