//! The fixed header every event starts with, and each event's fixed part.
//!
//! Layout on the wire (one ring-buffer record):
//! `EventHeader | <kind>Data | tail`, where the tail holds the
//! variable-length parts (paths, argv) in the order the data struct lists
//! their lengths. `EventHeader::size` is the whole record's length.

use crate::path::PathHeader;

/// Discriminant in `EventHeader::kind`.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Fork = 2,
    Exit = 3,
    Open = 4,
    Rename = 5,
    Unlink = 6,
    CgroupMkdir = 7,
    CgroupRmdir = 8,
    Link = 9,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::Open,
        EventKind::Rename,
        EventKind::Unlink,
        EventKind::CgroupMkdir,
        EventKind::CgroupRmdir,
        EventKind::Link,
    ];
    /// One past the largest discriminant: sizes per-kind counter arrays.
    pub const COUNT: usize = 10;

    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Exec,
            2 => Self::Fork,
            3 => Self::Exit,
            4 => Self::Open,
            5 => Self::Rename,
            6 => Self::Unlink,
            7 => Self::CgroupMkdir,
            8 => Self::CgroupRmdir,
            9 => Self::Link,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Fork => "fork",
            Self::Exit => "exit",
            Self::Open => "open",
            Self::Rename => "rename",
            Self::Unlink => "unlink",
            Self::CgroupMkdir => "cgroup_mkdir",
            Self::CgroupRmdir => "cgroup_rmdir",
            Self::Link => "link",
        }
    }
}

/// Starts every event (32 bytes, 8-aligned).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An `EventKind`.
    pub kind: u16,
    /// Reserved for header-level flags; 0 today.
    pub flags: u16,
    /// Length of the whole record: header, fixed data and tail.
    pub size: u32,
    /// Thread-group id (the process id userspace sees).
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// The traced cgroup the event belongs to: the root of the filter entry
    /// that matched, so events from a task's sub-cgroups attribute to it.
    /// 0 for cgroup lifecycle events, which are not filtered.
    pub cgroup_id: u64,
    /// CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`).
    pub timestamp_ns: u64,
}

/// A successful execve/execveat (sched_process_exec).
///
/// Tail: executable path (`exe`), then `argv_len` bytes of argv, each
/// argument NUL-terminated, as they sit in the new process image.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecData {
    /// Parent's tgid (real_parent).
    pub ppid: u32,
    /// `EXEC_*` flags.
    pub flags: u32,
    /// argv bytes captured in the tail.
    pub argv_len: u32,
    /// argv bytes in the process image (`arg_end - arg_start`): more than
    /// `argv_len` when truncated.
    pub argv_total_len: u32,
    /// Inode number of the mount namespace the process runs in.
    pub mnt_ns: u32,
    /// Real uid of the process.
    pub uid: u32,
    /// The process's own cgroup (may be a descendant of `header.cgroup_id`).
    pub own_cgroup_id: u64,
    pub exe: PathHeader,
}

pub const EXEC_ARGV_TRUNCATED: u32 = 1 << 0;
pub const EXEC_ARGV_READ_ERROR: u32 = 1 << 1;
/// The parent could not be read: `ppid` is 0 and means nothing.
pub const EXEC_PPID_UNKNOWN: u32 = 1 << 2;
/// The mount namespace could not be read: `mnt_ns` is 0 and means nothing.
pub const EXEC_MNT_NS_UNKNOWN: u32 = 1 << 3;
/// The credentials could not be read: `uid` means nothing.
pub const EXEC_UID_UNKNOWN: u32 = 1 << 4;

/// A new process or thread (sched_process_fork). `header.tgid/pid` are the
/// parent's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkData {
    pub child_tgid: u32,
    pub child_pid: u32,
    /// `FORK_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// The child shares its parent's thread group (CLONE_THREAD).
pub const FORK_THREAD: u32 = 1 << 0;

/// A thread exited (sched_process_exit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitData {
    /// `task->exit_code`: a wait(2) status (exit status << 8 | signal).
    pub exit_code: u32,
    /// `EXIT_*` flags.
    pub flags: u32,
}

/// The last thread of the thread group exited: the process is gone.
pub const EXIT_GROUP_DEAD: u32 = 1 << 0;

/// A successful open of a regular file (open, openat, openat2, creat).
///
/// Tail: the file's path (`path`), resolved in the kernel from the new
/// fd's `struct file`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenData {
    /// The fd the syscall returned.
    pub fd: i32,
    /// Flags the caller passed (O_CREAT, O_TRUNC, ... survive here, unlike
    /// in `file->f_flags`).
    pub open_flags: u32,
    /// `file->f_mode` (FMODE_READ, FMODE_WRITE, FMODE_CREATED, ...).
    pub f_mode: u32,
    /// `inode->i_mode` (file type and permissions).
    pub i_mode: u32,
    /// `sb->s_dev` in the kernel's encoding (major << 20 | minor).
    pub dev: u32,
    /// `inode->i_generation`.
    pub generation: u32,
    pub ino: u64,
    /// `inode->i_size` when the open returned.
    pub size: u64,
    /// Syscall number (`syscalls::*`).
    pub syscall: u32,
    /// `OPEN_*` flags: fields a failed kernel read left unknown.
    pub flags: u32,
    pub path: PathHeader,
}

