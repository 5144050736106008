//! The pods on this node, as the API server last described them, indexed
//! by pod UID and by container id.
//!
//! A `PodInfo` is the small part of a `core/v1` Pod attribution needs; it
//! is built from the kube-rs object and knows nothing of the kernel. The
//! index keeps deleted pods as tombstones for a grace period so that late
//! events (and tasks still being finished) can still find them.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod};

use super::pod_spec::{
    self, COMPLETION_INDEX_ANNOTATION, COMPLETION_INDEX_ENV, MountMapEntry, PARENT_JOB_UID_ENV,
    SpecContainer,
};

/// Which list of the pod spec a container comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContainerKind {
    Init,
    #[default]
    Regular,
    Ephemeral,
}

/// What `status.*ContainerStatuses[].state` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    Waiting,
    Running,
    Terminated { exit_code: i32 },
    Unknown,
}

/// One run of a container that has (or had) a container id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRun {
    /// Bare 64-hex id (the `<runtime>://` prefix stripped).
    pub container_id: String,
    pub restart_count: i32,
    pub state: RunState,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub kind: ContainerKind,
    /// The image the spec asks for.
    pub image: String,
    /// The spec's `command` (the entrypoint; empty: the image's).
    pub command: Vec<String>,
    /// The spec's `args`.
    pub args: Vec<String>,
    /// Plain values of the env names roar's k8s contract reads
    /// (`ROAR_K8S_PARENT_JOB_UID`, `JOB_COMPLETION_INDEX`); no other.
    pub contract_env: BTreeMap<String, String>,
    /// roar's `k8s_mount_map` for this container.
    pub mount_map: Vec<MountMapEntry>,
    /// The image the runtime resolved (status.image), if known.
    pub status_image: Option<String>,
    /// status.imageID: the digest the container runs.
    pub image_id: Option<String>,
    /// The current run (status.containerID and state) and, for a
    /// restarted container, the previous one (lastState.terminated).
    pub runs: Vec<ContainerRun>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub containers: Vec<ContainerInfo>,
    /// Pod phase (Pending, Running, Succeeded, Failed, Unknown).
    pub phase: String,
    /// The Job that owns the pod, if any.
    pub job_name: Option<String>,
}

/// A container run's Indexed Job completion index, as roar's k8s contract
/// takes it (roar-cli 0.4.7 `pod_entry.py`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompletionIndex {
    pub(crate) value: u32,
    /// Where it came from: `annotation`, `env` or `none` (0).
    pub(crate) source: &'static str,
    /// A value that was there but is not a number (0 is used instead).
    pub(crate) rejected: Option<String>,
}

