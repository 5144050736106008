//! The second phase of a record: naming it with who the task was.
//!
//! `RecordBuilder::build` makes an [`UnnamedRecord`] from what the task
//! did (files, hashes, processes, capture counters); the mode that traced
//! it then names it with its [`TaskIdentity`]: `run` knows who the task is
//! from the start, the daemon only once the API server has said (often
//! after the task ended). Both go through [`UnnamedRecord::name`], the one
//! place that writes roar's identity fields and keys.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Clock, Record, Summary, encoding::Encoder, fragment::ArtifactRef, fragment::Fragment};
use crate::{
    attribution::{Role, TaskMeta, pods::PodInfo, policy::is_osmo},
    probes::KernelStats,
    proto as pb,
    tasks::{Process, ProcessTree, process},
};

/// Who a task was, as the mode that traced it knows it.
pub(crate) enum TaskIdentity {
    /// `roar-node run`: one command in a cgroup of its own.
    Local(LocalTask),
    /// One run of one container of a pod (the daemon).
    Pod(Box<PodTask>),
}

pub(crate) struct LocalTask {
    pub(crate) host: String,
    /// The first 8 hex digits of the kernel's boot id: cgroup ids repeat
    /// across boots.
    pub(crate) boot_id: String,
    pub(crate) cgroup_id: u64,
    pub(crate) cgroup_path: String,
    /// `--name`, or the command line.
    pub(crate) name: String,
    /// The command's file name (the bundle's "container" part).
    pub(crate) program: String,
    pub(crate) command_pid: u32,
    pub(crate) exit_code: i32,
    /// The kernel's counters at the end of the run.
    pub(crate) kernel_counters: KernelStats,
    /// roar-node's own CPU time and memory for the run (why not, if it
    /// could not be read).
    pub(crate) tracer_usage: Result<TracerUsage, String>,
}

/// roar-node's own cost for a run (the command's is not included).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TracerUsage {
    pub(crate) cpu_user_seconds: f64,
    pub(crate) cpu_system_seconds: f64,
    pub(crate) max_rss_bytes: u64,
}

pub(crate) struct PodTask {
    pub(crate) meta: TaskMeta,
    /// The pod as last seen (gone: deleted before the record was named).
    pub(crate) pod: Option<PodInfo>,
    /// From the container's status; `None`: taken from the kernel.
    pub(crate) exit_code: Option<i32>,
    pub(crate) node: String,
    /// The kernel's counters when the task closed.
    pub(crate) kernel_counters: KernelStats,
    /// Times no roar-node captured the task (restarts).
    pub(crate) gaps: Vec<pb::Gap>,
    /// The container ended while no roar-node ran: the record comes from
    /// the last checkpoint.
    pub(crate) ended_while_down: bool,
}

/// Why a record is `partial`, most telling first: a record has one
/// `partial_reason`, the first of these that holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PartialReason {
    EndedWhileDown,
    RestartGap,
    StartedBeforeAgent,
    EventsLost,
    Inexact,
}

impl PartialReason {
    /// What a pod task's capture missed, if anything (events lost are
    /// added later: they are the least telling).
    fn of_pod_task(ended_while_down: bool, gaps: &[pb::Gap], meta: &TaskMeta) -> Option<Self> {
        if ended_while_down {
            Some(PartialReason::EndedWhileDown)
        } else if !gaps.is_empty() {
            Some(PartialReason::RestartGap)
        } else if meta.started_before_agent {
            Some(PartialReason::StartedBeforeAgent)
        } else {
            None
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PartialReason::EndedWhileDown => {
                "the container ended while no roar-node was running: what it did after the last checkpoint was not captured"
            }
            PartialReason::RestartGap => {
                "roar-node restarted while the task ran: events in the gaps are missing"
            }
            PartialReason::StartedBeforeAgent => {
                "the container was running before roar-node traced it: earlier processes and files are missing"
            }
            PartialReason::EventsLost => "events were lost; see capture",
            PartialReason::Inexact => {
                "some paths or kernel fields could not be read exactly; see inexact_paths, maybe_inputs and capture.unreadable_fields"
            }
        }
    }
}

/// Where a container task's exit code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitCodeSource {
    ContainerStatus,
    /// The pod was known but its status did not say in time.
    KernelNoStatus,
    KernelPodGone,
}

impl ExitCodeSource {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ExitCodeSource::ContainerStatus => "container_status",
            ExitCodeSource::KernelNoStatus => "kernel (no container status in time)",
            ExitCodeSource::KernelPodGone => "kernel (pod gone)",
        }
    }
}

