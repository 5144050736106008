//! From a finished task to a roar record: hash what it read and wrote (in
//! its own mount namespace), apply roar's path filters, and fill in the
//! fragment (`RecordBuilder::build`), then name it with who the task was
//! (`identity`). The only place that knows roar's format.

pub(crate) mod encoding;
mod files;
pub(crate) mod fragment;
pub(crate) mod hashing;
mod identity;
pub(crate) mod mountns;
pub(crate) mod path_filters;

use std::{collections::HashMap, sync::Arc};

use roar_node_common::{
    event::{
        EXEC_ARGV_READ_ERROR, EXEC_MNT_NS_UNKNOWN, EXEC_PPID_UNKNOWN, EXEC_UID_UNKNOWN, EventKind,
    },
    path::PATH_INCOMPLETE,
};
use serde_json::{Map, Value, json};

pub(crate) use self::identity::{LocalTask, PodTask, TaskIdentity, TracerUsage, UnnamedRecord};
use self::{
    encoding::Encoder,
    files::Files,
    fragment::{CAPTURE_METHOD, Fragment},
    hashing::{HashPool, HashSlot},
    mountns::Namespaces,
    path_filters::{PathFilter, PathFilterConfig},
};
use crate::tasks::{Task, process};

/// Converts the kernel's CLOCK_BOOTTIME timestamps to wall-clock seconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    wall_minus_boot_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            wall_minus_boot_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    pub(crate) fn wall(&self, boot_ns: u64) -> f64 {
        (boot_ns as i128 + self.wall_minus_boot_ns) as f64 / 1e9
    }

    pub(crate) fn now_boot_ns() -> u64 {
        clock_ns(libc::CLOCK_BOOTTIME) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// roar's bundle naming parts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BundleName {
    /// Empty: named after the record's job uid (`run-<uid>`).
    pub(crate) pod: String,
    pub(crate) container: String,
    pub(crate) attempt: String,
}

impl BundleName {
    pub(crate) fn file_name(&self) -> String {
        fragment::bundle_file_name(&self.pod, &self.container, &self.attempt)
    }
}

/// Capture facts from outside the task state.
#[derive(Clone, Debug, Default)]
pub(crate) struct CaptureFacts {
    /// Events of this task the kernel could not send, all causes (its
    /// trace-set entry's `lost`).
    pub(crate) lost_in_kernel: u64,
    /// Of those, the events abandoned because a kernel read failed (its
    /// trace-set entry's `read_failed`); the rest found the ring buffer full.
    pub(crate) read_failed_in_kernel: u64,
    /// Ring-buffer records rejected by the decoder while the task ran.
    pub(crate) decode_errors: u64,
}

/// Everything a record is built from.
pub(crate) struct FinishedTask {
    pub(crate) task: Task,
    /// Inputs hashed when first read, by path.
    pub(crate) input_hashes: HashMap<Vec<u8>, Arc<HashSlot>>,
    pub(crate) namespaces: Namespaces,
    pub(crate) capture: CaptureFacts,
}

impl CaptureFacts {
    /// Every lost event of the task, once, by cause.
    fn lost_by_cause(&self) -> Value {
        let read_failed = self.read_failed_in_kernel.min(self.lost_in_kernel);
        json!({
            "kernel_ring_buffer_full": self.lost_in_kernel - read_failed,
            "kernel_read_failed": read_failed,
            "undecodable": self.decode_errors,
        })
    }
}

/// A roar record ready for a sink, and the figures for a summary line.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) fragment: Fragment,
    pub(crate) bundle: BundleName,
    /// Whose record it is, for sinks that file records by it.
    pub(crate) owner: Owner,
    pub(crate) summary: Summary,
}

/// Whose task a record describes, beyond its task id: what a reader
/// lists records by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The pod's namespace (`None`: a local run, or the pod was gone).
    pub(crate) namespace: Option<String>,
    /// OSMO's `osmo.workflow_id` label, for OSMO tasks.
    pub(crate) workflow_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) processes: usize,
    pub(crate) reads: usize,
    pub(crate) writes: usize,
    pub(crate) events: u64,
    pub(crate) lost: u64,
    pub(crate) deleted: usize,
    pub(crate) unhashed: usize,
}

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

const PATH_ENCODING: &str = "Paths and argv are UTF-8 strings when the bytes are valid UTF-8. \
Otherwise every byte outside valid UTF-8 is written %XX and every '%' as %25, and the value is listed \
in non_utf8 with its raw bytes in base64.";

pub(crate) struct RecordBuilder<'a> {
    pub(crate) pool: &'a HashPool,
    pub(crate) filters: &'a PathFilterConfig,
    pub(crate) clock: Clock,
}

