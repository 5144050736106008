//! Ring-buffer bytes to typed events.
//!
//! `roar_node_common::decode` checks the wire format; this module turns a
//! record into an owned event with whole paths (the kernel sends path
//! pieces), and counts what it rejects.

pub(crate) mod reader;

use roar_node_common::{
    decode::{DecodeError, RawEvent, RawPath, decode},
    event::{
        AT_REMOVEDIR, CGROUP_PATH_TRUNCATED, CGROUP_TRACED, EXEC_ARGV_READ_ERROR,
        EXEC_ARGV_TRUNCATED, EXEC_MNT_NS_UNKNOWN, EXEC_PPID_UNKNOWN, EXEC_UID_UNKNOWN, EventKind,
        FORK_THREAD, LINK_SRC_KNOWN, OPEN_FLAGS_UNKNOWN, OPEN_SIZE_UNKNOWN,
    },
    path::{PATH_INEXACT, PATH_RAW_READ_ERROR},
};

/// `fmode_t` bits (include/linux/fs.h).
const FMODE_READ: u32 = 1 << 0;
const FMODE_WRITE: u32 = 1 << 1;
/// The open created the file.
const FMODE_CREATED: u32 = 1 << 20;
const O_TRUNC: u32 = 0o1000;
/// `__O_TMPFILE`: the open made a file with no name.
const O_TMPFILE: u32 = 0o20000000;
/// renameat2 flag: the two names swapped files.
const RENAME_EXCHANGE: u32 = 1 << 1;

/// Starts the bytes of every inexact path: what is known of it follows
/// (the end of a path the walk could not finish, ...). An exact path
/// starts with `/`, so the two can never be taken for each other, in the
/// record or as a key of a task's file table.
pub(crate) const INEXACT_MARK: &str = "…";

/// A path as the task saw it, and whether it is exact.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FilePath {
    /// The absolute path when exact; else `INEXACT_MARK` and what is known.
    pub(crate) bytes: Vec<u8>,
    /// `PATH_*` flags that make it inexact (0 when exact).
    pub(crate) inexact: u16,
}

impl FilePath {
    fn from_raw(p: &RawPath<'_>) -> Self {
        let inexact = p.flags & PATH_INEXACT;
        if inexact == 0 {
            return Self {
                bytes: normalize(&p.to_bytes()),
                inexact,
            };
        }
        // Never a shorter absolute path that looks exact: the known part
        // behind a mark. A caller's string that could not be read says
        // nothing at all about the name.
        let mut bytes = INEXACT_MARK.as_bytes().to_vec();
        if p.flags & PATH_RAW_READ_ERROR == 0 {
            bytes.extend_from_slice(&normalize(&p.to_bytes()));
        }
        Self { bytes, inexact }
    }

    pub(crate) fn is_exact(&self) -> bool {
        self.inexact == 0
    }
}

/// Lexical normalization: drops `.` and empty components and applies `..`.
/// Only caller-supplied (rename/unlink) paths can contain them; paths the
/// kernel walked are already canonical.
pub(crate) fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for p in &parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The task (its root cgroup id); 0 for cgroup lifecycle events of
    /// untraced cgroups.
    pub(crate) task: u64,
    pub(crate) tgid: u32,
    pub(crate) pid: u32,
    /// CLOCK_BOOTTIME nanoseconds.
    pub(crate) time_ns: u64,
    pub(crate) body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Exec(Exec),
    Fork {
        child_tgid: u32,
        child_pid: u32,
        thread: bool,
    },
    Exit {
        status: u32,
    },
    Open(Open),
    Rename {
        old: FilePath,
        new: FilePath,
        exchange: bool,
    },
    Unlink {
        path: FilePath,
        dir: bool,
    },
    Link(Link),
    Cgroup(CgroupChange),
}

/// A new name (`new`) for the file `old` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) old: FilePath,
    pub(crate) new: FilePath,
    /// The linked file's (`stat` device, inode), when the kernel had it
    /// from a descriptor: how a file with no name (`O_TMPFILE`) is found.
    pub(crate) source: Option<(u64, u64)>,
}