/// `containerd://<id>` -> `<id>`; any runtime prefix.
pub(crate) fn strip_runtime_prefix(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

fn run_state(s: Option<&ContainerState>) -> RunState {
    match s {
        Some(s) if s.terminated.is_some() => RunState::Terminated {
            exit_code: s.terminated.as_ref().map_or(0, |t| t.exit_code),
        },
        Some(s) if s.running.is_some() => RunState::Running,
        Some(s) if s.waiting.is_some() => RunState::Waiting,
        _ => RunState::Unknown,
    }
}

fn runs(st: &ContainerStatus) -> Vec<ContainerRun> {
    let mut out = Vec::new();
    if let Some(id) = st.container_id.as_deref().filter(|s| !s.is_empty()) {
        out.push(ContainerRun {
            container_id: strip_runtime_prefix(id).to_string(),
            restart_count: st.restart_count,
            state: run_state(st.state.as_ref()),
        });
    }
    // The previous run of a restarted container.
    if let Some(t) = st.last_state.as_ref().and_then(|s| s.terminated.as_ref())
        && let Some(id) = t.container_id.as_deref().filter(|s| !s.is_empty())
    {
        let id = strip_runtime_prefix(id).to_string();
        if !out.iter().any(|r| r.container_id == id) {
            out.push(ContainerRun {
                container_id: id,
                restart_count: (st.restart_count - 1).max(0),
                state: RunState::Terminated {
                    exit_code: t.exit_code,
                },
            });
        }
    }
    out
}

impl PodInfo {
    /// The part of `pod` attribution and records need; `None` without a
    /// UID.
    pub(crate) fn from_pod(pod: &Pod) -> Option<Self> {
        let md = &pod.metadata;
        let uid = md.uid.clone()?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let volumes = spec.and_then(|s| s.volumes.as_deref()).unwrap_or_default();
        let mut containers = Vec::new();
        let mut add = |kind, c: SpecContainer, statuses: Option<&Vec<ContainerStatus>>| {
            let st = statuses.and_then(|v| v.iter().find(|s| s.name == c.name));
            containers.push(ContainerInfo {
                kind,
                image: c.image,
                command: c.command,
                args: c.args,
                contract_env: c.contract_env,
                mount_map: c.mount_map,
                status_image: st.map(|s| s.image.clone()).filter(|s| !s.is_empty()),
                image_id: st.map(|s| s.image_id.clone()).filter(|s| !s.is_empty()),
                runs: st.map(runs).unwrap_or_default(),
                name: c.name,
            });
        };
        // The three lists have different types with the same fields.
        macro_rules! spec_of {
            ($c:expr) => {
                SpecContainer::new(
                    &$c.name,
                    $c.image.as_ref(),
                    $c.command.as_ref(),
                    $c.args.as_ref(),
                    $c.env.as_ref(),
                    $c.volume_mounts.as_ref(),
                    volumes,
                )
            };
        }
        for c in spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
        {
            let st = status.and_then(|s| s.init_container_statuses.as_ref());
            add(ContainerKind::Init, spec_of!(c), st);
        }
        for c in spec.map(|s| &s.containers).into_iter().flatten() {
            let st = status.and_then(|s| s.container_statuses.as_ref());
            add(ContainerKind::Regular, spec_of!(c), st);
        }
        for c in spec
            .and_then(|s| s.ephemeral_containers.as_ref())
            .into_iter()
            .flatten()
        {
            let st = status.and_then(|s| s.ephemeral_container_statuses.as_ref());
            add(ContainerKind::Ephemeral, spec_of!(c), st);
        }
        Some(Self {
            uid,
            name: md.name.clone().unwrap_or_default(),
            namespace: md.namespace.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels: md.labels.clone().unwrap_or_default(),
            annotations: md.annotations.clone().unwrap_or_default(),
            containers,
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
            job_name: pod_spec::job_name(pod),
        })
    }

    /// roar's completion index for `container`: the job controller's
    /// annotation, else a plain `JOB_COMPLETION_INDEX` in the container's
    /// spec, else 0. (roar's launcher would fall back to `PET_NODE_RANK`
    /// and `RANK` from the process environment; roar-node reads no
    /// other env value.)
    pub(crate) fn completion_index(&self, container: &str) -> CompletionIndex {
        let found = self
            .annotations
            .get(COMPLETION_INDEX_ANNOTATION)
            .map(|v| ("annotation", v))
            .or_else(|| {
                self.container(container)?
                    .contract_env
                    .get(COMPLETION_INDEX_ENV)
                    .map(|v| ("env", v))
            });
        match found {
            None => CompletionIndex {
                value: 0,
                source: "none",
                rejected: None,
            },
            Some((source, v)) => match pod_spec::parse_index(v) {
                Some(value) => CompletionIndex {
                    value,
                    source,
                    rejected: None,
                },
                None => CompletionIndex {
                    value: 0,
                    source,
                    rejected: Some(v.clone()),
                },
            },
        }
    }

    /// roar's parent job uid for `container` (`ROAR_K8S_PARENT_JOB_UID`,
    /// a plain value in its spec), or "".
    pub(crate) fn parent_job_uid(&self, container: &str) -> String {
        self.container(container)
            .and_then(|c| c.contract_env.get(PARENT_JOB_UID_ENV))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }

    pub(crate) fn container(&self, name: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The container and run a container id belongs to.
    pub(crate) fn find_run(&self, container_id: &str) -> Option<(&ContainerInfo, &ContainerRun)> {
        self.containers.iter().find_map(|c| {
            c.runs
                .iter()
                .find(|r| r.container_id == container_id)
                .map(|r| (c, r))
        })
    }

    #[cfg(test)]
    /// Every container has started at least once (has an id) or is
    /// finished: a cgroup of this pod that matches none of them is the
    /// sandbox's. Init containers that have not run yet keep this false.
    pub(crate) fn all_containers_have_ids(&self) -> bool {
        self.containers
            .iter()
            .filter(|c| c.kind != ContainerKind::Ephemeral)
            .all(|c| !c.runs.is_empty())
    }

    /// The pod has finished for good (restartPolicy Never/OnFailure done).
    pub(crate) fn is_finished(&self) -> bool {
        self.phase == "Succeeded" || self.phase == "Failed"
    }
}

#[derive(Debug)]
struct Entry {
    pod: PodInfo,
    deleted_at: Option<Instant>,
}

/// Pods by UID, plus container id -> pod UID.
#[derive(Debug, Default)]
pub(crate) struct PodIndex {
    pods: HashMap<String, Entry>,
}

impl PodIndex {
    /// Adds or replaces a pod. Returns the previous version.
    pub(crate) fn upsert(&mut self, pod: PodInfo) -> Option<PodInfo> {
        let uid = pod.uid.clone();
        self.pods
            .insert(
                uid,
                Entry {
                    pod,
                    deleted_at: None,
                },
            )
            .map(|e| e.pod)
    }

    /// Marks a pod deleted; it stays findable until `expire`.
    pub(crate) fn delete(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.pods.get_mut(uid) {
            e.deleted_at.get_or_insert(now);
        }
    }

    pub(crate) fn is_deleted(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|e| e.deleted_at.is_some())
    }

    /// Forgets pods deleted more than `grace` ago (except `keep`).
    pub(crate) fn expire(&mut self, now: Instant, grace: Duration, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, e)| {
                e.deleted_at
                    .is_some_and(|t| now.duration_since(t) > grace && !keep(uid))
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.pods.remove(&uid);
        }
    }

    pub(crate) fn get(&self, uid: &str) -> Option<&PodInfo> {
        self.pods.get(uid).map(|e| &e.pod)
    }

    /// UIDs of every pod not in `keep` (for a re-list: pods that vanished
    /// while the watch was down).
    pub(crate) fn uids_not_in(&self, keep: &std::collections::HashSet<String>) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(uid, e)| e.deleted_at.is_none() && !keep.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.pods.len()
    }

    /// Pods not deleted.
    pub(crate) fn live(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods
            .values()
            .filter(|e| e.deleted_at.is_none())
            .map(|e| &e.pod)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An OSMO task pod: metadata and spec in the shapes OSMO 6.4's source
    /// writes them (`task.py` `to_pod_container` and the pod it builds,
    /// `kb_objects.py` osmo-ctrl, osmo-init and KAI's labels, annotation and
    /// schedulerName; the finalizer; lowercase `osmo.priority`; a template's
    /// `roar-node/trace`), status as the local cluster's API server
    /// (Kubernetes v1.20.2) returned it.
    pub(crate) const OSMO_POD: &str = include_str!("testdata/osmo-pod.json");
    /// A pod of an Indexed Job (Kubernetes 1.21+ shapes: the completion
    /// index annotation, `JOB_COMPLETION_INDEX` from it, the owner Job) that
    /// roar's k8s launcher rewrote (`ROAR_K8S_PARENT_JOB_UID`), with a
    /// GCS FUSE and a claim volume and secrets in its env.
    pub(crate) const INDEXED_JOB_POD: &str = include_str!("testdata/indexed-job-pod.json");

    fn pod(json: &str) -> Pod {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn real_pod_to_info() {
        let info = PodInfo::from_pod(&pod(OSMO_POD)).unwrap();
        assert_eq!(info.namespace, "osmo-workflows");
        assert_eq!(info.node, "localhost");
        assert!(info.labels.contains_key("osmo.task_uuid"));
        let names: Vec<_> = info.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["osmo-init", "train", "osmo-ctrl"]);
        assert_eq!(
            info.container("train").unwrap().command,
            ["/osmo/bin/osmo_exec"]
        );
        // Secrets in the env are never read.
        assert!(info.containers.iter().all(|c| c.contract_env.is_empty()));
        assert_eq!(info.job_name, None);
        assert_eq!(info.completion_index("train").value, 0);
        assert_eq!(info.containers[0].kind, ContainerKind::Init);
        let user = info.container("train").unwrap();
        assert_eq!(user.runs.len(), 1);
        let id = &user.runs[0].container_id;
        assert_eq!(id.len(), 64, "full id, prefix stripped: {id}");
        assert!(user.image_id.as_deref().unwrap().contains("sha256:"));
        let (c, r) = info.find_run(id).unwrap();
        assert_eq!(c.name, "train");
        assert_eq!(r.restart_count, 0);
        assert!(matches!(r.state, RunState::Terminated { exit_code: 0 }));
        assert!(info.all_containers_have_ids());
    }

    /// roar's contract from the pod: index from the annotation, parent job
    /// uid from the plain env value, the Job, the mount map; the env's
    /// other values (a plain secret among them) are never read.
    #[test]
    fn indexed_job_pod_to_info() {
        let info = PodInfo::from_pod(&pod(INDEXED_JOB_POD)).unwrap();
        assert_eq!(info.job_name.as_deref(), Some("shard"));
        let index = info.completion_index("worker");
        assert_eq!((index.value, index.source), (2, "annotation"));
        assert_eq!(info.parent_job_uid("worker"), "a1b2c3d4");
        let c = info.container("worker").unwrap();
        assert_eq!(c.contract_env.len(), 1, "{:?}", c.contract_env);
        assert!(!format!("{info:?}").contains("hf_not_a_real_token"));
        assert_eq!(c.mount_map.len(), 2);
        assert_eq!(c.mount_map[0].uri.as_deref(), Some("gs://training-data"));
        // A plain env value when there is no annotation; junk is said.
        let mut p = pod(INDEXED_JOB_POD);
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(super::super::pod_spec::COMPLETION_INDEX_ANNOTATION);
        let env = p.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap();
        env[0].value_from = None;
        env[0].value = Some("7".into());
        let info = PodInfo::from_pod(&p).unwrap();
        assert_eq!(info.completion_index("worker").value, 7);
        assert_eq!(info.completion_index("worker").source, "env");
        env_index(&mut p, "seven");
        let index = PodInfo::from_pod(&p).unwrap().completion_index("worker");
        assert_eq!((index.value, index.rejected.as_deref()), (0, Some("seven")));
    }

    fn env_index(p: &mut Pod, v: &str) {
        p.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap()[0].value = Some(v.into());
    }

    #[test]
    fn index_and_tombstones() {
        let info = PodInfo::from_pod(&pod(OSMO_POD)).unwrap();
        let mut idx = PodIndex::default();
        idx.upsert(info.clone());
        assert_eq!(idx.get(&info.uid).unwrap().uid, info.uid);
        let t0 = Instant::now();
        idx.delete(&info.uid, t0);
        assert!(idx.is_deleted(&info.uid));
        idx.expire(t0 + Duration::from_secs(5), Duration::from_secs(30), |_| {
            false
        });
        assert!(idx.get(&info.uid).is_some(), "kept during the grace period");
        idx.expire(t0 + Duration::from_secs(31), Duration::from_secs(30), |u| {
            u == info.uid
        });
        assert!(idx.get(&info.uid).is_some(), "kept while asked to");
        idx.expire(
            t0 + Duration::from_secs(31),
            Duration::from_secs(30),
            |_| false,
        );
        assert!(idx.get(&info.uid).is_none());
    }

    #[test]
    fn restarted_container_keeps_previous_run() {
        let mut p = pod(OSMO_POD);
        let st = &mut p
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[1];
        let old = st.container_id.clone().unwrap();
        st.last_state = st.state.clone();
        st.container_id = Some(format!("containerd://{}", "ab".repeat(32)));
        st.restart_count = 1;
        st.state = Some(ContainerState {
            running: Some(Default::default()),
            ..Default::default()
        });
        let info = PodInfo::from_pod(&p).unwrap();
        let c = info.container("train").unwrap();
        assert_eq!(c.runs.len(), 2);
        assert_eq!(c.runs[0].restart_count, 1);
        assert_eq!(c.runs[0].state, RunState::Running);
        assert_eq!(c.runs[1].container_id, strip_runtime_prefix(&old));
        assert_eq!(c.runs[1].restart_count, 0);
    }

    #[test]
    fn pending_pod_without_ids() {
        let mut p = pod(OSMO_POD);
        p.status = None;
        let info = PodInfo::from_pod(&p).unwrap();
        assert!(!info.all_containers_have_ids());
        assert!(info.containers.iter().all(|c| c.runs.is_empty()));
    }
}