impl RecordBuilder<'_> {
    /// The record of what the task did: files (hashed), processes and
    /// capture counters. Who the task was comes next
    /// ([`UnnamedRecord::name`]).
    pub(crate) fn build(&self, done: FinishedTask) -> UnnamedRecord {
        let FinishedTask {
            task,
            input_hashes,
            namespaces,
            capture,
        } = done;
        let mut enc = Encoder::default();
        let mut filter = PathFilter::new(self.filters);
        for p in task.processes.iter() {
            if let Some(exe) = &p.exe {
                filter.learn_executable(&exe.bytes);
            }
        }
        let mut files = Files::default();
        files.collect(
            &task,
            &input_hashes,
            &namespaces,
            &filter,
            self.pool,
            &mut enc,
        );
        // An executable path the kernel could not read to the end is
        // inexact; one that has no name (run from a memfd, or deleted) is
        // not a lost path: its process entry says so.
        for p in task.processes.iter() {
            if let Some(exe) = p.exe.as_ref().filter(|e| e.inexact & PATH_INCOMPLETE != 0) {
                files.note_inexact(enc.encode(&exe.bytes), vec!["executable"], exe.inexact);
            }
        }

        let events = task.stats.total_events();
        let lost = capture.lost_in_kernel + capture.decode_errors;
        let summary = Summary {
            processes: task.processes.len(),
            reads: files.reads.len(),
            writes: files.writes.len(),
            events,
            lost,
            deleted: files.deleted.len(),
            unhashed: files.unhashed.len(),
        };
        let mut md = Map::new();
        md.insert("roar_node_version".into(), json!(VERSION));
        md.insert("processes".into(), self.process_list(&task, &mut enc));
        md.insert(
            "capture".into(),
            capture_json(&task, &capture, &namespaces, &files),
        );
        // Every path exact and every field read, or the record says what
        // is not and is partial.
        let inexact = !files.inexact.is_empty()
            || !files.maybe_inputs.is_empty()
            || task.stats.unreadable.total() > 0;
        md.insert("deleted".into(), Value::Array(files.deleted));
        md.insert("unhashed".into(), Value::Array(files.unhashed));
        if !files.inexact.is_empty() {
            md.insert("inexact_paths".into(), Value::Array(files.inexact));
        }
        if !files.maybe_inputs.is_empty() {
            md.insert("maybe_inputs".into(), Value::Array(files.maybe_inputs));
        }
        if !files.nameless_reads.is_empty() {
            md.insert("nameless_reads".into(), Value::Array(files.nameless_reads));
        }
        md.insert("path_encoding".into(), json!(PATH_ENCODING));
        UnnamedRecord {
            reads: files.reads,
            writes: files.writes,
            metadata: md,
            encoder: enc,
            lost: lost > 0 || task.files.overflow > 0 || task.processes.overflow > 0,
            inexact,
            first_ns: task.first_ns,
            last_ns: task.last_ns,
            processes: task.processes,
            summary,
            clock: self.clock,
        }
    }

    /// The process tree, oldest first.
    fn process_list(&self, task: &Task, enc: &mut Encoder) -> Value {
        let mut procs: Vec<&process::Process> = task.processes.iter().collect();
        procs.sort_by_key(|p| (p.start_ns, p.tgid));
        procs
            .iter()
            .map(|p| {
                let mut v = json!({
                    "pid": p.tgid,
                    "ppid": p.ppid,
                    "argv": p.argv.iter().map(|a| enc.encode(a)).collect::<Vec<_>>(),
                    "argv_truncated": p.argv_truncated,
                    "argv_bytes": p.argv_total_len,
                    "executable": p.exe.as_ref().map(|e| enc.encode(&e.bytes)),
                    "started_at": self.clock.wall(p.start_ns),
                    "ended_at": p.end_ns.map(|t| self.clock.wall(t)),
                    "exit_code": p.exit_status.map(process::exit_code),
                    "signal": p.exit_status.and_then(process::exit_signal),
                    "threads": p.threads,
                    "uid": p.uid,
                });
                // Fields the kernel could not read: null above, named here.
                let unreadable = unreadable_exec_fields(p.unknown);
                if !unreadable.is_empty() {
                    v["unreadable_fields"] = json!(unreadable);
                }
                if let Some(exe) = p.exe.as_ref().filter(|e| !e.is_exact()) {
                    v["executable_problems"] = json!(files::path_flag_names(exe.inexact));
                }
                v
            })
            .collect()
    }
}