/// Fields of an exec the kernel could not read (`EXEC_*` bits); their
/// values mean nothing.
pub(crate) const EXEC_UNKNOWN_FIELDS: u32 =
    EXEC_PPID_UNKNOWN | EXEC_MNT_NS_UNKNOWN | EXEC_UID_UNKNOWN | EXEC_ARGV_READ_ERROR;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exec {
    /// 0 when unknown (`unknown` says).
    pub(crate) ppid: u32,
    pub(crate) exe: FilePath,
    pub(crate) argv: Vec<Vec<u8>>,
    pub(crate) argv_truncated: bool,
    pub(crate) argv_unreadable: bool,
    /// argv bytes in the process image.
    pub(crate) argv_total_len: u32,
    pub(crate) mnt_ns: u32,
    pub(crate) uid: u32,
    pub(crate) own_cgroup: u64,
    /// `EXEC_UNKNOWN_FIELDS` bits: fields a failed kernel read left unknown.
    pub(crate) unknown: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Open {
    pub(crate) path: FilePath,
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) created: bool,
    /// The open truncated the file (false when unknown: see
    /// `flags_unknown`).
    pub(crate) truncated: bool,
    /// The caller's open flags could not be read: whether it truncated the
    /// file is unknown.
    pub(crate) flags_unknown: bool,
    /// `size` could not be read.
    pub(crate) size_unknown: bool,
    /// Opened with `O_TMPFILE`: a file with no name until a link gives it
    /// one.
    pub(crate) tmpfile: bool,
    /// Kernel `dev_t` (major << 20 | minor).
    pub(crate) dev: u32,
    pub(crate) ino: u64,
    pub(crate) generation: u32,
    /// File size when the open returned.
    pub(crate) size: u64,
    pub(crate) syscall: u32,
}

impl Open {
    /// Device number in the userspace (`stat`) encoding.
    pub(crate) fn user_dev(&self) -> u64 {
        user_dev(self.dev)
    }
}

/// A kernel `dev_t` (major << 20 | minor) in the userspace (`stat`) encoding.
fn user_dev(dev: u32) -> u64 {
    libc::makedev(dev >> 20, dev & 0xfffff)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupChange {
    pub(crate) created: bool,
    pub(crate) id: u64,
    pub(crate) parent_id: u64,
    pub(crate) level: u32,
    /// Path below the cgroup2 root, e.g. `/kubepods/besteffort/pod<uid>/<id>`.
    pub(crate) path: Vec<u8>,
    pub(crate) path_truncated: bool,
    /// The kernel started tracing it because its parent is traced.
    pub(crate) traced_by_kernel: bool,
}

/// Decodes one ring-buffer record into an owned event.
pub fn parse(buf: &[u8]) -> Result<Event, DecodeError> {
    let raw = decode(buf)?;
    let h = *raw.header();
    let body = match raw {
        RawEvent::Exec {
            data, exe, argv, ..
        } => Body::Exec(Exec {
            unknown: data.flags & EXEC_UNKNOWN_FIELDS,
            ppid: data.ppid,
            exe: FilePath::from_raw(&exe),
            argv: split_argv(argv),
            argv_truncated: data.flags & EXEC_ARGV_TRUNCATED != 0,
            argv_unreadable: data.flags & EXEC_ARGV_READ_ERROR != 0,
            argv_total_len: data.argv_total_len,
            mnt_ns: data.mnt_ns,
            uid: data.uid,
            own_cgroup: data.own_cgroup_id,
        }),
        RawEvent::Fork { data, .. } => Body::Fork {
            child_tgid: data.child_tgid,
            child_pid: data.child_pid,
            thread: data.flags & FORK_THREAD != 0,
        },
        RawEvent::Exit { data, .. } => Body::Exit {
            status: data.exit_code,
        },
        RawEvent::Open { data, path, .. } => Body::Open(Open {
            path: FilePath::from_raw(&path),
            read: data.f_mode & FMODE_READ != 0,
            write: data.f_mode & FMODE_WRITE != 0,
            created: data.f_mode & FMODE_CREATED != 0,
            truncated: data.open_flags & O_TRUNC != 0 && data.f_mode & FMODE_WRITE != 0,
            flags_unknown: data.flags & OPEN_FLAGS_UNKNOWN != 0,
            size_unknown: data.flags & OPEN_SIZE_UNKNOWN != 0,
            tmpfile: data.open_flags & O_TMPFILE == O_TMPFILE,
            dev: data.dev,
            ino: data.ino,
            generation: data.generation,
            size: data.size,
            syscall: data.syscall,
        }),
        RawEvent::Rename { data, old, new, .. } => Body::Rename {
            old: FilePath::from_raw(&old),
            new: FilePath::from_raw(&new),
            exchange: data.flags & RENAME_EXCHANGE != 0,
        },
        RawEvent::Unlink { data, path, .. } => Body::Unlink {
            path: FilePath::from_raw(&path),
            dir: data.flags & AT_REMOVEDIR != 0,
        },
        RawEvent::Link { data, old, new, .. } => Body::Link(Link {
            old: FilePath::from_raw(&old),
            new: FilePath::from_raw(&new),
            source: (data.src_flags & LINK_SRC_KNOWN != 0)
                .then(|| (user_dev(data.src_dev), data.src_ino)),
        }),
        RawEvent::Cgroup { data, path, header } => Body::Cgroup(CgroupChange {
            created: header.kind == EventKind::CgroupMkdir as u16,
            id: data.id,
            parent_id: data.parent_id,
            level: data.level,
            path: path.to_vec(),
            path_truncated: data.flags & CGROUP_PATH_TRUNCATED != 0,
            traced_by_kernel: data.flags & CGROUP_TRACED != 0,
        }),
    };
    Ok(Event {
        task: h.cgroup_id,
        tgid: h.tgid,
        pid: h.pid,
        time_ns: h.timestamp_ns,
        body,
    })
}

/// argv as the kernel copied it: NUL-terminated strings back to back (the
/// last one may be cut).
fn split_argv(bytes: &[u8]) -> Vec<Vec<u8>> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|b| *b == 0).map(<[u8]>::to_vec).collect()
}

