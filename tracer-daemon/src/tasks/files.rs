//! What one task did to files, by path.
//!
//! Paths are what the record reports, so state is keyed by path (the
//! kernel suppresses repeated opens of the same file object, so one path
//! sees few events). Renames move a path's output state to the new name;
//! the old name keeps only what it was as an input.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

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
    /// The path this content was renamed from, if it arrived by rename.
    pub(crate) renamed_from: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FileState {
    pub(crate) input: Option<Input>,
    pub(crate) output: Option<Output>,
    /// The task unlinked or renamed away this path (as far as events say;
    /// the record checks the file system at the end).
    pub(crate) removed: bool,
    /// `PATH_*` flags when the kernel could not resolve the path exactly.
    pub(crate) inexact: u16,
    /// Mount namespace (inode number) of the process that touched it last:
    /// where the file is looked up for hashing.
    pub(crate) mnt_ns: u32,
}

/// First read of pre-existing content: worth hashing right away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstRead {
    pub(crate) path: Vec<u8>,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) mnt_ns: u32,
}

/// Paths all tasks together may hold (the daemon's memory bound: several
/// big tasks at once must not add up past it). Each table gives its paths
/// back when it is dropped, after its record is built.
#[derive(Debug)]
pub(crate) struct FileBudget {
    used: AtomicUsize,
    max: usize,
}

