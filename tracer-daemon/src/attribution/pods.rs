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

/// Which list of the pod spec a container comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    Init,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub kind: ContainerKind,
    /// The image the spec asks for.
    pub image: String,
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

/// One container list of a pod: its kind, (name, image) from the spec,
/// and the matching statuses.
type SpecList<'a> = (
    ContainerKind,
    Vec<(String, String)>,
    Option<&'a Vec<ContainerStatus>>,
);

impl PodInfo {
    /// The part of `pod` attribution needs; `None` without a UID.
    pub(crate) fn from_pod(pod: &Pod) -> Option<Self> {
        let md = &pod.metadata;
        let uid = md.uid.clone()?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut containers = Vec::new();
        let lists: [SpecList<'_>; 3] = [
            (
                ContainerKind::Init,
                spec.and_then(|s| s.init_containers.as_ref())
                    .map(|v| {
                        v.iter()
                            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default(),
                status.and_then(|s| s.init_container_statuses.as_ref()),
            ),
            (
                ContainerKind::Regular,
                spec.map(|s| {
                    s.containers
                        .iter()
                        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default(),
                status.and_then(|s| s.container_statuses.as_ref()),
            ),
            (
                ContainerKind::Ephemeral,
                spec.and_then(|s| s.ephemeral_containers.as_ref())
                    .map(|v| {
                        v.iter()
                            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default(),
                status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
            ),
        ];
        for (kind, specs, statuses) in lists {
            for (name, image) in specs {
                let st = statuses.and_then(|v| v.iter().find(|s| s.name == name));
                containers.push(ContainerInfo {
                    kind,
                    image,
                    status_image: st.map(|s| s.image.clone()).filter(|s| !s.is_empty()),
                    image_id: st.map(|s| s.image_id.clone()).filter(|s| !s.is_empty()),
                    runs: st.map(runs).unwrap_or_default(),
                    name,
                });
            }
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
        })
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

    /// A pod as the local cluster's API server (Kubernetes v1.20.2)
    /// returned it, trimmed of fields attribution does not read.
    pub(crate) const OSMO_POD: &str = include_str!("testdata/osmo-pod.json");

    fn pod(json: &str) -> Pod {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn real_pod_to_info() {
        let info = PodInfo::from_pod(&pod(OSMO_POD)).unwrap();
        assert_eq!(info.namespace, "roar-e2e");
        assert_eq!(info.node, "localhost");
        assert!(info.labels.contains_key("osmo.task_uuid"));
        let names: Vec<_> = info.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["osmo-init", "osmo-ctrl", "train"]);
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
