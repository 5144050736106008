//! Who a traced container run is: [`TaskMeta`], its [`Role`] in the pod
//! and the [`TraceReason`] the policy gave, and their one conversion each
//! way to the spool's `TaskOpened`.

use std::{fmt, str::FromStr};

use crate::proto as pb;

/// What a traced container is to its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An OSMO pod's user container: runs the task's command under
    /// `osmo_exec`.
    User,
    /// An OSMO pod's `osmo-ctrl` sidecar: downloads inputs, uploads outputs.
    OsmoCtrl,
    /// Another regular container of an OSMO pod (one a pod template
    /// added): not the user's command.
    Sidecar,
    /// A regular container of a pod that is not OSMO's.
    Task,
    /// An init container of a pod that is not OSMO's.
    Init,
}

impl Role {
    pub(crate) const ALL: [Role; 5] = [
        Role::User,
        Role::OsmoCtrl,
        Role::Sidecar,
        Role::Task,
        Role::Init,
    ];

    /// The name in records, logs and the spool.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::OsmoCtrl => "osmo-ctrl",
            Role::Sidecar => "sidecar",
            Role::Task => "task",
            Role::Init => "init",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownName {
    what: &'static str,
    value: String,
}

impl FromStr for Role {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "role",
                value: s.into(),
            })
    }
}

/// Why the policy traces a pod (for the log and the record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceReason {
    /// `roar-node/trace: "true"`.
    Annotation,
    /// Every pod of this namespace.
    Namespace(String),
    /// A configured label selector, as written.
    Selector(String),
    /// The `osmo` preset: every OSMO task pod.
    OsmoPreset,
}

impl fmt::Display for TraceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceReason::Annotation => write!(f, "annotation {}=true", super::policy::ANNOTATION),
            TraceReason::Namespace(ns) => write!(f, "namespace {ns}"),
            TraceReason::Selector(s) => write!(f, "selector {s}"),
            TraceReason::OsmoPreset => f.write_str("preset osmo"),
        }
    }
}

impl FromStr for TraceReason {
    type Err = UnknownName;

    /// The inverse of `Display` (what the spool stores).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == TraceReason::Annotation.to_string() {
            return Ok(TraceReason::Annotation);
        }
        if s == TraceReason::OsmoPreset.to_string() {
            return Ok(TraceReason::OsmoPreset);
        }
        if let Some(ns) = s.strip_prefix("namespace ") {
            return Ok(TraceReason::Namespace(ns.into()));
        }
        if let Some(sel) = s.strip_prefix("selector ") {
            return Ok(TraceReason::Selector(sel.into()));
        }
        Err(UnknownName {
            what: "trace reason",
            value: s.into(),
        })
    }
}

/// Who a traced container cgroup is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaskMeta {
    pub(crate) cgroup_id: u64,
    pub(crate) cgroup_path: String,
    pub(crate) pod_uid: String,
    pub(crate) container: String,
    pub(crate) container_id: String,
    pub(crate) restart_count: i32,
    /// The Indexed Job completion index (0 when the pod has none).
    pub(crate) completion_index: u32,
    pub(crate) role: Role,
    /// Why the pod is traced (policy).
    pub(crate) reason: TraceReason,
    /// The container was already running when roar-node started tracing
    /// it: processes and files before that are missing.
    pub(crate) started_before_agent: bool,
}

impl TaskMeta {
    /// The task's key in the spool and in logs: roar's k8s task id
    /// (`pod_uid:container:completion_index:restart_attempt`).
    pub(crate) fn task_id(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.pod_uid, self.container, self.completion_index, self.restart_count
        )
    }
}

/// The spool's entry for a task being traced. `traced_since_ns` and `gaps`
/// are the spool's own facts: the caller sets them.
impl From<&TaskMeta> for pb::TaskOpened {
    fn from(m: &TaskMeta) -> Self {
        pb::TaskOpened {
            task_id: m.task_id(),
            cgroup_id: m.cgroup_id,
            cgroup_path: m.cgroup_path.clone(),
            pod_uid: m.pod_uid.clone(),
            container: m.container.clone(),
            container_id: m.container_id.clone(),
            restart_count: m.restart_count,
            completion_index: m.completion_index,
            role: m.role.as_str().into(),
            reason: m.reason.to_string(),
            started_before_agent: m.started_before_agent,
            traced_since_ns: 0,
            gaps: Vec::new(),
        }
    }
}

impl TryFrom<&pb::TaskOpened> for TaskMeta {
    type Error = UnknownName;

    fn try_from(t: &pb::TaskOpened) -> Result<Self, Self::Error> {
        Ok(TaskMeta {
            cgroup_id: t.cgroup_id,
            cgroup_path: t.cgroup_path.clone(),
            pod_uid: t.pod_uid.clone(),
            container: t.container.clone(),
            container_id: t.container_id.clone(),
            restart_count: t.restart_count,
            completion_index: t.completion_index,
            role: t.role.parse()?,
            reason: t.reason.parse()?,
            started_before_agent: t.started_before_agent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_reasons_round_trip_through_their_names() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("osmo_ctrl".parse::<Role>().is_err());
        for r in [
            TraceReason::Annotation,
            TraceReason::Namespace("ml".into()),
            TraceReason::Selector("a=b,!c".into()),
            TraceReason::OsmoPreset,
        ] {
            assert_eq!(r.to_string().parse::<TraceReason>(), Ok(r));
        }
        assert!("because".parse::<TraceReason>().is_err());
    }

    #[test]
    fn task_meta_round_trips_through_the_spool() {
        let m = TaskMeta {
            cgroup_id: 7,
            cgroup_path: "/kubepods/pod1/abc".into(),
            pod_uid: "u-1".into(),
            container: "train".into(),
            container_id: "abc".into(),
            restart_count: 2,
            completion_index: 5,
            role: Role::User,
            reason: TraceReason::Selector("team=ml".into()),
            started_before_agent: true,
        };
        let opened = pb::TaskOpened::from(&m);
        assert_eq!(opened.task_id, "u-1:train:5:2");
        assert_eq!(TaskMeta::try_from(&opened), Ok(m));
        let bad = pb::TaskOpened {
            role: "captain".into(),
            ..opened
        };
        assert!(TaskMeta::try_from(&bad).is_err());
    }
}
