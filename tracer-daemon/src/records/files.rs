//! A task's files in its record: which are reads and writes (hashed in
//! the task's mount namespace), which were deleted, which could not be
//! hashed and why, and which have no exact path (named as inexact, never
//! hashed nor called deleted under a guessed name).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use roar_node_common::path;
use serde_json::{Value, json};

use super::{
    encoding::Encoder,
    fragment::{ArtifactRef, CAPTURE_METHOD, HASH_ALGORITHM},
    hashing::{HashJob, HashOutcome, HashPool, HashSlot},
    mountns::{Namespaces, NsView},
    path_filters::PathFilter,
};
use crate::tasks::{FileKey, FileState, Task};

/// The task's files as roar's filters and the hashes decide.
#[derive(Default)]
pub(super) struct Files {
    pub(super) reads: Vec<ArtifactRef>,
    pub(super) writes: Vec<ArtifactRef>,
    pub(super) deleted: Vec<Value>,
    pub(super) unhashed: Vec<Value>,
    /// Files and executables without an exact path, with what is known.
    pub(super) inexact: Vec<Value>,
    /// Files opened read-write with unknown flags: maybe inputs.
    pub(super) maybe_inputs: Vec<Value>,
    /// Paths roar's filters left out, by category.
    pub(super) filtered: BTreeMap<&'static str, u64>,
    pub(super) outputs_not_regular: u64,
    /// `O_TMPFILE` files that never got a name: temporaries, not outputs.
    pub(super) unnamed: u64,
    /// Files read that hang below no directory (a memfd reopened through
    /// /proc, as runc reads its own cloned binary; a pipe): no path was
    /// lost, there never was one.
    pub(super) nameless_reads: Vec<Value>,
    /// Files given up past their hashing budget (or on a hung mount).
    pub(super) over_budget: u64,
}

/// A file the record keeps, with the hash that will describe it.
struct Kept<'t> {
    path: &'t [u8],
    state: &'t FileState,
    slot: Arc<HashSlot>,
}

