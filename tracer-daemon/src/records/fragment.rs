//! roar's record format: the ExecutionFragment bundle that
//! `roar k8s ingest-bundles` reads (roar-cli 0.4.7,
//! `roar/execution/fragments/models.py`). roar builds the fragment with
//! `ExecutionFragment(**payload)`, so the field set must match exactly: an
//! unknown or missing field makes roar skip the whole fragment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) const HASH_ALGORITHM: &str = "blake3";
pub(crate) const CAPTURE_METHOD: &str = "ebpf";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArtifactRef {
    pub(crate) path: String,
    pub(crate) hash: Option<String>,
    pub(crate) hash_algorithm: String,
    pub(crate) size: u64,
    pub(crate) capture_method: String,
    pub(crate) byte_ranges: Option<Vec<[u64; 2]>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fragment {
    pub(crate) job_uid: String,
    pub(crate) parent_job_uid: String,
    pub(crate) task_id: String,
    pub(crate) worker_id: String,
    pub(crate) node_id: String,
    pub(crate) actor_id: Option<String>,
    pub(crate) task_name: String,
    pub(crate) started_at: f64,
    pub(crate) ended_at: f64,
    pub(crate) exit_code: i32,
    pub(crate) backend: String,
    pub(crate) recorded_at: Option<f64>,
    pub(crate) reads: Vec<ArtifactRef>,
    pub(crate) writes: Vec<ArtifactRef>,
    pub(crate) worker_packages: Option<BTreeMap<String, String>>,
    pub(crate) task_identity: String,
    pub(crate) backend_metadata: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
impl Fragment {
    /// A fragment with every field set, nothing read or written.
    pub(crate) fn example() -> Self {
        Fragment {
            job_uid: "0a1b2c3d".into(),
            parent_job_uid: String::new(),
            task_id: "t".into(),
            worker_id: String::new(),
            node_id: "n".into(),
            actor_id: None,
            task_name: "x".into(),
            started_at: 1.0,
            ended_at: 2.0,
            exit_code: 0,
            backend: "local".into(),
            recorded_at: Some(3.0),
            reads: vec![],
            writes: vec![],
            worker_packages: None,
            task_identity: String::new(),
            backend_metadata: Default::default(),
        }
    }
}

/// roar's bundle file name: `roar-fragments-<pod>-<container>-<attempt>.json`
/// with every character outside `[A-Za-z0-9_.-]` replaced by `-`.
pub(crate) fn bundle_file_name(pod: &str, container: &str, attempt: &str) -> String {
    let or = |s: &str, d: &'static str| {
        if s.trim().is_empty() {
            d.to_string()
        } else {
            s.trim().to_string()
        }
    };
    let joined = format!(
        "{}-{}-{}",
        or(pod, "pod"),
        or(container, "main"),
        or(attempt, "0")
    );
    let safe: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("roar-fragments-{safe}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_names_follow_roar() {
        assert_eq!(
            bundle_file_name("wf-1/t", "train", "0"),
            "roar-fragments-wf-1-t-train-0.json"
        );
        assert_eq!(
            bundle_file_name("", "", ""),
            "roar-fragments-pod-main-0.json"
        );
    }

    #[test]
    fn field_set_is_roars() {
        let f = Fragment::example();
        let v = serde_json::to_value(&f).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "actor_id",
                "backend",
                "backend_metadata",
                "ended_at",
                "exit_code",
                "job_uid",
                "node_id",
                "parent_job_uid",
                "reads",
                "recorded_at",
                "started_at",
                "task_id",
                "task_identity",
                "task_name",
                "worker_id",
                "worker_packages",
                "writes"
            ]
        );
    }
}