/// A record built from what the task did, not yet named.
pub(crate) struct UnnamedRecord {
    pub(crate) reads: Vec<ArtifactRef>,
    pub(crate) writes: Vec<ArtifactRef>,
    /// backend_metadata so far (capture, processes, files not recorded).
    pub(crate) metadata: Map<String, Value>,
    /// Encodes argv too, so `non_utf8` lists every value it changed.
    pub(crate) encoder: Encoder,
    pub(crate) processes: ProcessTree,
    pub(crate) first_ns: Option<u64>,
    pub(crate) last_ns: Option<u64>,
    /// Events or files were lost (capture says which).
    pub(crate) lost: bool,
    /// A path or a kernel field could not be read exactly (the record
    /// names which).
    pub(crate) inexact: bool,
    pub(crate) summary: Summary,
    pub(crate) clock: Clock,
}

/// The parts of a record that differ between the modes.
struct Naming {
    task_id: String,
    task_name: String,
    backend: &'static str,
    node: String,
    command_pid: Option<u32>,
    exit_code: Option<i32>,
    partial: Option<PartialReason>,
    gaps: Vec<pb::Gap>,
    metadata: Map<String, Value>,
    bundle: super::BundleName,
    owner: super::Owner,
}

impl UnnamedRecord {
    /// The record, named: roar's identity fields, the command, the exit
    /// code, the mode's metadata and the bundle file name.
    pub(crate) fn name(mut self, identity: TaskIdentity) -> Record {
        let naming = match identity {
            TaskIdentity::Local(l) => local_naming(l),
            TaskIdentity::Pod(p) => pod_naming(*p, &self.processes),
        };
        let command = naming
            .command_pid
            .and_then(|pid| self.processes.get(pid))
            .or_else(|| first_process(&self.processes));
        // What the command was started as (its first exec), not what it
        // became (a shell execs the last command of `sh -c '...'`).
        let argv: Vec<String> = command
            .map(|p| {
                p.first_argv
                    .as_ref()
                    .unwrap_or(&p.argv)
                    .iter()
                    .map(|a| self.encoder.encode(a))
                    .collect()
            })
            .unwrap_or_default();
        let exit_code = naming
            .exit_code
            .or_else(|| command.and_then(|p| p.exit_status).map(process::exit_code))
            .unwrap_or(0);
        let partial = naming
            .partial
            .or(self.lost.then_some(PartialReason::EventsLost))
            .or(self.inexact.then_some(PartialReason::Inexact));
        let md = &mut self.metadata;
        md.insert("argv".into(), json!(argv));
        for (k, v) in naming.metadata {
            md.insert(k, v);
        }
        mark_partial(md, partial, &naming.gaps);
        md.insert("non_utf8".into(), self.encoder.non_utf8_json());
        let started = self.first_ns.map(|t| self.clock.wall(t)).unwrap_or(0.0);
        let fragment = Fragment {
            job_uid: job_uid(&naming.task_id, &naming.node, self.first_ns.unwrap_or(0)),
            parent_job_uid: String::new(),
            task_id: naming.task_id,
            worker_id: String::new(),
            node_id: naming.node,
            actor_id: None,
            task_name: naming.task_name,
            started_at: started,
            ended_at: self.last_ns.map(|t| self.clock.wall(t)).unwrap_or(started),
            exit_code,
            backend: naming.backend.into(),
            recorded_at: Some(self.clock.wall(Clock::now_boot_ns())),
            reads: self.reads,
            writes: self.writes,
            worker_packages: None,
            task_identity: String::new(),
            backend_metadata: self.metadata,
        };
        let mut bundle = naming.bundle;
        if bundle.pod.is_empty() {
            // `run`: the job uid keeps two runs' bundles apart.
            bundle.pod = format!("run-{}", fragment.job_uid);
        }
        Record {
            fragment,
            bundle,
            owner: naming.owner,
            summary: self.summary,
        }
    }
}

fn first_process(procs: &ProcessTree) -> Option<&Process> {
    procs.iter().min_by_key(|p| (p.start_ns, p.tgid))
}

fn local_naming(l: LocalTask) -> Naming {
    let mut md = Map::new();
    md.insert("execution_role".into(), json!("task"));
    md.insert("mode".into(), json!("run"));
    md.insert("host".into(), json!(l.host));
    md.insert(
        "cgroup".into(),
        json!({"id": l.cgroup_id, "path": l.cgroup_path}),
    );
    md.insert(
        "kernel_counters".into(),
        kernel_counters(&l.kernel_counters),
    );
    let tracer = match l.tracer_usage {
        Ok(u) => json!({
            "cpu_user_seconds": u.cpu_user_seconds,
            "cpu_system_seconds": u.cpu_system_seconds,
            "max_rss_bytes": u.max_rss_bytes,
        }),
        Err(e) => json!({"error": e}),
    };
    md.insert("tracer".into(), tracer);
    Naming {
        task_id: format!("local:{}:{}:{}", l.host, l.boot_id, l.cgroup_id),
        task_name: l.name,
        backend: "local",
        node: l.host,
        command_pid: Some(l.command_pid),
        exit_code: Some(l.exit_code),
        partial: None,
        gaps: Vec::new(),
        metadata: md,
        bundle: super::BundleName {
            pod: String::new(),
            container: l.program,
            attempt: "0".into(),
        },
        owner: super::Owner::default(),
    }
}

