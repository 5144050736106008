//! How a path travels from the kernel.
//!
//! A path has two optional parts:
//! - `walked`: components found by walking dentries and mounts up from a
//!   `struct path` to the process's root, **leaf first**, each component
//!   NUL-terminated (`"b.txt\0data\0home\0"` is `/home/data/b.txt`). The
//!   kernel cannot cheaply write backwards, so userspace reverses.
//! - `raw`: bytes the process passed to the syscall (rename, unlink), used
//!   verbatim when absolute, or appended to `walked` (the directory it is
//!   relative to) when relative.
//!
//! In the tail the `raw` bytes come first, then the `walked` bytes (the
//! kernel reads the caller's string first to learn whether it needs a walk).

/// Precedes each path's bytes in an event's fixed part.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathHeader {
    pub walked_len: u16,
    pub raw_len: u16,
    /// `PATH_*` flags.
    pub flags: u16,
    pub _pad: u16,
}

impl PathHeader {
    pub const fn tail_len(&self) -> usize {
        self.walked_len as usize + self.raw_len as usize
    }
}

/// The walk stopped before the root: the path lost its leading components.
pub const PATH_TRUNCATED: u16 = 1 << 0;
/// The walk reached the top of the mount tree without meeting the
/// process's root: the file lies outside its root (e.g. an fd passed in).
pub const PATH_OUTSIDE_ROOT: u16 = 1 << 1;
/// A kernel read failed during the walk; the path is incomplete.
pub const PATH_READ_ERROR: u16 = 1 << 2;
/// The caller's string did not fit and was cut.
pub const PATH_RAW_TRUNCATED: u16 = 1 << 3;
/// The caller's string could not be read.
pub const PATH_RAW_READ_ERROR: u16 = 1 << 4;
/// The walk found a dentry that is its own parent below a mount root (a
/// disconnected or deleted tree).
pub const PATH_DISCONNECTED: u16 = 1 << 5;

/// The file had no name when the event was made: its link count was 0
/// (created with `O_TMPFILE`, or deleted before this open). The walked
/// name is the kernel's placeholder (`#<inode>` for `O_TMPFILE`) or a name
/// it no longer has.
pub const PATH_UNLINKED: u16 = 1 << 6;

/// Flags that say the walk or the caller's string could not be read to
/// the end: the bytes sent are only part of the path. The kernel counts
/// every event sent with one (`loss::PATH_INEXACT`).
pub const PATH_INCOMPLETE: u16 =
    PATH_TRUNCATED | PATH_OUTSIDE_ROOT | PATH_READ_ERROR | PATH_RAW_TRUNCATED | PATH_RAW_READ_ERROR;

/// Flags that say the file has no name to find: it hangs below no
/// directory (a memfd, a disconnected NFS handle) or has no link (an
/// `O_TMPFILE` file, a deleted one). Not a path lost in reading; what it
/// means for the record depends on what the task did with the file.
pub const PATH_NAMELESS: u16 = PATH_DISCONNECTED | PATH_UNLINKED;

/// Flags that mean the path is not the exact one the process used.
pub const PATH_INEXACT: u16 = PATH_INCOMPLETE | PATH_NAMELESS;
