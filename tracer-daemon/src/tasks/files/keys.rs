//! How a file table keys a file: by its exact path, by what is known of an
//! inexact one, or by the identity of a file with no name.

use std::borrow::Cow;

use roar_node_common::path::PATH_NAMELESS;

use crate::events::{FilePath, INEXACT_MARK, Open};

/// Starts the key of a file with no name. No path contains a NUL byte, so
/// neither an exact nor an inexact path can start like it.
const UNNAMED: &[u8] = b"\0unnamed:";

/// A key of a task's file table, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKey<'a> {
    /// The path, exactly as the task named the file.
    Exact(&'a [u8]),
    /// What the kernel could resolve of a path (starts with
    /// `INEXACT_MARK`).
    Inexact(&'a [u8]),
    /// A file that had no name when it was opened, identified by its
    /// `stat` device and inode; `shown` is what the kernel's walk found
    /// (a placeholder such as `…/dir/#123`, or a name it no longer had).
    Unnamed { dev: u64, ino: u64, shown: &'a [u8] },
}

impl FileKey<'_> {
    /// The key of the file a path names (for rename, unlink and link
    /// arguments, which always name a file: never an unnamed one).
    pub(crate) fn of_path(path: &FilePath) -> Vec<u8> {
        path.bytes.clone()
    }

    /// The key of the file an open reports: its path (borrowed: this is
    /// the event path), or the unnamed kind when it had no link or hangs
    /// below no directory (`O_TMPFILE`, a deleted file reopened through
    /// /proc, a memfd).
    pub(crate) fn of_open(o: &Open) -> Cow<'_, [u8]> {
        if o.path.inexact & PATH_NAMELESS == 0 {
            return Cow::Borrowed(&o.path.bytes);
        }
        let mut k = Self::unnamed_prefix(o.user_dev(), o.ino);
        k.extend_from_slice(&o.path.bytes);
        Cow::Owned(k)
    }

    /// Every key of the unnamed file (dev, ino) starts with this.
    pub(crate) fn unnamed_prefix(dev: u64, ino: u64) -> Vec<u8> {
        let mut k = UNNAMED.to_vec();
        k.extend_from_slice(format!("{dev}:{ino}\0").as_bytes());
        k
    }

    pub(crate) fn parse(key: &[u8]) -> FileKey<'_> {
        if let Some(rest) = key.strip_prefix(UNNAMED)
            && let Some(nul) = rest.iter().position(|b| *b == 0)
        {
            let id = std::str::from_utf8(&rest[..nul]).unwrap_or_default();
            let mut parts = id.split(':').map(|n| n.parse::<u64>().unwrap_or(0));
            let (dev, ino) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            return FileKey::Unnamed {
                dev,
                ino,
                shown: &rest[nul + 1..],
            };
        }
        if key.starts_with(INEXACT_MARK.as_bytes()) || key.first() != Some(&b'/') {
            return FileKey::Inexact(key);
        }
        FileKey::Exact(key)
    }
}