fn pod_naming(p: PodTask, procs: &ProcessTree) -> Naming {
    let PodTask {
        meta,
        pod,
        exit_code,
        node,
        kernel_counters,
        gaps,
        ended_while_down,
    } = p;
    let pod = pod.as_ref();
    // OSMO's osmo_exec runs the user's command as a child: that child is
    // "the command" when there is one.
    let osmo_child = osmo_command_pid(procs);
    let mut md = Map::new();
    md.insert("execution_role".into(), json!(meta.role.as_str()));
    md.insert("mode".into(), json!("daemon"));
    md.insert("host".into(), json!(node));
    md.insert(
        "kernel_counters".into(),
        self::kernel_counters(&kernel_counters),
    );
    if osmo_child.is_some() {
        md.insert("command_parent".into(), json!("osmo_exec"));
    }
    if let Some(p) = pod {
        insert_pod_metadata(&mut md, p, &meta);
    }
    md.insert(
        "cgroup".into(),
        json!({"id": meta.cgroup_id, "path": meta.cgroup_path}),
    );
    md.insert("traced_because".into(), json!(meta.reason.to_string()));
    let source = match (exit_code, pod) {
        (Some(_), _) => ExitCodeSource::ContainerStatus,
        (None, Some(_)) => ExitCodeSource::KernelNoStatus,
        (None, None) => ExitCodeSource::KernelPodGone,
    };
    md.insert("exit_code_source".into(), json!(source.as_str()));
    let pod_name = pod.map(|p| p.name.clone()).unwrap_or_default();
    let task_name = match pod.and_then(|p| p.labels.get("osmo.task_name")) {
        Some(t) if meta.role == Role::User => t.clone(),
        Some(t) => format!("{t}/{}", meta.container),
        None => format!("{pod_name}/{}", meta.container),
    };
    Naming {
        task_id: meta.task_id(),
        task_name,
        backend: if pod.is_some_and(is_osmo) {
            "osmo"
        } else {
            "k8s"
        },
        node,
        command_pid: osmo_child.or_else(|| entrypoint_pid(procs)),
        exit_code,
        partial: PartialReason::of_pod_task(ended_while_down, &gaps, &meta),
        gaps,
        metadata: md,
        bundle: super::BundleName {
            pod: if pod_name.is_empty() {
                "pod".into()
            } else {
                pod_name
            },
            container: meta.container.clone(),
            // A retry is a new pod with the same name: the UID keeps its
            // bundle apart.
            attempt: format!(
                "{}-{}",
                meta.restart_count,
                meta.pod_uid.chars().take(8).collect::<String>()
            ),
        },
        owner: super::Owner {
            namespace: pod.map(|p| p.namespace.clone()),
            workflow_id: pod.and_then(|p| p.labels.get("osmo.workflow_id").cloned()),
        },
    }
}

fn insert_pod_metadata(md: &mut Map<String, Value>, p: &PodInfo, meta: &TaskMeta) {
    let c = p.container(&meta.container);
    md.insert(
        "pod".into(),
        json!({"name": p.name, "namespace": p.namespace, "uid": p.uid, "node": p.node}),
    );
    md.insert(
        "container".into(),
        json!({
            "name": meta.container,
            "id": meta.container_id,
            "restart_count": meta.restart_count,
            "image": c.map(|c| c.image.clone()),
            "image_resolved": c.and_then(|c| c.status_image.clone()),
            "image_digest": c.and_then(|c| c.image_id.clone()),
        }),
    );
    let osmo_labels: BTreeMap<&String, &String> = p
        .labels
        .iter()
        .filter(|(k, _)| k.starts_with("osmo."))
        .collect();
    if !osmo_labels.is_empty() {
        md.insert("osmo".into(), json!(osmo_labels));
    }
}

