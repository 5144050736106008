//! The kernel's trace set (which cgroups are traced) and the repeat-open suppression map.

/// Value of the `TRACED_CGROUPS` hash map (key: cgroup id).
///
/// Userspace inserts one entry per traced task (a "root"). The kernel adds
/// entries for cgroups created below a traced one: they point to the same
/// root, or become roots themselves when the parent has
/// `TRACE_CHILDREN_ARE_ROOTS` (a pod cgroup whose containers are tasks).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracedCgroup {
    /// The task's root cgroup id: what events carry in `cgroup_id`.
    pub root: u64,
    /// Bumped (on the root's entry) by every successful rename or unlink in
    /// the task: part of the repeat-suppression key, so a file name or an
    /// inode number that gets reused is reported again.
    pub epoch: u64,
    /// Events of this task lost in the kernel, all causes (on the root's
    /// entry).
    pub lost: u64,
    /// `TRACE_*` flags.
    pub flags: u32,
    /// Of `lost`, the events abandoned before they were sent because a
    /// kernel read failed (or, never seen, the scratch buffer was missing);
    /// the rest found the ring buffer full.
    pub read_failed: u32,
}

/// Cgroups created below this one become task roots of their own.
pub const TRACE_CHILDREN_ARE_ROOTS: u32 = 1 << 0;
/// The kernel added this entry (a descendant of a traced cgroup).
pub const TRACE_PROPAGATED: u32 = 1 << 1;
/// Capture events but do not suppress repeated opens (for tests/benches).
pub const TRACE_NO_SUPPRESS: u32 = 1 << 2;

/// Key of the `SEEN_FILES` LRU map: one task has reported this file object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeenKey {
    pub root: u64,
    pub ino: u64,
    pub epoch: u64,
    /// The inode's `struct super_block` address: identifies the file
    /// system as well as its device number does while it is mounted, and
    /// costs no extra kernel read before the lookup.
    pub sb: u64,
    pub generation: u32,
    pub _pad: u32,
}

/// Value of `SEEN_FILES`: which accesses were already reported.
pub const SEEN_READ: u32 = 1 << 0;
pub const SEEN_WRITE: u32 = 1 << 1;
