//! What one task did to files, by path.
//!
//! Paths are what the record reports, so state is keyed by path (the
//! kernel suppresses repeated opens of the same file object, so one path
//! sees few events). Renames and links give a path's output state to the
//! new name; the old name keeps only what it was as an input.
//!
//! Three kinds of key (`FileKey`) keep what is known apart from what is
//! guessed: an exact path; an inexact one (what the kernel could read of
//! it, behind `INEXACT_MARK`), never hashed, never taken for an exact one;
//! and a file with no name (`O_TMPFILE`, or deleted before it was opened),
//! keyed by its device and inode until a link names it.

mod budget;
mod keys;
mod names;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, sync::Arc};

pub(crate) use self::{budget::FileBudget, keys::FileKey};
use crate::events::{FilePath, Open};

/// Content the task consumed: the file existed and was opened for reading
/// before the task wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Input {
    pub(crate) time_ns: u64,
    /// `stat` device number and inode of the file that was read.
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
}

/// Content the task produced at this path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Output {
    pub(crate) time_ns: u64,
    pub(crate) created: bool,
    pub(crate) truncated: bool,
    /// The path this content was renamed (or linked) from, if it arrived
    /// that way.
    pub(crate) renamed_from: Option<Vec<u8>>,
    /// `stat` device number of the file the task wrote (0: unknown), so
    /// hashing can skip a file system known to hang.
    pub(crate) dev: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FileState {
    pub(crate) input: Option<Input>,
    pub(crate) output: Option<Output>,
    /// The task unlinked or renamed away this path (as far as events say;
    /// the record checks the file system at the end).
    pub(crate) removed: bool,
    /// `PATH_*` flags when the kernel could not resolve the path exactly
    /// (only on inexact and unnamed keys).
    pub(crate) inexact: u16,
    /// Mount namespace (inode number) of the process that touched it last:
    /// where the file is looked up for hashing.
    pub(crate) mnt_ns: u32,
    /// Opened for reading and writing with open flags the kernel could not
    /// read: whether the open truncated it, so whether the task read
    /// content from before it (an input), is unknown.
    pub(crate) input_unknown: bool,
}

/// First read of pre-existing content: worth hashing right away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstRead {
    pub(crate) path: Vec<u8>,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) mnt_ns: u32,
}

/// Per-path state with a cap on how many paths one task may hold (and,
/// with a budget, all tasks together).
#[derive(Debug, Default)]
pub(crate) struct FileTable {
    paths: BTreeMap<Vec<u8>, FileState>,
    max_paths: usize,
    /// Paths not tracked because a cap was reached.
    pub(crate) overflow: u64,
    budget: Option<Arc<FileBudget>>,
}

impl Drop for FileTable {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.paths.len());
        }
    }
}

impl FileTable {
    pub(crate) fn new(max_paths: usize) -> Self {
        Self {
            paths: BTreeMap::new(),
            max_paths,
            overflow: 0,
            budget: None,
        }
    }

    /// Counts its paths against `budget` too.
    pub(crate) fn with_budget(mut self, budget: Option<Arc<FileBudget>>) -> Self {
        if let Some(b) = &budget {
            // Paths already held (a restored checkpoint) count, cap or not.
            b.hold(self.paths.len());
        }
        self.budget = budget;
        self
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.paths.len()
    }

    /// A table as a checkpoint had it.
    pub(crate) fn restore(
        max_paths: usize,
        paths: impl IntoIterator<Item = (Vec<u8>, FileState)>,
        overflow: u64,
    ) -> Self {
        Self {
            paths: paths.into_iter().collect(),
            max_paths,
            overflow,
            budget: None,
        }
    }

    /// Every file, by its key's bytes (`FileKey::parse` tells which kind).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &FileState)> {
        self.paths.iter()
    }

    #[cfg(test)]
    pub(crate) fn get(&self, path: &[u8]) -> Option<&FileState> {
        self.paths.get(path)
    }

    fn entry(&mut self, key: &[u8]) -> Option<&mut FileState> {
        if !self.paths.contains_key(key) {
            if self.paths.len() >= self.max_paths || self.budget.as_ref().is_some_and(|b| !b.take())
            {
                self.overflow += 1;
                return None;
            }
            self.paths.insert(key.to_vec(), FileState::default());
        }
        self.paths.get_mut(key)
    }

    /// The state of the file a path names, noting how it is inexact.
    fn entry_for(&mut self, path: &FilePath) -> Option<&mut FileState> {
        let st = self.entry(&FileKey::of_path(path))?;
        st.inexact |= path.inexact;
        Some(st)
    }

    /// A successful open of a regular file.
    pub(crate) fn open(&mut self, o: &Open, time_ns: u64, mnt_ns: u32) -> Option<FirstRead> {
        let user_dev = o.user_dev();
        let key = FileKey::of_open(o);
        let exact = o.path.is_exact();
        let st = self.entry(&key)?;
        st.inexact |= o.path.inexact;
        st.mnt_ns = mnt_ns;
        let wrote_before = st.output.is_some();
        // Created by this open (O_TMPFILE files count: nothing was there).
        let created = o.created || o.tmpfile;
        // The open may have truncated the file: then it read nothing that
        // existed before (unknown flags with write access: it may have).
        let maybe_truncated = o.truncated || (o.flags_unknown && o.write);
        let mut first_read = None;
        // Content that existed before this task touched it, and that this
        // open did not destroy, is an input.
        if o.read && st.input.is_none() && !wrote_before && !created {
            if !maybe_truncated {
                st.input = Some(Input {
                    time_ns,
                    dev: user_dev,
                    ino: o.ino,
                    size: o.size,
                });
                // Hashed only under a name it has.
                first_read = exact.then(|| FirstRead {
                    path: key.to_vec(),
                    dev: user_dev,
                    ino: o.ino,
                    mnt_ns,
                });
            } else if !o.truncated {
                st.input_unknown = true;
            }
        }
        if o.write {
            let out = st.output.get_or_insert_with(|| Output {
                time_ns,
                ..Output::default()
            });
            out.created |= created;
            out.truncated |= o.truncated;
            out.dev = user_dev;
            st.removed = false;
        }
        first_read
    }

    /// A successful unlink (or rmdir). A name that could not be read is
    /// noted as such: no exact path is marked removed by a guess.
    pub(crate) fn unlink(&mut self, path: &FilePath) {
        if let Some(st) = self.entry_for(path) {
            st.removed = true;
        }
    }
}