/// Sets `capture.partial` and its reason, and the gaps.
fn mark_partial(md: &mut Map<String, Value>, why: Option<PartialReason>, gaps: &[pb::Gap]) {
    let Some(Value::Object(cap)) = md.get_mut("capture") else {
        return;
    };
    cap.insert("partial".into(), json!(why.is_some()));
    cap.insert(
        "partial_reason".into(),
        json!(why.map(PartialReason::as_str)),
    );
    if why.is_some() && !gaps.is_empty() {
        let secs = |ns: u64| ns as f64 / 1e9;
        let gaps: Vec<Value> = gaps
            .iter()
            .map(|g| json!({"from": secs(g.from_ns), "to": secs(g.to_ns), "why": g.why}))
            .collect();
        cap.insert("gaps".into(), Value::Array(gaps));
    }
}

/// The kernel's counters that are not zero, by name.
fn kernel_counters(stats: &KernelStats) -> Value {
    json!(
        stats
            .named()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect::<BTreeMap<_, _>>()
    )
}

/// roar's job uids are 8 hex characters; ours derive from the task's
/// identity so a record emitted twice has the same uid.
fn job_uid(task_id: &str, node: &str, start_ns: u64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(task_id.as_bytes());
    h.update(b"\0");
    h.update(node.as_bytes());
    h.update(&start_ns.to_le_bytes());
    h.finalize().to_hex()[..8].to_string()
}

/// The container's entrypoint: its first process that exec'd (the
/// runtime's own processes come first and never exec in the container).
fn entrypoint_pid(procs: &ProcessTree) -> Option<u32> {
    procs
        .iter()
        .filter(|p| !p.argv.is_empty() || p.exe.is_some())
        .min_by_key(|p| (p.start_ns, p.tgid))
        .map(|p| p.tgid)
}

/// For an OSMO user container, the user's command is the child of
/// osmo_exec (which stays PID 1): its process is "the command".
fn osmo_command_pid(procs: &ProcessTree) -> Option<u32> {
    let base = |b: &[u8]| b.rsplit(|c| *c == b'/').next().map(<[u8]>::to_vec);
    let is_exec = |p: &Process| {
        p.argv.first().and_then(|a| base(a)).as_deref() == Some(b"osmo_exec".as_slice())
            || p.exe.as_ref().and_then(|e| base(&e.bytes)).as_deref()
                == Some(b"osmo_exec".as_slice())
    };
    let exec = procs.iter().find(|p| is_exec(p))?;
    procs
        .iter()
        .filter(|p| p.ppid == Some(exec.tgid) && p.tgid != exec.tgid)
        .min_by_key(|p| (p.start_ns, p.tgid))
        .map(|p| p.tgid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(argv: &[&str]) -> crate::events::Exec {
        crate::events::Exec {
            ppid: 0,
            exe: crate::events::FilePath {
                bytes: argv[0].as_bytes().to_vec(),
                inexact: 0,
            },
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            argv_truncated: false,
            argv_unreadable: false,
            argv_total_len: 0,
            mnt_ns: 1,
            uid: 0,
            own_cgroup: 0,
            unknown: 0,
        }
    }

    /// The shape of an OSMO user container: runc init (no exec), then
    /// osmo_exec as the entrypoint, the user command as its child.
    #[test]
    fn the_command_is_osmo_execs_child() {
        let mut p = ProcessTree::new(100);
        p.fork(5, 10, false, 1);
        p.fork(10, 11, false, 2);
        p.exec(
            11,
            &exec(&["/osmo/bin/osmo_exec", "/bin/sh", "-c", "x > y"]),
            3,
        );
        p.fork(11, 12, false, 4);
        p.exec(12, &exec(&["/bin/sh", "-c", "x > y"]), 5);
        p.fork(12, 13, false, 6);
        p.exec(13, &exec(&["x"]), 7);
        assert_eq!(entrypoint_pid(&p), Some(11));
        assert_eq!(osmo_command_pid(&p), Some(12));
        let mut plain = ProcessTree::new(100);
        plain.fork(5, 10, false, 1);
        plain.exec(10, &exec(&["/bin/sh", "-c", "x"]), 2);
        assert_eq!(entrypoint_pid(&plain), Some(10));
        assert_eq!(osmo_command_pid(&plain), None);
    }

    #[test]
    fn kernel_counters_name_kernel_read_failures() {
        let mut counters = vec![0; roar_node_common::loss::STATS_LEN as usize];
        counters[roar_node_common::loss::KERNEL_READ_FAILED as usize] = 2;
        let v = kernel_counters(&KernelStats { counters });
        assert_eq!(v, json!({"lost_kernel_read_failed": 2}));
    }

    #[test]
    fn job_uids_are_stable_and_short() {
        let a = job_uid("t", "n", 1);
        assert_eq!(a.len(), 8);
        assert_eq!(a, job_uid("t", "n", 1));
        assert_ne!(a, job_uid("t", "n", 2));
    }
}
