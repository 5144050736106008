//! File syscalls, seen at their `syscalls/sys_exit_*` tracepoints: opens,
//! renames, unlinks, links.
//!
//! Checked at exit, so only calls that succeeded are reported. The
//! arguments come from the saved user registers (unchanged by the
//! syscall), and any user string is read after the kernel itself copied
//! it, so it is faulted in (reading it at entry fails for ~3% of opens).

use core::mem::{offset_of, size_of};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_task, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::TracePointContext,
};
use roar_node_common::{
    event::{
        AT_EMPTY_PATH, EventHeader, EventKind, LINK_SRC_KNOWN, LinkData, OPEN_FLAGS_UNKNOWN,
        OPEN_SIZE_UNKNOWN, OpenData, RenameData, UnlinkData,
    },
    loss,
    path::{PATH_RAW_READ_ERROR, PATH_READ_ERROR, PATH_UNLINKED, PathHeader},
    syscalls::{self, AT_FDCWD},
    traced::{SEEN_READ, SEEN_WRITE, SeenKey, TRACE_NO_SUPPRESS, TracedCgroup},
};

use crate::{
    emit::{header, put, scratch, submit},
    kernel::*,
    maps::{SEEN, atomic_add, count, global},
    path::{OFFSET_MASK, count_if_incomplete, read_user_str, walk},
    traced::{self, Traced},
};

const OPEN_TAIL: usize = size_of::<EventHeader>() + size_of::<OpenData>();
const RENAME_TAIL: usize = size_of::<EventHeader>() + size_of::<RenameData>();
const UNLINK_TAIL: usize = size_of::<EventHeader>() + size_of::<UnlinkData>();
const LINK_TAIL: usize = size_of::<EventHeader>() + size_of::<LinkData>();

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
        // Each in a subprogram of its own (see `on_link`).
        syscalls::RENAME | syscalls::RENAMEAT | syscalls::RENAMEAT2 => {
            on_rename(regs, nr, traced.root, traced.entry)
        }
        syscalls::UNLINK | syscalls::UNLINKAT => on_unlink(regs, nr, traced.root, traced.entry),
        syscalls::LINK | syscalls::LINKAT => on_link(regs, nr, traced.root, traced.entry),
        _ => Ok(()),
    }
}

#[inline(always)]
fn arg(regs: u64, off: u32) -> Result<u64, i64> {
    read::<u64>(regs, off)
}

/// The flags the caller passed to the open (f_flags loses O_CREAT/O_TRUNC).
/// An error (openat2's `struct open_how` is read from user memory, which
/// can be gone by now) is flagged on the event, never sent as 0: 0 would
/// say "no O_TRUNC".
#[inline(always)]
fn open_flags(regs: u64, nr: u32) -> Result<u32, i64> {
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
    r.map(|f| f as u32)
}

