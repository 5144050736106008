//! Userspace half: turn one ring-buffer record into a typed, borrowed view,
//! and the inverse (`encode`) for tests and fuzzing.
//!
//! Decoding never trusts the kernel's lengths: every length is checked
//! against the record, and a bad record is an error, never a panic.

extern crate std;

use core::mem::size_of;
use std::vec::Vec;

use crate::event::*;
use crate::offsets::{KernelOffsets, TracerConfig};
use crate::path::PathHeader;
use crate::traced::{SeenKey, TracedCgroup};

// SAFETY: plain-old-data, `#[repr(C)]`, no padding holes read as values.
unsafe impl aya::Pod for TracedCgroup {}
unsafe impl aya::Pod for SeenKey {}
unsafe impl aya::Pod for KernelOffsets {}
unsafe impl aya::Pod for TracerConfig {}

/// Why a record was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the header or than its kind's fixed part.
    Truncated,
    /// `header.kind` is not an `EventKind`.
    UnknownKind(u16),
    /// `header.size` disagrees with the record's length.
    SizeMismatch { header: u32, actual: usize },
    /// The lengths in the fixed part point past the end of the record.
    TailOverflow,
}

impl DecodeError {
    /// Stable label, for counters.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::UnknownKind(_) => "unknown_kind",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::TailOverflow => "tail_overflow",
        }
    }
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => write!(f, "record shorter than its fixed part"),
            Self::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            Self::SizeMismatch { header, actual } => {
                write!(f, "header says {header} bytes, record has {actual}")
            }
            Self::TailOverflow => write!(f, "variable-length part overruns the record"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A path as the kernel sent it (see `crate::path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawPath<'a> {
    pub flags: u16,
    /// Leaf-first, NUL-terminated components.
    pub walked: &'a [u8],
    /// The caller's string, as passed.
    pub raw: &'a [u8],
}

impl RawPath<'_> {
    /// The path's bytes: `raw` when absolute, else the walked directory
    /// (reversed into root-first order) joined with `raw`. Not normalized:
    /// `.` and `..` in `raw` stay as the process wrote them.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.raw.first() == Some(&b'/') {
            return self.raw.to_vec();
        }
        let mut out = Vec::with_capacity(self.walked.len() + self.raw.len() + 2);
        let comps = self.walked.split(|b| *b == 0).filter(|c| !c.is_empty());
        let mut comps: Vec<&[u8]> = comps.collect();
        comps.reverse();
        for c in comps {
            out.push(b'/');
            out.extend_from_slice(c);
        }
        if !self.raw.is_empty() {
            out.push(b'/');
            out.extend_from_slice(self.raw);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        out
    }
}

/// One decoded record, borrowing its variable parts from the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawEvent<'a> {
    Exec {
        header: EventHeader,
        data: ExecData,
        exe: RawPath<'a>,
        argv: &'a [u8],
    },
    Fork {
        header: EventHeader,
        data: ForkData,
    },
    Exit {
        header: EventHeader,
        data: ExitData,
    },
    Open {
        header: EventHeader,
        data: OpenData,
        path: RawPath<'a>,
    },
    Rename {
        header: EventHeader,
        data: RenameData,
        old: RawPath<'a>,
        new: RawPath<'a>,
    },
    Unlink {
        header: EventHeader,
        data: UnlinkData,
        path: RawPath<'a>,
    },
    Link {
        header: EventHeader,
        data: LinkData,
        old: RawPath<'a>,
        new: RawPath<'a>,
    },
    Cgroup {
        header: EventHeader,
        data: CgroupData,
        path: &'a [u8],
    },
}

impl RawEvent<'_> {
    pub fn header(&self) -> &EventHeader {
        match self {
            Self::Exec { header, .. }
            | Self::Fork { header, .. }
            | Self::Exit { header, .. }
            | Self::Open { header, .. }
            | Self::Rename { header, .. }
            | Self::Unlink { header, .. }
            | Self::Link { header, .. }
            | Self::Cgroup { header, .. } => header,
        }
    }

    pub fn kind(&self) -> EventKind {
        // Only constructed from a valid kind.
        EventKind::from_u16(self.header().kind).unwrap_or(EventKind::Exec)
    }
}

fn read<T: Copy>(buf: &[u8], at: usize) -> Result<T, DecodeError> {
    let end = at
        .checked_add(size_of::<T>())
        .ok_or(DecodeError::Truncated)?;
    if end > buf.len() {
        return Err(DecodeError::Truncated);
    }
    // SAFETY: bounds checked above; T is a repr(C) POD; unaligned read.
    Ok(unsafe { core::ptr::read_unaligned(buf.as_ptr().add(at).cast::<T>()) })
}

/// Splits the tail into consecutive slices of the given lengths.
struct Tail<'a> {
    rest: &'a [u8],
}

impl<'a> Tail<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.rest.len() {
            return Err(DecodeError::TailOverflow);
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    fn path(&mut self, h: &PathHeader) -> Result<RawPath<'a>, DecodeError> {
        let raw = self.take(h.raw_len as usize)?;
        let walked = self.take(h.walked_len as usize)?;
        Ok(RawPath {
            flags: h.flags,
            walked,
            raw,
        })
    }
}

/// Decodes one ring-buffer record.
///
/// One arm per event kind, kept together: the whole wire layout in one
/// place (its length is the number of kinds).
pub fn decode(buf: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    let header: EventHeader = read(buf, 0)?;
    let kind = EventKind::from_u16(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    if header.size as usize != buf.len() {
        // The ring buffer rounds records up to 8 bytes; the kernel's size is
        // exact, so allow only that padding.
        if (header.size as usize) > buf.len() || buf.len() - header.size as usize >= 8 {
            return Err(DecodeError::SizeMismatch {
                header: header.size,
                actual: buf.len(),
            });
        }
    }
    let buf = &buf[..header.size as usize];
    let h = size_of::<EventHeader>();
    macro_rules! fixed {
        ($t:ty) => {{
            let data: $t = read(buf, h)?;
            (
                data,
                Tail {
                    rest: &buf[h + size_of::<$t>()..],
                },
            )
        }};
    }
    Ok(match kind {
        EventKind::Exec => {
            let (data, mut tail): (ExecData, _) = fixed!(ExecData);
            let exe = tail.path(&data.exe)?;
            let argv = tail.take(data.argv_len as usize)?;
            RawEvent::Exec {
                header,
                data,
                exe,
                argv,
            }
        }
        EventKind::Fork => RawEvent::Fork {
            header,
            data: fixed!(ForkData).0,
        },
        EventKind::Exit => RawEvent::Exit {
            header,
            data: fixed!(ExitData).0,
        },
        EventKind::Open => {
            let (data, mut tail): (OpenData, _) = fixed!(OpenData);
            let path = tail.path(&data.path)?;
            RawEvent::Open { header, data, path }
        }
        EventKind::Rename => {
            let (data, mut tail): (RenameData, _) = fixed!(RenameData);
            let old = tail.path(&data.old)?;
            let new = tail.path(&data.new)?;
            RawEvent::Rename {
                header,
                data,
                old,
                new,
            }
        }
        EventKind::Unlink => {
            let (data, mut tail): (UnlinkData, _) = fixed!(UnlinkData);
            let path = tail.path(&data.path)?;
            RawEvent::Unlink { header, data, path }
        }
        EventKind::Link => {
            let (data, mut tail): (LinkData, _) = fixed!(LinkData);
            let old = tail.path(&data.old)?;
            let new = tail.path(&data.new)?;
            RawEvent::Link {
                header,
                data,
                old,
                new,
            }
        }
        EventKind::CgroupMkdir | EventKind::CgroupRmdir => {
            let (data, mut tail): (CgroupData, _) = fixed!(CgroupData);
            let path = tail.take(data.path_len as usize)?;
            RawEvent::Cgroup { header, data, path }
        }
    })
}

/// Builds records the way the kernel does: for tests and fuzz seeds.
pub mod encode {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> &[u8] {
        // SAFETY: T is a repr(C) POD; reading its bytes is fine.
        unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    /// Leaf-first NUL-terminated components of an absolute path, as the
    /// kernel's dentry walk writes them.
    pub fn walked(path: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let comps: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        for c in comps.iter().rev() {
            out.extend_from_slice(c);
            out.push(0);
        }
        out
    }

    /// A path header and its tail bytes.
    pub fn path(walked: &[u8], raw: &[u8], flags: u16) -> (PathHeader, Vec<u8>) {
        let h = PathHeader {
            walked_len: walked.len() as u16,
            raw_len: raw.len() as u16,
            flags,
            _pad: 0,
        };
        let mut t = raw.to_vec();
        t.extend_from_slice(walked);
        (h, t)
    }

    /// Header + fixed data + tail; fills in `header.size` and `kind`.
    pub fn record<T: Copy>(
        kind: EventKind,
        mut header: EventHeader,
        data: &T,
        tail: &[u8],
    ) -> Vec<u8> {
        header.kind = kind as u16;
        header.size = (size_of::<EventHeader>() + size_of::<T>() + tail.len()) as u32;
        let mut out = Vec::with_capacity(header.size as usize);
        out.extend_from_slice(bytes_of(&header));
        out.extend_from_slice(bytes_of(data));
        out.extend_from_slice(tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;

    fn hdr() -> EventHeader {
        EventHeader {
            tgid: 10,
            pid: 11,
            cgroup_id: 1234,
            timestamp_ns: 99,
            ..Default::default()
        }
    }

    #[test]
    fn open_round_trips() {
        let (ph, tail) = path(&walked(b"/home/data/b.txt"), b"", 0);
        let data = OpenData {
            fd: 3,
            f_mode: 1,
            dev: 7,
            ino: 42,
            path: ph,
            ..Default::default()
        };
        let rec = record(EventKind::Open, hdr(), &data, &tail);
        match decode(&rec).unwrap() {
            RawEvent::Open {
                header,
                data: d,
                path,
            } => {
                assert_eq!(header.tgid, 10);
                assert_eq!(header.size as usize, rec.len());
                assert_eq!(d, data);
                assert_eq!(path.to_bytes(), b"/home/data/b.txt");
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn relative_raw_path_joins_walked_directory() {
        let (ph, tail) = path(&walked(b"/work/dir"), b"out/x.tmp", 0);
        let p = RawPath {
            flags: ph.flags,
            raw: &tail[..ph.raw_len as usize],
            walked: &tail[ph.raw_len as usize..],
        };
        assert_eq!(p.to_bytes(), b"/work/dir/out/x.tmp");
        let abs = RawPath {
            flags: 0,
            walked: b"",
            raw: b"/abs/y",
        };
        assert_eq!(abs.to_bytes(), b"/abs/y");
        let root = RawPath {
            flags: 0,
            walked: b"",
            raw: b"",
        };
        assert_eq!(root.to_bytes(), b"/");
    }

    #[test]
    fn non_utf8_and_long_names_survive() {
        let name: Vec<u8> = b"/d/\xff\xfe-"
            .iter()
            .copied()
            .chain(core::iter::repeat_n(b'a', 300))
            .collect();
        let (ph, tail) = path(&walked(&name), b"", 0);
        let data = OpenData {
            path: ph,
            ..Default::default()
        };
        let rec = record(EventKind::Open, hdr(), &data, &tail);
        let RawEvent::Open { path, .. } = decode(&rec).unwrap() else {
            panic!()
        };
        assert_eq!(path.to_bytes(), name);
    }

    #[test]
    fn rename_carries_two_paths_in_order() {
        let (o, mut tail) = path(&walked(b"/w"), b"a.tmp", 0);
        let (n, t2) = path(b"", b"/w/a", 0);
        tail.extend_from_slice(&t2);
        let data = RenameData {
            old: o,
            new: n,
            ..Default::default()
        };
        let rec = record(EventKind::Rename, hdr(), &data, &tail);
        let RawEvent::Rename { old, new, .. } = decode(&rec).unwrap() else {
            panic!()
        };
        assert_eq!(old.to_bytes(), b"/w/a.tmp");
        assert_eq!(new.to_bytes(), b"/w/a");
    }

    #[test]
    fn link_carries_the_source_identity_and_two_paths() {
        let (o, mut tail) = path(&walked(b"/w/#77"), b"", 0);
        let (n, t2) = path(&walked(b"/w"), b"final.bin", 0);
        tail.extend_from_slice(&t2);
        let data = LinkData {
            flags: AT_EMPTY_PATH,
            src_ino: 77,
            src_dev: 9,
            src_flags: LINK_SRC_KNOWN,
            old: o,
            new: n,
            ..Default::default()
        };
        let rec = record(EventKind::Link, hdr(), &data, &tail);
        let RawEvent::Link {
            data: d, old, new, ..
        } = decode(&rec).unwrap()
        else {
            panic!()
        };
        assert_eq!(d, data);
        assert_eq!(old.to_bytes(), b"/w/#77");
        assert_eq!(new.to_bytes(), b"/w/final.bin");
    }

    #[test]
    fn exec_argv_and_cgroup_path() {
        let (ph, mut tail) = path(&walked(b"/bin/sh"), b"", 0);
        tail.extend_from_slice(b"sh\0-c\0true\0");
        let data = ExecData {
            argv_len: 11,
            argv_total_len: 11,
            exe: ph,
            ..Default::default()
        };
        let rec = record(EventKind::Exec, hdr(), &data, &tail);
        let RawEvent::Exec { exe, argv, .. } = decode(&rec).unwrap() else {
            panic!()
        };
        assert_eq!(exe.to_bytes(), b"/bin/sh");
        assert_eq!(argv, b"sh\0-c\0true\0");

        let cg = CgroupData {
            id: 5,
            path_len: 4,
            ..Default::default()
        };
        let rec = record(EventKind::CgroupMkdir, hdr(), &cg, b"/a/b");
        let RawEvent::Cgroup { data, path, .. } = decode(&rec).unwrap() else {
            panic!()
        };
        assert_eq!((data.id, path), (5, &b"/a/b"[..]));
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(decode(&[0u8; 4]), Err(DecodeError::Truncated));
        let rec = record(EventKind::Fork, hdr(), &ForkData::default(), &[]);
        let mut bad = rec.clone();
        bad[0] = 77;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(77)));
        // Lengths that point past the end.
        let data = OpenData {
            path: PathHeader {
                walked_len: 500,
                ..Default::default()
            },
            ..Default::default()
        };
        let rec = record(EventKind::Open, hdr(), &data, b"short\0");
        assert_eq!(decode(&rec), Err(DecodeError::TailOverflow));
        // Size field lying about the length.
        let mut rec = record(EventKind::Exit, hdr(), &ExitData::default(), &[]);
        rec[4] = 200;
        assert!(matches!(
            decode(&rec),
            Err(DecodeError::SizeMismatch { .. })
        ));
        // Ring-buffer padding (up to 7 bytes) is accepted.
        let mut rec = record(EventKind::Exit, hdr(), &ExitData::default(), &[]);
        rec.extend_from_slice(&[0; 4]);
        assert!(decode(&rec).is_ok());
    }
}
