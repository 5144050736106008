//! Sizes shared by the kernel and user halves.

/// Longest path the kernel resolves (Linux PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// Longest single component plus its NUL (Linux NAME_MAX + 1).
pub const NAME_BUF: usize = 256;
/// Room one walked path may take in an event: PATH_MAX plus one component
/// of slack, so a masked write of a whole component always stays in bounds.
pub const WALK_BUF: usize = PATH_MAX + NAME_BUF;
/// Most path components the walk visits (a 4 KiB path of one-letter names).
pub const WALK_MAX_STEPS: u32 = 2 * PATH_MAX as u32 + 64;
/// argv bytes copied per exec; longer argv is cut and flagged.
pub const ARGV_MAX: usize = 16 * 1024;
/// Longest cgroup path carried by cgroup events.
pub const CGROUP_PATH_MAX: usize = 1024;
/// Per-CPU scratch buffer where an event is assembled before it is copied
/// into the ring buffer: the largest event must fit (exec with a full
/// path and full argv; rename with two full paths).
pub const SCRATCH_SIZE: usize = 32 * 1024;
