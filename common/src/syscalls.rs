//! Syscall numbers the programs react to (x86_64; other architectures
//! would add a table here and nothing else).

pub const OPEN: u32 = 2;
pub const RENAME: u32 = 82;
pub const CREAT: u32 = 85;
pub const LINK: u32 = 86;
pub const UNLINK: u32 = 87;
pub const UNLINKAT: u32 = 263;
pub const RENAMEAT: u32 = 264;
pub const LINKAT: u32 = 265;
pub const OPENAT: u32 = 257;
pub const RENAMEAT2: u32 = 316;
pub const OPENAT2: u32 = 437;
pub const OPEN_BY_HANDLE_AT: u32 = 304;

/// The `syscalls/sys_exit_<name>` tracepoints the file program is attached
/// to: exactly the syscalls it handles.
pub const TRACED_EXITS: &[&str] = &[
    "open",
    "openat",
    "openat2",
    "creat",
    "open_by_handle_at",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "link",
    "linkat",
];

/// `AT_FDCWD`: a dirfd meaning "relative to the working directory".
pub const AT_FDCWD: i32 = -100;

pub const fn name(nr: u32) -> &'static str {
    match nr {
        OPEN => "open",
        RENAME => "rename",
        CREAT => "creat",
        UNLINK => "unlink",
        LINK => "link",
        LINKAT => "linkat",
        UNLINKAT => "unlinkat",
        RENAMEAT => "renameat",
        OPENAT => "openat",
        RENAMEAT2 => "renameat2",
        OPENAT2 => "openat2",
        OPEN_BY_HANDLE_AT => "open_by_handle_at",
        _ => "unknown",
    }
}