impl Body {
    pub(crate) fn kind(&self) -> EventKind {
        match self {
            Body::Exec(_) => EventKind::Exec,
            Body::Fork { .. } => EventKind::Fork,
            Body::Exit { .. } => EventKind::Exit,
            Body::Open(_) => EventKind::Open,
            Body::Rename { .. } => EventKind::Rename,
            Body::Unlink { .. } => EventKind::Unlink,
            Body::Link(_) => EventKind::Link,
            Body::Cgroup(c) if c.created => EventKind::CgroupMkdir,
            Body::Cgroup(_) => EventKind::CgroupRmdir,
        }
    }
}

#[cfg(test)]
mod tests {
    use roar_node_common::{
        decode::encode,
        event::{EventHeader, OpenData, UnlinkData},
    };

    use super::*;

    #[test]
    fn normalizes_caller_paths() {
        assert_eq!(normalize(b"/a/./b//c/../d"), b"/a/b/d");
        assert_eq!(normalize(b"/../x"), b"/x");
        assert_eq!(normalize(b"/"), b"/");
    }

    #[test]
    fn argv_splits_on_nul() {
        assert_eq!(
            split_argv(b"sh\0-c\0echo hi\0"),
            vec![b"sh".to_vec(), b"-c".to_vec(), b"echo hi".to_vec()]
        );
        assert_eq!(
            split_argv(b"cut-with-no-nul"),
            vec![b"cut-with-no-nul".to_vec()]
        );
        assert!(split_argv(b"").is_empty());
        // An empty argument survives.
        assert_eq!(
            split_argv(b"a\0\0b\0"),
            vec![b"a".to_vec(), b"".to_vec(), b"b".to_vec()]
        );
    }

    #[test]
    fn open_access_bits() {
        let (ph, tail) = encode::path(&encode::walked(b"/w/out.bin"), b"", 0);
        let data = OpenData {
            f_mode: FMODE_WRITE | FMODE_CREATED,
            open_flags: O_TRUNC | 0o1,
            dev: (8 << 20) | 3,
            path: ph,
            ..Default::default()
        };
        let rec = encode::record(EventKind::Open, EventHeader::default(), &data, &tail);
        let Body::Open(o) = parse(&rec).unwrap().body else {
            panic!()
        };
        assert!(o.write && o.created && o.truncated && !o.read);
        assert_eq!(o.user_dev(), libc::makedev(8, 3));
        assert_eq!(o.path.bytes, b"/w/out.bin");
    }