/// Names of an exec's `EXEC_*` unknown-field bits.
fn unreadable_exec_fields(unknown: u32) -> Vec<&'static str> {
    [
        (EXEC_PPID_UNKNOWN, "ppid"),
        (EXEC_MNT_NS_UNKNOWN, "mount_namespace"),
        (EXEC_UID_UNKNOWN, "uid"),
        (EXEC_ARGV_READ_ERROR, "argv"),
    ]
    .into_iter()
    .filter(|(bit, _)| unknown & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// `backend_metadata.capture`; `partial` is decided when the record is
/// named (the mode may know more reasons).
fn capture_json(task: &Task, capture: &CaptureFacts, ns: &Namespaces, files: &Files) -> Value {
    let by_kind: Map<String, Value> = EventKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), json!(task.stats.events[*k as usize])))
        .filter(|(_, v)| v != &json!(0))
        .collect();
    json!({
        "method": CAPTURE_METHOD,
        "events": task.stats.total_events(),
        "events_by_kind": by_kind,
        "events_lost": capture.lost_in_kernel + capture.decode_errors,
        "lost_by_cause": capture.lost_by_cause(),
        "files_over_cap": task.files.overflow,
        "processes_over_cap": task.processes.overflow,
        "argv_over_cap": task.processes.argv_over_cap,
        "input_hash_deferred": task.stats.input_hash_deferred,
        "mount_namespaces_missed": ns.missed,
        "outputs_not_regular_files": files.outputs_not_regular,
        "filtered": files.filtered,
        "inexact_paths": files.inexact.len(),
        "inexact_events": task.stats.inexact_events,
        "unreadable_fields": unreadable_json(&task.stats.unreadable),
        "unnamed_files": files.unnamed,
        "nameless_reads": files.nameless_reads.len(),
        "unhashed_over_budget": files.over_budget,
        "partial": false,
        "partial_reason": null,
    })
}

fn unreadable_json(u: &crate::tasks::UnreadableFields) -> Value {
    json!({
        "ppid": u.ppid,
        "mount_namespace": u.mount_namespace,
        "uid": u.uid,
        "argv": u.argv,
        "open_flags": u.open_flags,
        "size": u.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_losses_are_split_by_cause_and_add_up() {
        let facts = CaptureFacts {
            lost_in_kernel: 7,
            read_failed_in_kernel: 2,
            decode_errors: 1,
        };
        let by_cause = facts.lost_by_cause();
        assert_eq!(by_cause["kernel_ring_buffer_full"], 5);
        assert_eq!(by_cause["kernel_read_failed"], 2);
        assert_eq!(by_cause["undecodable"], 1);
        let sum: u64 = by_cause
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(sum, facts.lost_in_kernel + facts.decode_errors);
    }

    /// A task's record from events (no kernel, real hashing of nothing).
    fn record_of(events: Vec<crate::events::Body>) -> UnnamedRecord {
        use crate::{events::Event, tasks::TaskLimits};
        let mut task = Task::new(TaskLimits::default());
        for (i, body) in events.into_iter().enumerate() {
            task.apply(&Event {
                task: 1,
                tgid: 10,
                pid: 10,
                time_ns: i as u64 + 1,
                body,
            });
        }
        let pool = HashPool::new(1, 8, 8, hashing::HashBudget::default()).unwrap();
        let own = mountns::MountNs::current().unwrap().inum;
        RecordBuilder {
            pool: &pool,
            filters: &PathFilterConfig::default(),
            clock: Clock::new(),
        }
        .build(FinishedTask {
            task,
            input_hashes: HashMap::new(),
            namespaces: Namespaces::new(own),
            capture: CaptureFacts::default(),
        })
    }

    fn exec_of(exe: &str, flags: u16) -> crate::events::Body {
        crate::events::Body::Exec(crate::events::Exec {
            ppid: 1,
            exe: crate::events::FilePath {
                bytes: exe.as_bytes().to_vec(),
                inexact: flags,
            },
            argv: vec![b"x".to_vec()],
            argv_truncated: false,
            argv_unreadable: false,
            argv_total_len: 2,
            mnt_ns: 0,
            uid: 0,
            own_cgroup: 0,
            unknown: 0,
        })
    }

    /// An executable path cut short is a lost path (partial); a binary
    /// with no name (a memfd, as runc runs itself) is described, not lost.
    #[test]
    fn only_executables_with_lost_paths_make_a_record_partial() {
        use roar_node_common::path::{PATH_DISCONNECTED, PATH_TRUNCATED};
        let memfd = record_of(vec![exec_of("…memfd:runc_cloned", PATH_DISCONNECTED)]);
        assert!(!memfd.inexact, "{:?}", memfd.metadata);
        assert!(memfd.metadata.get("inexact_paths").is_none());
        let p = &memfd.metadata["processes"][0];
        assert_eq!(p["executable_problems"], json!(["disconnected"]));
        let deep = record_of(vec![exec_of("…/d/tool", PATH_TRUNCATED)]);
        assert!(deep.inexact);
        let entry = &deep.metadata["inexact_paths"][0];
        assert_eq!(entry["roles"], json!(["executable"]));
        assert_eq!(entry["problems"], json!(["truncated"]));
        let plain = record_of(vec![exec_of("/bin/sh", 0)]);
        assert!(!plain.inexact);
        assert!(
            plain.metadata["processes"][0]
                .get("executable_problems")
                .is_none()
        );
    }
}
