//! File syscalls, seen at their `syscalls/sys_exit_*` tracepoints: opens,
//! renames, unlinks.
//!
//! Checked at exit, so only calls that succeeded are reported. The
//! arguments come from the saved user registers (unchanged by the
//! syscall), and any user string is read after the kernel itself copied
//! it, so it is faulted in (reading it at entry fails for ~3% of opens).

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_task, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::TracePointContext,
};
use roar_node_common::{
    event::{EventHeader, EventKind, OpenData, RenameData, UnlinkData},
    loss,
    path::PathHeader,
    syscalls::{self, AT_FDCWD},
    traced::{SEEN_READ, SEEN_WRITE, SeenKey, TRACE_NO_SUPPRESS},
};

use crate::{
    emit::{header, put, scratch, submit},
    kernel::*,
    maps::{SEEN, atomic_add, count, global},
    path::{OFFSET_MASK, read_user_str, walk},
    traced::{self, Traced},
};

const OPEN_TAIL: usize = size_of::<EventHeader>() + size_of::<OpenData>();
const RENAME_TAIL: usize = size_of::<EventHeader>() + size_of::<RenameData>();
const UNLINK_TAIL: usize = size_of::<EventHeader>() + size_of::<UnlinkData>();

/// `syscalls/sys_exit_*` record: `struct trace_entry` (8 bytes), then
/// `int __syscall_nr` at 8 and `long ret` at 16. This layout has not changed
/// since syscall tracepoints exist; the daemon checks it against the
/// tracepoint's `format` file before attaching.
const TP_NR: usize = 8;
const TP_RET: usize = 16;

/// The exit of a successful call by a traced task: the task and the
/// syscall's number and return value. `None` for anything else; nothing
/// here can fail, so an untraced task costs two context loads and the
/// filter lookup.
#[inline(always)]
pub fn traced_exit(ctx: &TracePointContext) -> Option<(Traced, u32, u64)> {
    let base = ctx.as_ptr() as *const u8;
    // Direct context loads: no helper call on the hot path.
    let ret = unsafe { *(base.add(TP_RET) as *const i64) };
    if ret < 0 {
        return None;
    }
    let nr = unsafe { *(base.add(TP_NR) as *const i32) } as u32;
    Some((traced::current()?, nr, ret as u64))
}

/// Attached only to the exits of the syscalls below (one tracepoint each),
/// so the kernel never runs it for reads, writes, closes or anything else.
/// Called for traced tasks only (`traced_exit`); an error means the event
/// was abandoned, and the caller counts it.
pub fn try_sys_exit(traced: Traced, nr: u32, ret: u64) -> Result<(), i64> {
    // The syscall's saved user registers hold its arguments.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    match nr {
        syscalls::OPEN
        | syscalls::OPENAT
        | syscalls::OPENAT2
        | syscalls::CREAT
        | syscalls::OPEN_BY_HANDLE_AT => on_open(regs, nr, ret as u32, traced),
        syscalls::RENAME | syscalls::RENAMEAT | syscalls::RENAMEAT2 => on_rename(regs, nr, traced),
        syscalls::UNLINK | syscalls::UNLINKAT => on_unlink(regs, nr, traced),
        _ => Ok(()),
    }
}

#[inline(always)]
fn arg(regs: u64, off: u32) -> Result<u64, i64> {
    read::<u64>(regs, off)
}

/// The flags the caller passed to the open (f_flags loses O_CREAT/O_TRUNC).
#[inline(always)]
fn open_flags(regs: u64, nr: u32) -> u32 {
    let r = match nr {
        syscalls::OPEN => arg(regs, global!(KERNEL.regs_si)),
        // open_by_handle_at(mount_fd, handle, flags): flags third, too.
        syscalls::OPENAT | syscalls::OPEN_BY_HANDLE_AT => arg(regs, global!(KERNEL.regs_dx)),
        syscalls::OPENAT2 => match arg(regs, global!(KERNEL.regs_dx)) {
            // struct open_how starts with `u64 flags`.
            Ok(how) => unsafe { bpf_probe_read_user(how as *const u64).map_err(|e| e as i64) },
            Err(e) => Err(e),
        },
        _ => Ok((O_CREAT | O_WRONLY | O_TRUNC) as u64), // creat(2)
    };
    r.unwrap_or(0) as u32
}