/// A successful open of a regular file: reported once per task, file
/// object and access (repeats stay here), with the path walked from the
/// new fd's `struct file` and the facts a record needs.
///
/// Long on purpose: the hot path as one straight line whose reads the
/// 512-byte stack and the verifier can follow. Helpers would be inlined
/// back into the same code, or become subprograms whose calls every open
/// would pay.
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
    let (i_mode_off, i_sb, i_ino, i_nlink, i_size) = (
        global!(KERNEL.inode_i_mode),
        global!(KERNEL.inode_i_sb),
        global!(KERNEL.inode_i_ino),
        global!(KERNEL.inode_i_nlink),
        global!(KERNEL.inode_i_size),
    );
    // One read covers them all on the kernels we know (i_mode at 0 to
    // i_size at 80): no extra helper call for the link count and size.
    let iw = Window::<88>::read(inode, &[i_mode_off, i_sb, i_ino, i_nlink, i_size])?;
    let i_mode = iw.get::<u16>(i_mode_off)? as u32;
    // No link to it: an O_TMPFILE file (named later, if ever, by linkat)
    // or one deleted before this open; the walk will find no name it has.
    let unlinked = if iw.get::<u32>(i_nlink)? == 0 {
        PATH_UNLINKED
    } else {
        0
    };
    let size = iw.get::<u64>(i_size);
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

    let mut flags = 0;
    let open_flags = open_flags(regs, nr).unwrap_or_else(|_| {
        flags |= OPEN_FLAGS_UNKNOWN;
        0
    });
    let size = size.unwrap_or_else(|_| {
        flags |= OPEN_SIZE_UNKNOWN;
        0
    });
    if flags != 0 {
        count(loss::FIELD_UNREADABLE);
    }
    // The fixed part goes out before the walk, its path header after:
    // little stays live across the walk (the stack is 512 bytes).
    let buf = scratch()?;
    put(buf, 0, header(EventKind::Open, t.root));
    put(
        buf,
        size_of::<EventHeader>(),
        OpenData {
            fd: fd as i32,
            open_flags,
            f_mode,
            i_mode,
            dev,
            generation,
            ino,
            size,
            syscall: nr,
            flags,
            path: PathHeader::default(),
        },
    );
    let root = task_fs_path(task, global!(KERNEL.fs_root))?;
    let start = read_path(file, global!(KERNEL.file_f_path))?;
    let w = walk(OPEN_TAIL, start, root);
    count_if_incomplete(w.flags);
    put(
        buf,
        size_of::<EventHeader>() + offset_of!(OpenData, path),
        PathHeader {
            walked_len: w.len,
            raw_len: 0,
            flags: w.flags | unlinked,
            _pad: 0,
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
/// when it is relative, by the walked directory it is relative to (for an
/// empty string, as `AT_EMPTY_PATH` allows, the dirfd's own file).
///
/// A string that could not be read is sent as nothing but that flag: the
/// directory alone would name the directory, and a rename or unlink of
/// an unknown name must never look like one of the working directory.
#[inline(always)]
fn user_path(buf: *mut u8, at: usize, task: u64, dfd: i32, ptr: u64) -> PathHeader {
    let raw = read_user_str(buf, at, ptr);
    let mut h = PathHeader {
        walked_len: 0,
        raw_len: raw.len,
        flags: raw.flags,
        _pad: 0,
    };
    let absolute = raw.len > 0 && unsafe { *buf.add(at & OFFSET_MASK) } == b'/';
    if absolute || raw.flags & PATH_RAW_READ_ERROR != 0 {
        count_if_incomplete(h.flags);
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
        _ => h.flags |= PATH_READ_ERROR,
    }
    count_if_incomplete(h.flags);
    h
}

/// Renames and unlinks change which inode a name refers to: bump the
/// task's epoch so later opens are reported again even if an inode number
/// is reused.
#[inline(always)]
fn bump_epoch(t: Traced) {
    atomic_add(unsafe { &raw mut (*t.entry).epoch }, 1);
}

/// The arguments of a call that takes two paths: `rename(old, new)` and
/// `link(old, new)` (`plain`), or their `*at` forms `(olddfd, old,
/// newdfd, new[, flags])`, with flags when the call has them.
struct TwoPaths {
    old_dfd: i32,
    old: u64,
    new_dfd: i32,
    new: u64,
    flags: u32,
}

#[inline(always)]
fn two_path_args(regs: u64, plain: bool, has_flags: bool) -> Result<TwoPaths, i64> {
    let di = arg(regs, global!(KERNEL.regs_di))?;
    let si = arg(regs, global!(KERNEL.regs_si))?;
    if plain {
        return Ok(TwoPaths {
            old_dfd: AT_FDCWD,
            old: di,
            new_dfd: AT_FDCWD,
            new: si,
            flags: 0,
        });
    }
    Ok(TwoPaths {
        old_dfd: di as i32,
        old: si,
        new_dfd: arg(regs, global!(KERNEL.regs_dx))? as i32,
        new: arg(regs, global!(KERNEL.regs_r10))?,
        flags: if has_flags {
            arg(regs, global!(KERNEL.regs_r8))? as u32
        } else {
            0
        },
    })
}

/// Not inlined, as `on_link`.
#[inline(never)]
fn on_rename(regs: u64, nr: u32, root: u64, entry: *mut TracedCgroup) -> Result<(), i64> {
    let t = Traced { root, entry };
    bump_epoch(t);
    let TwoPaths {
        old_dfd,
        old: old_ptr,
        new_dfd,
        new: new_ptr,
        flags,
    } = two_path_args(regs, nr == syscalls::RENAME, nr == syscalls::RENAMEAT2)?;
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

/// Not inlined, as `on_link`.
#[inline(never)]
fn on_unlink(regs: u64, nr: u32, root: u64, entry: *mut TracedCgroup) -> Result<(), i64> {
    let t = Traced { root, entry };
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

/// The file behind a link's source when it is given as a descriptor:
/// `linkat(fd, "", ..., AT_EMPTY_PATH)`, or a name of the form
/// `/proc/self/fd/N` (`/dev/fd/N`, `/proc/thread-self/fd/N`) followed
/// with `AT_SYMLINK_FOLLOW`, the way open(2) says to name an `O_TMPFILE`
/// file. `raw` is the caller's string, already at scratch offset `at`.
#[inline(always)]
fn link_source_fd(
    buf: *const u8,
    at: usize,
    raw: &PathHeader,
    dfd: i32,
    flags: u32,
) -> Option<u32> {
    if raw.flags & PATH_RAW_READ_ERROR != 0 {
        return None;
    }
    if raw.raw_len == 0 {
        return (flags & AT_EMPTY_PATH != 0 && dfd >= 0).then_some(dfd as u32);
    }
    proc_fd_number(buf, at, raw.raw_len as usize)
}

/// `N` of a `/proc/self/fd/N`-style name of `len` bytes at scratch offset
/// `at` (a constant: the verifier sees every byte access in bounds).
#[inline(always)]
fn proc_fd_number(buf: *const u8, at: usize, len: usize) -> Option<u32> {
    const PREFIXES: [&[u8]; 3] = [b"/proc/self/fd/", b"/dev/fd/", b"/proc/thread-self/fd/"];
    let byte = |i: usize| unsafe { *buf.add(at + i) };
    for prefix in PREFIXES {
        if len <= prefix.len() || len > prefix.len() + 10 {
            continue;
        }
        let mut matches = true;
        for (i, c) in prefix.iter().enumerate() {
            if byte(i) != *c {
                matches = false;
                break;
            }
        }
        if !matches {
            continue;
        }
        let mut n: u64 = 0;
        for i in 0..10 {
            let at_digit = prefix.len() + i;
            if at_digit >= len {
                break;
            }
            let d = byte(at_digit);
            if !d.is_ascii_digit() {
                return None;
            }
            n = n * 10 + (d - b'0') as u64;
        }
        return (n <= i32::MAX as u64).then_some(n as u32);
    }
    None
}

/// A new name for a file. Like rename, the new name's content is what the
/// task has there at the end; the source is identified by its inode as
/// well as its name when it was given as a descriptor, so that a file
/// created without a name (`O_TMPFILE`) is found under the name it gets.
///
/// Not inlined: a BPF subprogram with its own 512-byte stack (inlined into
/// `sys_exit_file` with the open handler, the handlers of rename, unlink
/// and link do not fit its stack), and the hot open path pays no call.
/// The task comes as two scalars: a subprogram takes at most five
/// register arguments.
#[inline(never)]
fn on_link(regs: u64, nr: u32, root: u64, entry: *mut TracedCgroup) -> Result<(), i64> {
    let t = Traced { root, entry };
    bump_epoch(t);
    let TwoPaths {
        old_dfd,
        old: old_ptr,
        new_dfd,
        new: new_ptr,
        flags,
    } = two_path_args(regs, nr == syscalls::LINK, nr == syscalls::LINKAT)?;
    let task = unsafe { bpf_get_current_task() } as u64;
    let buf = scratch()?;
    let mut old = user_path(buf, LINK_TAIL, task, old_dfd, old_ptr);
    let mut src = (0u32, 0u64, 0u32);
    if let Some(fd) = link_source_fd(buf, LINK_TAIL, &old, old_dfd, flags) {
        let file = fd_file(task, fd)?;
        let inode = read_ptr(file, global!(KERNEL.file_f_inode))?;
        let sb = read_ptr(inode, global!(KERNEL.inode_i_sb))?;
        let ino: u64 = read(inode, global!(KERNEL.inode_i_ino))?;
        let dev: u32 = read(sb, global!(KERNEL.sb_s_dev))?;
        src = (dev, ino, LINK_SRC_KNOWN);
        // The name is the descriptor's file, not the `/proc/...` string.
        let root = task_fs_path(task, global!(KERNEL.fs_root))?;
        let w = walk(
            LINK_TAIL,
            read_path(file, global!(KERNEL.file_f_path))?,
            root,
        );
        count_if_incomplete(w.flags);
        old = PathHeader {
            walked_len: w.len,
            raw_len: 0,
            flags: w.flags,
            _pad: 0,
        };
    }
    let new_at = LINK_TAIL + old.tail_len();
    let new = user_path(buf, new_at, task, new_dfd, new_ptr);
    put(buf, 0, header(EventKind::Link, t.root));
    put(
        buf,
        size_of::<EventHeader>(),
        LinkData {
            flags,
            syscall: nr,
            src_ino: src.1,
            src_dev: src.0,
            src_flags: src.2,
            old,
            new,
        },
    );
    submit(buf, new_at + new.tail_len(), EventKind::Link, t.entry);
    Ok(())
}