    /// A walk cut short (or an argument that could not be read) never
    /// comes out as an absolute path: the known part follows a mark.
    #[test]
    fn inexact_paths_are_never_absolute() {
        use roar_node_common::path::{PATH_RAW_READ_ERROR, PATH_TRUNCATED};
        let (ph, tail) = encode::path(&encode::walked(b"/c/in.txt"), b"", PATH_TRUNCATED);
        let data = OpenData {
            path: ph,
            ..Default::default()
        };
        let rec = encode::record(EventKind::Open, EventHeader::default(), &data, &tail);
        let Body::Open(o) = parse(&rec).unwrap().body else {
            panic!()
        };
        assert_eq!(o.path.bytes, "…/c/in.txt".as_bytes());
        assert!(!o.path.is_exact());
        // The kernel sends nothing but the flag for an unreadable name.
        let (ph, tail) = encode::path(b"", b"", PATH_RAW_READ_ERROR);
        let data = UnlinkData {
            path: ph,
            ..Default::default()
        };
        let rec = encode::record(EventKind::Unlink, EventHeader::default(), &data, &tail);
        let Body::Unlink { path, .. } = parse(&rec).unwrap().body else {
            panic!()
        };
        assert_eq!(
            (path.bytes.as_slice(), path.inexact),
            ("…".as_bytes(), PATH_RAW_READ_ERROR)
        );
    }

    #[test]
    fn unknown_fields_and_nameless_files_are_flagged() {
        use roar_node_common::event::{
            EXEC_PPID_UNKNOWN, ExecData, LINK_SRC_KNOWN, LinkData, OPEN_FLAGS_UNKNOWN,
        };
        let (ph, tail) = encode::path(&encode::walked(b"/w/#9"), b"", 0);
        let data = OpenData {
            f_mode: FMODE_WRITE,
            open_flags: O_TMPFILE | 0o1,
            flags: OPEN_FLAGS_UNKNOWN,
            path: ph,
            ..Default::default()
        };
        let rec = encode::record(EventKind::Open, EventHeader::default(), &data, &tail);
        let Body::Open(o) = parse(&rec).unwrap().body else {
            panic!()
        };
        assert!(o.tmpfile && o.flags_unknown && !o.size_unknown);
        let (ph, tail) = encode::path(&encode::walked(b"/bin/sh"), b"", 0);
        let exec = ExecData {
            flags: EXEC_PPID_UNKNOWN,
            exe: ph,
            ..Default::default()
        };
        let rec = encode::record(EventKind::Exec, EventHeader::default(), &exec, &tail);
        let Body::Exec(e) = parse(&rec).unwrap().body else {
            panic!()
        };
        assert_eq!(e.unknown, EXEC_PPID_UNKNOWN);
        let (o, mut tail) = encode::path(&encode::walked(b"/w/#9"), b"", 0);
        let (n, t2) = encode::path(b"", b"/w/final", 0);
        tail.extend_from_slice(&t2);
        let link = LinkData {
            src_ino: 9,
            src_dev: (8 << 20) | 3,
            src_flags: LINK_SRC_KNOWN,
            old: o,
            new: n,
            ..Default::default()
        };
        let rec = encode::record(EventKind::Link, EventHeader::default(), &link, &tail);
        let Body::Link(l) = parse(&rec).unwrap().body else {
            panic!()
        };
        assert_eq!(l.source, Some((libc::makedev(8, 3), 9)));
        assert_eq!(l.new.bytes, b"/w/final");
    }

    #[test]
    fn relative_unlink_is_joined_and_normalized() {
        let (ph, tail) = encode::path(&encode::walked(b"/w/sub"), b"../x.tmp", 0);
        let data = UnlinkData {
            path: ph,
            ..Default::default()
        };
        let rec = encode::record(EventKind::Unlink, EventHeader::default(), &data, &tail);
        let Body::Unlink { path, dir } = parse(&rec).unwrap().body else {
            panic!()
        };
        assert_eq!(path.bytes, b"/w/x.tmp");
        assert!(!dir);
    }
}