fn on_open(regs: u64, nr: u32, fd: u32, t: Traced) -> Result<(), i64> {
    let task = unsafe { bpf_get_current_task() } as u64;
    let file = fd_file(task, fd)?;
    let (f_inode, f_mode_off) = (global!(KERNEL.file_f_inode), global!(KERNEL.file_f_mode));
    let fw = Window::<64>::read(file, &[f_inode, f_mode_off])?;
    let inode = fw.ptr(f_inode)?;
    let f_mode: u32 = fw.get(f_mode_off)?;
    let want = if f_mode & FMODE_READ != 0 {
        SEEN_READ
    } else {
        0
    } | if f_mode & FMODE_WRITE != 0 {
        SEEN_WRITE
    } else {
        0
    };
    let (i_mode_off, i_sb, i_ino) = (
        global!(KERNEL.inode_i_mode),
        global!(KERNEL.inode_i_sb),
        global!(KERNEL.inode_i_ino),
    );
    let iw = Window::<80>::read(inode, &[i_mode_off, i_sb, i_ino])?;
    let i_mode = iw.get::<u16>(i_mode_off)? as u32;
    // Pipes, sockets, directories, devices and O_PATH handles are not files
    // whose content a task reads or writes (anonymous inodes: below).
    if i_mode & S_IFMT != S_IFREG || want == 0 {
        count(loss::OPEN_NOT_REGULAR);
        return Ok(());
    }
    let sb = iw.ptr(i_sb)?;
    let ino: u64 = iw.get(i_ino)?;
    let generation: u32 = read(inode, global!(KERNEL.inode_i_generation))?;

    // First read and first write of a file object per task (and epoch) are
    // enough for provenance; repeats stay in the kernel, decided before
    // any further read.
    let suppress = unsafe { (*t.entry).flags } & TRACE_NO_SUPPRESS == 0;
    let key = SeenKey {
        root: t.root,
        ino,
        epoch: unsafe { (*t.entry).epoch },
        sb,
        generation,
        _pad: 0,
    };
    let mut seen = 0;
    if suppress && let Some(v) = unsafe { SEEN.get(key) } {
        seen = *v;
        if seen & want == want {
            count(loss::OPEN_REPEAT_SUPPRESSED);
            return Ok(());
        }
    }
    // Anonymous inodes (eventfd, timerfd, ...) can look like regular files.
    // Never in SEEN (only reported files are), so checked here, once.
    if read::<u64>(sb, global!(KERNEL.sb_s_magic))? == ANON_INODE_FS_MAGIC {
        count(loss::OPEN_NOT_REGULAR);
        return Ok(());
    }
    let dev: u32 = read(sb, global!(KERNEL.sb_s_dev))?;

    let buf = scratch()?;
    let root = task_fs_path(task, global!(KERNEL.fs_root))?;
    let start = read_path(file, global!(KERNEL.file_f_path))?;
    let w = walk(OPEN_TAIL, start, root);
    put(buf, 0, header(EventKind::Open, t.root));
    put(
        buf,
        size_of::<EventHeader>(),
        OpenData {
            fd: fd as i32,
            open_flags: open_flags(regs, nr),
            f_mode,
            i_mode,
            dev,
            generation,
            ino,
            size: read::<u64>(inode, global!(KERNEL.inode_i_size)).unwrap_or(0),
            syscall: nr,
            _pad: 0,
            path: PathHeader {
                walked_len: w.len,
                raw_len: 0,
                flags: w.flags,
                _pad: 0,
            },
        },
    );
    if submit(buf, OPEN_TAIL + w.len as usize, EventKind::Open, t.entry)
        && suppress
        && SEEN.insert(key, seen | want, 0).is_err()
    {
        count(loss::DEDUP_INSERT_FAILED);
    }
    Ok(())
}

