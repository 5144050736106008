//! Reading kernel structs through offsets taken from BTF.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};

use crate::maps::global;

/// Reads a `T` at `base + off`. Errors carry the helper's return code.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).map_err(|e| e as i64) }
}

/// Reads a pointer-sized field and refuses NULL.
#[inline(always)]
pub fn read_ptr(base: u64, off: u32) -> Result<u64, i64> {
    let p: u64 = read(base, off)?;
    if p == 0 { Err(-14) } else { Ok(p) }
}

/// A `struct path`: (vfsmount*, dentry*).
#[derive(Clone, Copy)]
pub struct KPath {
    pub mnt: u64,
    pub dentry: u64,
}

/// Reads the `struct path` embedded at `base + off`.
#[inline(always)]
pub fn read_path(base: u64, off: u32) -> Result<KPath, i64> {
    let at = base + off as u64;
    Ok(KPath {
        mnt: read_ptr(at, global!(KERNEL.path_mnt))?,
        dentry: read_ptr(at, global!(KERNEL.path_dentry))?,
    })
}

/// Up to `N` bytes of one struct, fetched with one helper call, from which
/// several fields are taken. Every probe read costs a helper call and a
/// fault-safe copy; the open path is hot, so fields that sit close together
/// (they do in `fdtable`, `file` and `inode`) are read at once. The offsets
/// are load-time constants, so the verifier resolves the bounds checks and
/// a field outside the window falls back to its own read.
pub struct Window<const N: usize> {
    ptr: u64,
    start: u32,
    /// Filled by the one helper call, in place: a window moved around as a
    /// value is copied byte by byte, and the open path's stack is tight.
    bytes: MaybeUninit<[u8; N]>,
}

impl<const N: usize> Window<N> {
    /// Reads `N` bytes of the struct at `ptr`, from the lowest of `offs`.
    #[inline(always)]
    pub fn read(ptr: u64, offs: &[u32]) -> Result<Self, i64> {
        let mut start = u32::MAX;
        for &o in offs {
            if o < start {
                start = o;
            }
        }
        let mut w = Self {
            ptr,
            start,
            bytes: MaybeUninit::uninit(),
        };
        let rc = unsafe {
            generated::bpf_probe_read_kernel(
                w.bytes.as_mut_ptr().cast::<c_void>(),
                N as u32,
                (ptr + start as u64) as *const c_void,
            )
        };
        if rc < 0 {
            return Err(rc);
        }
        Ok(w)
    }

    #[inline(always)]
    pub fn get<T: Copy>(&self, off: u32) -> Result<T, i64> {
        let rel = off.wrapping_sub(self.start) as usize;
        if rel + core::mem::size_of::<T>() <= N {
            // SAFETY: the helper filled all N bytes (`read` returned Ok).
            Ok(unsafe {
                core::ptr::read_unaligned(self.bytes.as_ptr().cast::<u8>().add(rel).cast::<T>())
            })
        } else {
            read(self.ptr, off)
        }
    }

    #[inline(always)]
    pub fn ptr(&self, off: u32) -> Result<u64, i64> {
        let p: u64 = self.get(off)?;
        if p == 0 { Err(-14) } else { Ok(p) }
    }
}

/// The file behind descriptor `fd` of the task.
#[inline(always)]
pub fn fd_file(task: u64, fd: u32) -> Result<u64, i64> {
    let files = read_ptr(task, global!(KERNEL.task_files))?;
    let fdt = read_ptr(files, global!(KERNEL.files_fdt))?;
    let (max_off, fd_off) = (global!(KERNEL.fdt_max_fds), global!(KERNEL.fdt_fd));
    let w = Window::<16>::read(fdt, &[max_off, fd_off])?;
    let max: u32 = w.get(max_off)?;
    if fd >= max {
        return Err(-9);
    }
    let fds = w.ptr(fd_off)?;
    read_ptr(fds, fd.wrapping_mul(8))
}

/// The task's fs_struct root or working directory.
#[inline(always)]
pub fn task_fs_path(task: u64, field_off: u32) -> Result<KPath, i64> {
    let fs = read_ptr(task, global!(KERNEL.task_fs))?;
    read_path(fs, field_off)
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const FMODE_READ: u32 = 1 << 0;
pub const FMODE_WRITE: u32 = 1 << 1;
pub const O_WRONLY: u32 = 0o1;
pub const O_CREAT: u32 = 0o100;
pub const O_TRUNC: u32 = 0o1000;
/// Superblock magic of anonymous inodes (eventfd, timerfd, ...), which can
/// look like regular files.
pub const ANON_INODE_FS_MAGIC: u64 = 0x0904_1934;