/// The `problems` names of `PATH_*` flags.
pub(super) fn path_flag_names(flags: u16) -> Vec<&'static str> {
    [
        (path::PATH_TRUNCATED, "truncated"),
        (path::PATH_OUTSIDE_ROOT, "outside_root"),
        (path::PATH_READ_ERROR, "read_error"),
        (path::PATH_RAW_TRUNCATED, "argument_truncated"),
        (path::PATH_RAW_READ_ERROR, "argument_unreadable"),
        (path::PATH_DISCONNECTED, "disconnected"),
        (path::PATH_UNLINKED, "no_name"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// What the record says the task did with a file.
fn roles(st: &FileState) -> Vec<&'static str> {
    [
        (st.input.is_some(), "input"),
        (st.output.is_some(), "output"),
        (st.removed, "removed"),
    ]
    .into_iter()
    .filter(|(yes, _)| *yes)
    .map(|(_, role)| role)
    .collect()
}

impl Files {
    /// Sorts the task's files: exact ones are queued for hashing (inputs
    /// not hashed at first read, every output) and come back as `Kept`;
    /// the rest are noted right away.
    pub(super) fn collect(
        &mut self,
        task: &Task,
        input_hashes: &HashMap<Vec<u8>, Arc<HashSlot>>,
        namespaces: &Namespaces,
        filter: &PathFilter,
        pool: &HashPool,
        enc: &mut Encoder,
    ) {
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (key, st) in task.files.iter() {
            let path = match FileKey::parse(key) {
                FileKey::Exact(p) => p,
                FileKey::Inexact(shown) => {
                    self.note_inexact(enc.encode(shown), roles(st), st.inexact);
                    continue;
                }
                FileKey::Unnamed { shown, .. } => {
                    self.note_unnamed(st, shown, enc);
                    continue;
                }
            };
            if st.input_unknown && filter.read(path, st.output.is_some()).is_none() {
                self.maybe_inputs.push(Value::String(enc.encode(path)));
            }
            let view = namespaces.resolve(st.mnt_ns as u64);
            let gone = matches!(view, NsView::Gone);
            let hash = |expect: Option<(u64, u64)>, dev: u64| {
                if gone {
                    HashSlot::ready(ns_gone())
                } else {
                    submit(pool, &view, path, expect, dev)
                }
            };
            if let Some(input) = &st.input {
                match filter.read(path, st.output.is_some()) {
                    Some(why) => *self.filtered.entry(why.name()).or_default() += 1,
                    None => {
                        let slot = match input_hashes.get(path) {
                            Some(s) => s.clone(),
                            None => hash(Some((input.dev, input.ino)), input.dev),
                        };
                        inputs.push(Kept {
                            path,
                            state: st,
                            slot,
                        });
                    }
                }
            }
            if let Some(out) = &st.output {
                match filter.write(path) {
                    Some(why) => *self.filtered.entry(why.name()).or_default() += 1,
                    None => outputs.push(Kept {
                        path,
                        state: st,
                        slot: hash(None, out.dev),
                    }),
                }
            }
        }
        self.collect_reads(inputs, enc);
        self.collect_writes(outputs, enc);
        self.collect_removed(task, filter, enc);
    }

    /// A file that had no name when opened: an `O_TMPFILE` file the task
    /// never named is a temporary (counted); one that was named is
    /// recorded under its name; a read of a file that hangs below no
    /// directory (a memfd, a pipe) is described, as it has no path to
    /// lose; anything else (a deleted file opened through /proc, a write
    /// to a memfd) is a file without an exact path.
    fn note_unnamed(&mut self, st: &FileState, shown: &[u8], enc: &mut Encoder) {
        let temporary = st.input.is_none() && st.output.as_ref().is_some_and(|o| o.created);
        let named_later = st.input.is_none() && st.output.is_none() && st.removed;
        // Below no directory, whatever its link count (a memfd has none).
        let never_named =
            st.inexact & path::PATH_DISCONNECTED != 0 && st.inexact & path::PATH_INCOMPLETE == 0;
        if temporary {
            self.unnamed += 1;
        } else if never_named && st.output.is_none() && !st.removed {
            self.nameless_reads.push(json!({
                "path": enc.encode(shown),
                "problems": path_flag_names(st.inexact),
            }));
        } else if !named_later {
            self.note_inexact(enc.encode(shown), roles(st), st.inexact);
        }
    }

    /// Names a path as inexact (once per path: its roles and problems
    /// merged).
    pub(super) fn note_inexact(&mut self, shown: String, roles: Vec<&str>, flags: u16) {
        let problems = path_flag_names(flags);
        if let Some(e) = self
            .inexact
            .iter_mut()
            .find(|e| e["path"] == shown.as_str())
        {
            for (key, add) in [("roles", &roles), ("problems", &problems)] {
                let list = e[key].as_array_mut().expect("a list");
                for a in add {
                    if !list.iter().any(|v| v == a) {
                        list.push(json!(a));
                    }
                }
            }
            return;
        }
        self.inexact
            .push(json!({"path": shown, "roles": roles, "problems": problems}));
    }

    /// Why `outcome` left a file unhashed, counted by cause.
    fn unhashed(&mut self, path: &str, role: &str, outcome: &HashOutcome) {
        if matches!(outcome, HashOutcome::OverBudget(_)) {
            self.over_budget += 1;
        }
        self.unhashed
            .push(json!({"path": path, "role": role, "reason": outcome.reason()}));
    }

    fn collect_reads(&mut self, inputs: Vec<Kept<'_>>, enc: &mut Encoder) {
        for k in inputs {
            let encoded = enc.encode(k.path);
            let size_at_open = k.state.input.as_ref().map(|i| i.size).unwrap_or(0);
            let (hash, size) = match k.slot.wait() {
                HashOutcome::Hashed(d) => (Some(d.blake3), d.size),
                other => {
                    self.unhashed(&encoded, "input", &other);
                    (None, size_at_open)
                }
            };
            self.reads.push(artifact(encoded, hash, size));
        }
    }

    fn collect_writes(&mut self, outputs: Vec<Kept<'_>>, enc: &mut Encoder) {
        for k in outputs {
            let encoded = enc.encode(k.path);
            match k.slot.wait() {
                HashOutcome::Hashed(d) => {
                    self.writes.push(artifact(encoded, Some(d.blake3), d.size))
                }
                HashOutcome::Missing => self.deleted.push(Value::String(encoded)),
                HashOutcome::NotRegular => self.outputs_not_regular += 1,
                other => {
                    self.unhashed(&encoded, "output", &other);
                    self.writes.push(artifact(encoded, None, 0));
                }
            }
        }
    }

    /// Pre-existing files the task removed without reading or writing.
    fn collect_removed(&mut self, task: &Task, filter: &PathFilter, enc: &mut Encoder) {
        for (key, st) in task.files.iter() {
            if let FileKey::Exact(path) = FileKey::parse(key)
                && st.removed
                && st.input.is_none()
                && st.output.is_none()
                && filter.write(path).is_none()
            {
                self.deleted.push(Value::String(enc.encode(path)));
            }
        }
    }
}

fn submit(
    pool: &HashPool,
    view: &NsView,
    path: &[u8],
    expect: Option<(u64, u64)>,
    dev: u64,
) -> Arc<HashSlot> {
    let slot = HashSlot::new();
    pool.submit(HashJob {
        ns: view.held(),
        path: path.to_vec(),
        expect,
        dev: (dev != 0).then_some(dev),
        slot: slot.clone(),
    });
    slot
}

pub(super) fn artifact(path: String, hash: Option<String>, size: u64) -> ArtifactRef {
    ArtifactRef {
        path,
        hash,
        hash_algorithm: HASH_ALGORITHM.into(),
        size,
        capture_method: CAPTURE_METHOD.into(),
        byte_ranges: None,
    }
}

/// Why a file seen in a namespace that ended too early has no hash.
fn ns_gone() -> HashOutcome {
    HashOutcome::Unreadable(
        "its mount namespace ended before roar-node could hold it (a process that lived only milliseconds)"
            .into(),
    )
}