/// A path argument: the caller's string at scratch offset `at`, followed,
/// when it is relative, by the walked directory it is relative to.
#[inline(always)]
fn user_path(buf: *mut u8, at: usize, task: u64, dfd: i32, ptr: u64) -> PathHeader {
    let raw = read_user_str(buf, at, ptr);
    let mut h = PathHeader {
        walked_len: 0,
        raw_len: raw.len,
        flags: raw.flags,
        _pad: 0,
    };
    if raw.len > 0 && unsafe { *buf.add(at & OFFSET_MASK) } == b'/' {
        return h;
    }
    let dir = if dfd == AT_FDCWD {
        task_fs_path(task, global!(KERNEL.fs_pwd))
    } else {
        fd_file(task, dfd as u32).and_then(|f| read_path(f, global!(KERNEL.file_f_path)))
    };
    match (dir, task_fs_path(task, global!(KERNEL.fs_root))) {
        (Ok(dir), Ok(root)) => {
            let w = walk(at + raw.len as usize, dir, root);
            h.walked_len = w.len;
            h.flags |= w.flags;
        }
        _ => h.flags |= roar_node_common::path::PATH_READ_ERROR,
    }
    h
}

/// Renames and unlinks change which inode a name refers to: bump the
/// task's epoch so later opens are reported again even if an inode number
/// is reused.
#[inline(always)]
fn bump_epoch(t: Traced) {
    atomic_add(unsafe { &raw mut (*t.entry).epoch }, 1);
}

fn on_rename(regs: u64, nr: u32, t: Traced) -> Result<(), i64> {
    bump_epoch(t);
    let di = arg(regs, global!(KERNEL.regs_di))?;
    let si = arg(regs, global!(KERNEL.regs_si))?;
    let (old_dfd, old_ptr, new_dfd, new_ptr, flags) = if nr == syscalls::RENAME {
        (AT_FDCWD, di, AT_FDCWD, si, 0)
    } else {
        let dx = arg(regs, global!(KERNEL.regs_dx))?;
        let r10 = arg(regs, global!(KERNEL.regs_r10))?;
        let flags = if nr == syscalls::RENAMEAT2 {
            arg(regs, global!(KERNEL.regs_r8))? as u32
        } else {
            0
        };
        (di as i32, si, dx as i32, r10, flags)
    };
    let task = unsafe { bpf_get_current_task() } as u64;
    let buf = scratch()?;
    let old = user_path(buf, RENAME_TAIL, task, old_dfd, old_ptr);
    let new_at = RENAME_TAIL + old.tail_len();
    let new = user_path(buf, new_at, task, new_dfd, new_ptr);
    put(buf, 0, header(EventKind::Rename, t.root));
    put(
        buf,
        size_of::<EventHeader>(),
        RenameData {
            flags,
            syscall: nr,
            old,
            new,
        },
    );
    submit(buf, new_at + new.tail_len(), EventKind::Rename, t.entry);
    Ok(())
}

fn on_unlink(regs: u64, nr: u32, t: Traced) -> Result<(), i64> {
    bump_epoch(t);
    let di = arg(regs, global!(KERNEL.regs_di))?;
    let (dfd, ptr, flags) = if nr == syscalls::UNLINK {
        (AT_FDCWD, di, 0)
    } else {
        let si = arg(regs, global!(KERNEL.regs_si))?;
        let dx = arg(regs, global!(KERNEL.regs_dx))?;
        (di as i32, si, dx as u32)
    };
    let task = unsafe { bpf_get_current_task() } as u64;
    let buf = scratch()?;
    let path = user_path(buf, UNLINK_TAIL, task, dfd, ptr);
    put(buf, 0, header(EventKind::Unlink, t.root));
    put(
        buf,
        size_of::<EventHeader>(),
        UnlinkData {
            flags,
            syscall: nr,
            path,
        },
    );
    submit(
        buf,
        UNLINK_TAIL + path.tail_len(),
        EventKind::Unlink,
        t.entry,
    );
    Ok(())
}
