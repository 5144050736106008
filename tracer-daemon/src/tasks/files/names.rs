//! Names given and taken: rename (renameat2's exchange included) and
//! link. Content keeps its output state under whatever name it ends up
//! with; a name that could not be read is noted, never guessed.

use super::{FileKey, FileTable, Output};
use crate::events::{FilePath, Link};

/// One tracked path's output state on its way to a new name.
struct Moved {
    /// The path below the renamed one (`""` for the renamed path itself).
    suffix: Vec<u8>,
    from: Vec<u8>,
    output: Option<Output>,
    mnt_ns: u32,
}

impl FileTable {
    /// A successful rename: what the task produced at `old` now lives at
    /// `new`, and so does everything below `old` when it is a directory.
    /// With `exchange` (renameat2's RENAME_EXCHANGE) the two names, and
    /// the trees below them, swap.
    pub(crate) fn rename(&mut self, old: &FilePath, new: &FilePath, exchange: bool, time_ns: u64) {
        let from_old = self.take_subtree(old);
        let from_new = if exchange {
            self.take_subtree(new)
        } else {
            Vec::new()
        };
        self.place(new, from_old, time_ns);
        if exchange {
            self.place(old, from_new, time_ns);
        }
    }

    /// A successful link: `new` is another name for the file `old` names.
    /// The new name holds the task's output when the file is one (`ln a b;
    /// rm a` leaves `b` as the output), and is an output itself otherwise:
    /// the task gave existing content a new name, as `cp` would. A file
    /// with no name (`O_TMPFILE`) is found by its identity and stops being
    /// nameless.
    pub(crate) fn link(&mut self, l: &Link, time_ns: u64) {
        let unnamed = l.source.and_then(|(dev, ino)| self.unnamed_key(dev, ino));
        let (output, mnt_ns, from) = match unnamed {
            Some(key) => match self.paths.get_mut(&key) {
                Some(st) => {
                    st.removed = true;
                    (st.output.take(), st.mnt_ns, key)
                }
                None => (None, 0, key),
            },
            None if l.old.is_exact() => match self.paths.get(&l.old.bytes) {
                Some(st) => (st.output.clone(), st.mnt_ns, l.old.bytes.clone()),
                None => (None, 0, l.old.bytes.clone()),
            },
            None => {
                // Noted, so the record names it as inexact.
                let _ = self.entry_for(&l.old);
                (None, 0, l.old.bytes.clone())
            }
        };
        let moved = Moved {
            suffix: Vec::new(),
            from,
            output,
            mnt_ns,
        };
        self.place(&l.new, vec![moved], time_ns);
    }

    /// The key of the unnamed file (dev, ino), if the task opened it.
    fn unnamed_key(&self, dev: u64, ino: u64) -> Option<Vec<u8>> {
        let prefix = FileKey::unnamed_prefix(dev, ino);
        let (key, _) = self.paths.range(prefix.clone()..).next()?;
        key.starts_with(&prefix).then(|| key.clone())
    }

    /// Takes the output state of `top` and of every tracked path below it,
    /// marking them removed. An inexact `top` is noted as such.
    fn take_subtree(&mut self, top: &FilePath) -> Vec<Moved> {
        let key = FileKey::of_path(top);
        let mut keys = vec![key.clone()];
        if top.is_exact() {
            let mut prefix = key.clone();
            prefix.push(b'/');
            keys.extend(
                self.paths
                    .range(prefix.clone()..)
                    .take_while(|(p, _)| p.starts_with(&prefix))
                    .map(|(p, _)| p.clone()),
            );
        }
        let mut moved = Vec::with_capacity(keys.len());
        for k in keys {
            // An exact name the task never touched needs no entry; an
            // inexact one gets one, so the record says it was there.
            let st = if k == key && !top.is_exact() {
                self.entry_for(top)
            } else {
                self.paths.get_mut(&k)
            };
            let (output, mnt_ns) = match st {
                Some(st) => {
                    st.removed = true;
                    (st.output.take(), st.mnt_ns)
                }
                None => (None, 0),
            };
            moved.push(Moved {
                suffix: k[key.len()..].to_vec(),
                from: k,
                output,
                mnt_ns,
            });
        }
        moved
    }

    /// Gives each moved state its place below `to`. Content that was not
    /// the task's (an input, an untracked file) becomes an output there:
    /// the task put it under that name.
    fn place(&mut self, to: &FilePath, moved: Vec<Moved>, time_ns: u64) {
        for m in moved {
            let mut key = FileKey::of_path(to);
            key.extend_from_slice(&m.suffix);
            let Some(st) = self.entry(&key) else { continue };
            st.inexact |= to.inexact;
            let mut out = m.output.unwrap_or(Output {
                time_ns,
                ..Output::default()
            });
            out.renamed_from.get_or_insert(m.from);
            st.output = Some(out);
            st.removed = false;
            if m.mnt_ns != 0 {
                st.mnt_ns = m.mnt_ns;
            }
        }
    }
}