impl FileBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.max).then_some(u + 1)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
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
            b.used.fetch_add(self.paths.len(), Ordering::AcqRel);
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

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &FileState)> {
        self.paths.iter()
    }

    #[cfg(test)]
    pub(crate) fn get(&self, path: &[u8]) -> Option<&FileState> {
        self.paths.get(path)
    }

    fn entry(&mut self, path: &[u8]) -> Option<&mut FileState> {
        if !self.paths.contains_key(path) {
            if self.paths.len() >= self.max_paths || self.budget.as_ref().is_some_and(|b| !b.take())
            {
                self.overflow += 1;
                return None;
            }
            self.paths.insert(path.to_vec(), FileState::default());
        }
        self.paths.get_mut(path)
    }

    /// A successful open of a regular file.
    pub(crate) fn open(&mut self, o: &Open, time_ns: u64, mnt_ns: u32) -> Option<FirstRead> {
        let user_dev = o.user_dev();
        let st = self.entry(&o.path.bytes)?;
        st.inexact |= o.path.inexact;
        st.mnt_ns = mnt_ns;
        let wrote_before = st.output.is_some();
        let mut first_read = None;
        // Content that existed before this task touched it, and that this
        // open did not destroy, is an input.
        if o.read && st.input.is_none() && !wrote_before && !o.created && !o.truncated {
            st.input = Some(Input {
                time_ns,
                dev: user_dev,
                ino: o.ino,
                size: o.size,
            });
            first_read = Some(FirstRead {
                path: o.path.bytes.clone(),
                dev: user_dev,
                ino: o.ino,
                mnt_ns,
            });
        }
        if o.write {
            let out = st.output.get_or_insert_with(|| Output {
                time_ns,
                ..Output::default()
            });
            out.created |= o.created;
            out.truncated |= o.truncated;
            st.removed = false;
        }
        first_read
    }

    /// A successful rename: what the task produced at `old` now lives at
    /// `new`, and so does everything below `old` when it is a directory.
    pub(crate) fn rename(&mut self, old: &FilePath, new: &FilePath, exchange: bool, time_ns: u64) {
        if exchange {
            // Both names now hold different content: both are outputs.
            for (a, b) in [(old, new), (new, old)] {
                if let Some(st) = self.entry(&a.bytes) {
                    let out = st.output.get_or_insert_with(Output::default);
                    out.renamed_from = Some(b.bytes.clone());
                    out.time_ns = time_ns;
                    st.removed = false;
                }
            }
            return;
        }
        // Directory rename: move every tracked path below `old`.
        let mut prefix = old.bytes.clone();
        prefix.push(b'/');
        let below: Vec<Vec<u8>> = self
            .paths
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for p in below {
            let mut to = new.bytes.clone();
            to.extend_from_slice(&p[old.bytes.len()..]);
            self.move_path(&p, &to, new.inexact, time_ns);
        }
        self.move_path(&old.bytes, &new.bytes, old.inexact | new.inexact, time_ns);
    }

    fn move_path(&mut self, from: &[u8], to: &[u8], inexact: u16, time_ns: u64) {
        let (moved, mnt_ns) = match self.paths.get_mut(from) {
            Some(st) => {
                st.removed = true;
                (st.output.take(), st.mnt_ns)
            }
            None => (None, 0),
        };
        let Some(st) = self.entry(to) else { return };
        let mut out = moved.unwrap_or(Output {
            time_ns,
            ..Output::default()
        });
        if out.renamed_from.is_none() {
            out.renamed_from = Some(from.to_vec());
        }
        st.output = Some(out);
        st.removed = false;
        st.inexact |= inexact;
        if mnt_ns != 0 {
            st.mnt_ns = mnt_ns;
        }
    }

    /// A successful unlink (or rmdir).
    pub(crate) fn unlink(&mut self, path: &FilePath) {
        if let Some(st) = self.entry(&path.bytes) {
            st.removed = true;
            st.inexact |= path.inexact;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tasks share a budget of 3 paths: the second overflows once the
    /// first holds 2; when the first is dropped its paths come back.
    #[test]
    fn a_shared_budget_bounds_all_tasks() {
        let budget = FileBudget::new(3);
        let mut a = FileTable::new(100).with_budget(Some(budget.clone()));
        let mut b = FileTable::new(100).with_budget(Some(budget.clone()));
        let open = |t: &mut FileTable, p: &str| {
            let o = Open {
                path: FilePath {
                    bytes: p.as_bytes().to_vec(),
                    inexact: 0,
                },
                read: false,
                write: true,
                created: true,
                truncated: false,
                dev: 1,
                ino: 1,
                generation: 0,
                size: 0,
                syscall: 257,
            };
            t.open(&o, 1, 0);
        };
        open(&mut a, "/a1");
        open(&mut a, "/a2");
        open(&mut b, "/b1");
        open(&mut b, "/b2");
        open(&mut b, "/b1"); // known path: no budget needed
        assert_eq!((a.len(), b.len(), b.overflow), (2, 1, 1));
        assert_eq!(budget.used(), 3);
        drop(a);
        assert_eq!(budget.used(), 1);
        open(&mut b, "/b3");
        assert_eq!((b.len(), b.overflow), (2, 1));
    }

    fn fp(p: &str) -> FilePath {
        FilePath {
            bytes: p.as_bytes().to_vec(),
            inexact: 0,
        }
    }

    fn open(p: &str, read: bool, write: bool, created: bool) -> Open {
        Open {
            path: fp(p),
            read,
            write,
            created,
            truncated: false,
            dev: 1 << 20,
            ino: 7,
            generation: 0,
            size: 3,
            syscall: 257,
        }
    }

    #[test]
    fn read_of_existing_file_is_an_input_once() {
        let mut t = FileTable::new(100);
        assert!(t.open(&open("/d/a", true, false, false), 1, 0).is_some());
        assert!(t.open(&open("/d/a", true, false, false), 2, 0).is_none());
        let st = t.get(b"/d/a").unwrap();
        assert_eq!(st.input.as_ref().unwrap().time_ns, 1);
        assert!(st.output.is_none());
    }

    #[test]
    fn reading_back_own_output_is_not_an_input() {
        let mut t = FileTable::new(100);
        t.open(&open("/d/b", false, true, true), 1, 0);
        assert!(t.open(&open("/d/b", true, false, false), 2, 0).is_none());
        let st = t.get(b"/d/b").unwrap();
        assert!(st.input.is_none());
        assert!(st.output.as_ref().unwrap().created);
    }

    #[test]
    fn temp_file_renamed_over_final_name() {
        let mut t = FileTable::new(100);
        t.open(&open("/d/ckpt.tmp", false, true, true), 1, 0);
        t.rename(&fp("/d/ckpt.tmp"), &fp("/d/ckpt"), false, 2);
        let tmp = t.get(b"/d/ckpt.tmp").unwrap();
        assert!(tmp.output.is_none() && tmp.removed);
        let fin = t.get(b"/d/ckpt").unwrap();
        let out = fin.output.as_ref().unwrap();
        assert!(out.created);
        assert_eq!(out.renamed_from.as_deref(), Some(&b"/d/ckpt.tmp"[..]));
    }

    #[test]
    fn renaming_an_input_keeps_it_an_input_and_makes_an_output() {
        let mut t = FileTable::new(100);
        t.open(&open("/d/in", true, false, false), 1, 0);
        t.rename(&fp("/d/in"), &fp("/d/moved"), false, 2);
        assert!(t.get(b"/d/in").unwrap().input.is_some());
        assert!(t.get(b"/d/moved").unwrap().output.is_some());
    }

    #[test]
    fn directory_rename_moves_children() {
        let mut t = FileTable::new(100);
        t.open(&open("/w/stage/x", false, true, true), 1, 0);
        t.open(&open("/w/stage2/y", false, true, true), 1, 0);
        t.rename(&fp("/w/stage"), &fp("/w/final"), false, 2);
        assert!(t.get(b"/w/final/x").unwrap().output.is_some());
        assert!(t.get(b"/w/stage/x").unwrap().output.is_none());
        // A sibling with a common prefix is not a child.
        assert!(t.get(b"/w/stage2/y").unwrap().output.is_some());
    }

    #[test]
    fn unlink_then_recreate() {
        let mut t = FileTable::new(100);
        t.open(&open("/d/c", false, true, true), 1, 0);
        t.unlink(&fp("/d/c"));
        assert!(t.get(b"/d/c").unwrap().removed);
        t.open(&open("/d/c", false, true, true), 3, 0);
        assert!(!t.get(b"/d/c").unwrap().removed);
    }

    #[test]
    fn cap_counts_overflow() {
        let mut t = FileTable::new(2);
        t.open(&open("/a", true, false, false), 1, 0);
        t.open(&open("/b", true, false, false), 1, 0);
        t.open(&open("/c", true, false, false), 1, 0);
        assert_eq!((t.len(), t.overflow), (2, 1));
    }
}
