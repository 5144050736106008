//! From a finished task to a roar record: hash what it read and wrote (in
//! its own mount namespace), apply roar's filters, and fill in the
//! fragment. The only place that knows roar's format.

pub mod encoding;
pub mod filters;
pub mod fragment;
pub mod hashing;
pub mod mountns;

use std::{collections::BTreeMap, collections::HashMap, sync::Arc};

use roar_node_common::{event::EventKind, path};
use serde_json::{Map, Value, json};

use self::{
    encoding::Encoder,
    filters::{FileFilter, FilterConfig},
    fragment::{ArtifactRef, CAPTURE_METHOD, Fragment, HASH_ALGORITHM},
    hashing::{HashJob, HashOutcome, HashPool, HashSlot},
    mountns::{Namespaces, NsView},
};
use crate::tasks::{Task, process};

/// Converts the kernel's CLOCK_BOOTTIME timestamps to wall-clock seconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
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
    pub fn new() -> Self {
        Self {
            wall_minus_boot_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    pub fn wall(&self, boot_ns: u64) -> f64 {
        (boot_ns as i128 + self.wall_minus_boot_ns) as f64 / 1e9
    }

    pub fn now_boot_ns() -> u64 {
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
pub struct BundleName {
    pub pod: String,
    pub container: String,
    pub attempt: String,
}

impl BundleName {
    pub fn file_name(&self) -> String {
        fragment::bundle_file_name(&self.pod, &self.container, &self.attempt)
    }
}

/// Who the task is: supplied by the mode that traced it.
#[derive(Clone, Debug, Default)]
pub struct TaskIdentity {
    pub task_id: String,
    pub task_name: String,
    /// "local", "k8s" or "osmo".
    pub backend: String,
    pub node: String,
    pub execution_role: String,
    pub bundle: BundleName,
    /// The process whose argv is "the command" (its first exec).
    pub command_pid: Option<u32>,
    /// Exit code known from outside the kernel (waitpid, container status).
    pub exit_code: Option<i32>,
    /// Mode-specific metadata (cgroup, pod, labels...).
    pub metadata: Map<String, Value>,
}

/// Capture facts from outside the task state.
#[derive(Clone, Debug, Default)]
pub struct CaptureFacts {
    /// Events of this task the kernel could not send, all causes (its
    /// filter entry's `lost`).
    pub lost_in_kernel: u64,
    /// Of those, the events abandoned because a kernel read failed (its
    /// filter entry's `read_failed`); the rest found the ring buffer full.
    pub read_failed_in_kernel: u64,
    /// Records of this task rejected by the decoder.
    pub decode_errors: u64,
    /// Why the capture is incomplete, if it is.
    pub partial: Option<String>,
}

/// Everything a record is built from.
pub struct FinishedTask {
    pub task: Task,
    pub identity: TaskIdentity,
    /// Inputs hashed when first read, by path.
    pub input_hashes: HashMap<Vec<u8>, Arc<HashSlot>>,
    pub namespaces: Namespaces,
    pub capture: CaptureFacts,
}

impl CaptureFacts {
    /// Every lost event of the task, once, by cause.
    pub fn lost_by_cause(&self) -> Value {
        let read_failed = self.read_failed_in_kernel.min(self.lost_in_kernel);
        json!({
            "kernel_ring_buffer_full": self.lost_in_kernel - read_failed,
            "kernel_read_failed": read_failed,
            "undecodable": self.decode_errors,
        })
    }
}

/// A record ready for a sink, and the figures for a summary line.
#[derive(Clone, Debug)]
pub struct Record {
    pub fragment: Fragment,
    pub bundle: BundleName,
    pub summary: Summary,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub processes: usize,
    pub reads: usize,
    pub writes: usize,
    pub events: u64,
    pub lost: u64,
    pub deleted: usize,
    pub unhashed: usize,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub const PATH_ENCODING: &str = "Paths and argv are UTF-8 strings when the bytes are valid UTF-8. \
Otherwise every byte outside valid UTF-8 is written %XX and every '%' as %25, and the value is listed \
in non_utf8 with its raw bytes in base64.";

pub struct RecordBuilder<'a> {
    pub pool: &'a HashPool,
    pub filters: &'a FilterConfig,
    pub clock: Clock,
    pub host: String,
}

fn path_flag_names(flags: u16) -> Vec<&'static str> {
    let mut v = Vec::new();
    for (bit, name) in [
        (path::PATH_TRUNCATED, "truncated"),
        (path::PATH_OUTSIDE_ROOT, "outside_root"),
        (path::PATH_READ_ERROR, "read_error"),
        (path::PATH_RAW_TRUNCATED, "argument_truncated"),
        (path::PATH_RAW_READ_ERROR, "argument_unreadable"),
        (path::PATH_DISCONNECTED, "disconnected"),
    ] {
        if flags & bit != 0 {
            v.push(name);
        }
    }
    v
}

impl RecordBuilder<'_> {
    pub fn build(&self, done: FinishedTask) -> Record {
        let FinishedTask {
            task,
            identity,
            input_hashes,
            namespaces,
            capture,
        } = done;
        let mut enc = Encoder::default();
        let mut filter = FileFilter::new(self.filters);
        for p in task.processes.iter() {
            if let Some(exe) = &p.exe {
                filter.learn_executable(&exe.bytes);
            }
        }

        // Decide what goes in, and queue every hash still needed.
        let mut dropped: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (path, st) in task.files.iter() {
            let view = namespaces.resolve(st.mnt_ns as u64);
            let ns = view.held();
            if let Some(input) = &st.input {
                match filter.read(path, st.output.is_some()) {
                    Some(why) => *dropped.entry(why.name()).or_default() += 1,
                    None => {
                        let slot = match input_hashes.get(path) {
                            Some(s) => s.clone(),
                            None if matches!(view, NsView::Gone) => HashSlot::ready(ns_gone()),
                            None => {
                                let slot = HashSlot::new();
                                self.pool.submit(HashJob {
                                    ns: ns.clone(),
                                    path: path.clone(),
                                    expect: Some((input.dev, input.ino)),
                                    slot: slot.clone(),
                                });
                                slot
                            }
                        };
                        inputs.push((path, st, slot));
                    }
                }
            }
            if st.output.is_some() {
                match filter.write(path) {
                    Some(why) => *dropped.entry(why.name()).or_default() += 1,
                    None if matches!(view, NsView::Gone) => {
                        outputs.push((path, st, HashSlot::ready(ns_gone())));
                    }
                    None => {
                        let slot = HashSlot::new();
                        self.pool.submit(HashJob {
                            ns,
                            path: path.clone(),
                            expect: None,
                            slot: slot.clone(),
                        });
                        outputs.push((path, st, slot));
                    }
                }
            }
        }

        let mut unhashed = Vec::new();
        let mut inexact = Vec::new();
        let mut reads = Vec::new();
        for (path, st, slot) in inputs {
            let encoded = enc.encode(path);
            let input = st.input.as_ref().map(|i| i.size).unwrap_or(0);
            let (hash, size) = match slot.wait() {
                HashOutcome::Hashed(d) => (Some(d.blake3), d.size),
                other => {
                    unhashed
                        .push(json!({"path": encoded, "role": "input", "reason": other.reason()}));
                    (None, input)
                }
            };
            if st.inexact != 0 {
                inexact.push(json!({"path": encoded, "problems": path_flag_names(st.inexact)}));
            }
            reads.push(artifact(encoded, hash, size));
        }
        let mut writes = Vec::new();
        let mut deleted = Vec::new();
        let mut not_regular = 0u64;
        for (path, st, slot) in outputs {
            let encoded = enc.encode(path);
            match slot.wait() {
                HashOutcome::Hashed(d) => {
                    if st.inexact != 0 {
                        inexact.push(
                            json!({"path": encoded, "problems": path_flag_names(st.inexact)}),
                        );
                    }
                    writes.push(artifact(encoded, Some(d.blake3), d.size));
                }
                HashOutcome::Missing => deleted.push(Value::String(encoded)),
                HashOutcome::NotRegular => not_regular += 1,
                other => {
                    unhashed
                        .push(json!({"path": encoded, "role": "output", "reason": other.reason()}));
                    writes.push(artifact(encoded, None, 0));
                }
            }
        }
        // Pre-existing files the task removed without reading or writing.
        for (path, st) in task.files.iter() {
            if st.removed
                && st.input.is_none()
                && st.output.is_none()
                && filter.write(path).is_none()
            {
                deleted.push(Value::String(enc.encode(path)));
            }
        }

        // The process tree.
        let mut procs: Vec<&process::Process> = task.processes.iter().collect();
        procs.sort_by_key(|p| (p.start_ns, p.tgid));
        let processes: Vec<Value> = procs
            .iter()
            .map(|p| {
                json!({
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
                })
            })
            .collect();
        let command = identity
            .command_pid
            .and_then(|pid| task.processes.get(pid))
            .or_else(|| procs.first().copied());
        // What the command was started as (its first exec), not what it
        // became (a shell execs the last command of `sh -c '...'`).
        let argv: Vec<String> = command
            .map(|p| {
                p.first_argv
                    .as_ref()
                    .unwrap_or(&p.argv)
                    .iter()
                    .map(|a| enc.encode(a))
                    .collect()
            })
            .unwrap_or_default();
        let exit_code = identity
            .exit_code
            .or_else(|| command.and_then(|p| p.exit_status).map(process::exit_code))
            .unwrap_or(0);

        let events: u64 = task.stats.total_events();
        let lost = capture.lost_in_kernel + capture.decode_errors;
        let by_kind: Map<String, Value> = EventKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), json!(task.stats.events[*k as usize])))
            .filter(|(_, v)| v != &json!(0))
            .collect();
        let summary = Summary {
            processes: task.processes.len(),
            reads: reads.len(),
            writes: writes.len(),
            events,
            lost,
            deleted: deleted.len(),
            unhashed: unhashed.len(),
        };
        let partial = capture.partial.clone().or_else(|| {
            (lost > 0 || task.files.overflow > 0 || task.processes.overflow > 0)
                .then(|| "events were lost; see capture".to_string())
        });

        let mut md = Map::new();
        md.insert("execution_role".into(), json!(identity.execution_role));
        md.insert("roar_node_version".into(), json!(VERSION));
        md.insert("host".into(), json!(self.host));
        md.insert("argv".into(), json!(argv));
        md.insert("processes".into(), Value::Array(processes));
        md.insert(
            "capture".into(),
            json!({
                "method": CAPTURE_METHOD,
                "events": events,
                "events_by_kind": by_kind,
                "events_lost": lost,
                "lost_by_cause": capture.lost_by_cause(),
                "files_over_cap": task.files.overflow,
                "processes_over_cap": task.processes.overflow,
                "argv_over_cap": task.processes.argv_over_cap,
                "input_hash_deferred": task.stats.input_hash_deferred,
                "mount_namespaces_missed": namespaces.missed,
                "outputs_not_regular_files": not_regular,
                "filtered": dropped,
                "partial": partial.is_some(),
                "partial_reason": partial,
            }),
        );
        md.insert("deleted".into(), Value::Array(deleted));
        md.insert("unhashed".into(), Value::Array(unhashed));
        if !inexact.is_empty() {
            md.insert("inexact_paths".into(), Value::Array(inexact));
        }
        md.insert("path_encoding".into(), json!(PATH_ENCODING));
        md.insert(
            "non_utf8".into(),
            Value::Array(
                enc.non_utf8
                    .iter()
                    .map(|(s, b)| json!({"value": s, "raw_base64": b}))
                    .collect(),
            ),
        );
        for (k, v) in identity.metadata.iter() {
            md.insert(k.clone(), v.clone());
        }

        let started = task.first_ns.map(|t| self.clock.wall(t)).unwrap_or(0.0);
        let ended = task.last_ns.map(|t| self.clock.wall(t)).unwrap_or(started);
        let job_uid = job_uid(
            &identity.task_id,
            &identity.node,
            task.first_ns.unwrap_or(0),
        );
        let fragment = Fragment {
            job_uid,
            parent_job_uid: String::new(),
            task_id: identity.task_id.clone(),
            worker_id: String::new(),
            node_id: identity.node.clone(),
            actor_id: None,
            task_name: identity.task_name.clone(),
            started_at: started,
            ended_at: ended,
            exit_code,
            backend: identity.backend.clone(),
            recorded_at: Some(self.clock.wall(Clock::now_boot_ns())),
            reads,
            writes,
            worker_packages: None,
            task_identity: String::new(),
            backend_metadata: md,
        };
        Record {
            fragment,
            bundle: identity.bundle,
            summary,
        }
    }
}

fn artifact(path: String, hash: Option<String>, size: u64) -> ArtifactRef {
    ArtifactRef {
        path,
        hash,
        hash_algorithm: HASH_ALGORITHM.into(),
        size,
        capture_method: CAPTURE_METHOD.into(),
        byte_ranges: None,
    }
}

/// roar's job uids are 8 hex characters; ours derive from the task's
/// identity so a record emitted twice has the same uid.
/// Why a file seen in a namespace that ended too early has no hash.
fn ns_gone() -> HashOutcome {
    HashOutcome::Unreadable(
        "its mount namespace ended before roar-node could hold it (a process that lived only milliseconds)"
            .into(),
    )
}

pub fn job_uid(task_id: &str, node: &str, start_ns: u64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(task_id.as_bytes());
    h.update(b"\0");
    h.update(node.as_bytes());
    h.update(&start_ns.to_le_bytes());
    h.finalize().to_hex()[..8].to_string()
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
            partial: None,
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
}