/// The caller's open flags could not be read: `open_flags` is 0 and means
/// nothing (whether the open truncated the file is unknown).
pub const OPEN_FLAGS_UNKNOWN: u32 = 1 << 0;
/// The file's size could not be read: `size` is 0 and means nothing.
pub const OPEN_SIZE_UNKNOWN: u32 = 1 << 1;

/// A successful rename, renameat or renameat2.
///
/// Tail: `old` path, then `new` path. Each is the caller's string plus,
/// when that string is relative, the resolved directory it is relative to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameData {
    /// renameat2 flags (RENAME_EXCHANGE, RENAME_NOREPLACE, ...).
    pub flags: u32,
    pub syscall: u32,
    pub old: PathHeader,
    pub new: PathHeader,
}

/// A successful unlink or unlinkat. Tail: the path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnlinkData {
    /// unlinkat flags (AT_REMOVEDIR).
    pub flags: u32,
    pub syscall: u32,
    pub path: PathHeader,
}

pub const AT_REMOVEDIR: u32 = 0x200;

/// A successful link or linkat: `new` is a new name for the file `old`
/// names.
///
/// Tail: `old` path, then `new` path, as in `RenameData`. When the source
/// is given as a descriptor (`AT_EMPTY_PATH` with an empty name, or a
/// `/proc/self/fd/N` name), `old` is the walked path of that descriptor's
/// file and `src_*` identify the file, so a file that had no name (opened
/// with `O_TMPFILE`) can be matched to its open.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkData {
    /// linkat flags (AT_EMPTY_PATH, AT_SYMLINK_FOLLOW).
    pub flags: u32,
    pub syscall: u32,
    /// The source file's inode number, when `LINK_SRC_KNOWN`.
    pub src_ino: u64,
    /// The source file's `sb->s_dev` (kernel encoding), when known.
    pub src_dev: u32,
    /// `LINK_*` flags.
    pub src_flags: u32,
    pub old: PathHeader,
    pub new: PathHeader,
}

/// `src_dev`/`src_ino` identify the linked file (it was given as an fd).
pub const LINK_SRC_KNOWN: u32 = 1 << 0;
/// linkat's `AT_EMPTY_PATH`: the source is the dirfd itself.
pub const AT_EMPTY_PATH: u32 = 0x1000;

/// A cgroup v2 directory was created or removed.
///
/// Tail: `path_len` bytes: the cgroup's path from the hierarchy root
/// (as the tracepoint reports it, e.g. `/kubepods/besteffort/pod.../<id>`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupData {
    /// The cgroup's id (its kernfs inode number).
    pub id: u64,
    pub parent_id: u64,
    pub level: u32,
    /// `CGROUP_*` flags.
    pub flags: u32,
    pub path_len: u32,
    pub _pad: u32,
}

/// The kernel added this new cgroup to the trace filter because its parent
/// was traced (it inherits the parent's task, or becomes a task root).
pub const CGROUP_TRACED: u32 = 1 << 0;
/// The cgroup path did not fit and was cut.
pub const CGROUP_PATH_TRUNCATED: u32 = 1 << 1;

/// One event as the kernel lays it out: header first, then `T`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event<T> {
    pub header: EventHeader,
    pub data: T,
}

pub type ExecEvent = Event<ExecData>;
pub type ForkEvent = Event<ForkData>;
pub type ExitEvent = Event<ExitData>;
pub type OpenEvent = Event<OpenData>;
pub type RenameEvent = Event<RenameData>;
pub type UnlinkEvent = Event<UnlinkData>;
pub type LinkEvent = Event<LinkData>;
pub type CgroupEvent = Event<CgroupData>;

// The wire format is shared with the kernel: catch accidental changes.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);
const _: () = assert!(core::mem::size_of::<PathHeader>() == 8);
const _: () = assert!(core::mem::size_of::<ExecData>() == 40);
const _: () = assert!(core::mem::size_of::<ForkData>() == 16);
const _: () = assert!(core::mem::size_of::<ExitData>() == 8);
const _: () = assert!(core::mem::size_of::<OpenData>() == 56);
const _: () = assert!(core::mem::size_of::<RenameData>() == 24);
const _: () = assert!(core::mem::size_of::<UnlinkData>() == 16);
const _: () = assert!(core::mem::size_of::<LinkData>() == 40);
const _: () = assert!(core::mem::size_of::<CgroupData>() == 32);
