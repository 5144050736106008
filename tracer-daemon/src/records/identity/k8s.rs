//! roar's k8s contract, as roar-cli 0.4.7 reads it (`roar/backends/k8s/`):
//! the flat `k8s_*` keys its own pod entrypoint writes into
//! `backend_metadata` (`pod_entry.py`), and the `task_identity` roar
//! derives for a fragment that has none (`execution/fragments/models.py`),
//! which it de-duplicates and merges on.

use blake2::{
    Blake2bVar,
    digest::{Update, VariableOutput},
};
use serde_json::{Map, Value, json};

use crate::attribution::{TaskMeta, pod_spec::MountMapEntry, pods::PodInfo};

/// The backend roar files these records under: `roar k8s ingest-bundles`
/// merges them as k8s tasks whatever the field says, and derives their
/// identity from it, so OSMO tasks are `k8s` too (their OSMO facts are in
/// `backend_metadata.osmo`).
pub(super) const BACKEND: &str = "k8s";

/// roar's `derive_fragment_identity`: BLAKE2b with a 16-byte digest of
/// `<backend>:<parent>:<task_id>` when the fragment has a parent job, else
/// of `<backend>-task:<task_id>:job:<job_uid>`.
pub(super) fn task_identity(backend: &str, parent: &str, task_id: &str, job_uid: &str) -> String {
    let raw = if parent.is_empty() {
        format!("{backend}-task:{task_id}:job:{job_uid}")
    } else {
        format!("{backend}:{parent}:{task_id}")
    };
    let mut h = Blake2bVar::new(16).expect("16 is a valid BLAKE2b output size");
    h.update(raw.as_bytes());
    let mut out = [0u8; 16];
    h.finalize_variable(&mut out)
        .expect("the buffer has the output size");
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `k8s_*` keys, as roar's pod entrypoint writes them (index and
/// attempt as strings; a key roar's entrypoint would leave null is null
/// here too). Without the pod (deleted before the record was named) what
/// the task itself knows is still written.
pub(super) fn insert_contract_keys(
    md: &mut Map<String, Value>,
    meta: &TaskMeta,
    pod: Option<&PodInfo>,
    node: &str,
) {
    let node = pod
        .map(|p| p.node.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(node);
    let keys = [
        ("k8s_namespace", json!(pod.map(|p| &p.namespace))),
        ("k8s_pod_name", json!(pod.map(|p| &p.name))),
        ("k8s_pod_uid", json!(meta.pod_uid)),
        ("k8s_node_name", json!(node)),
        ("k8s_container", json!(meta.container)),
        ("k8s_job_name", json!(pod.and_then(|p| p.job_name.as_ref()))),
        (
            "k8s_completion_index",
            json!(meta.completion_index.to_string()),
        ),
        ("k8s_restart_attempt", json!(meta.restart_count.to_string())),
    ];
    for (k, v) in keys {
        md.insert(k.into(), v);
    }
    let mount_map = pod
        .and_then(|p| p.container(&meta.container))
        .map(|c| c.mount_map.as_slice())
        .unwrap_or_default();
    if !mount_map.is_empty() {
        md.insert("k8s_mount_map".into(), mount_map_json(mount_map));
    }
}

/// roar's mount-map entries: `mount_path` and `uri` or `volume`.
fn mount_map_json(entries: &[MountMapEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("mount_path".into(), json!(e.mount_path));
                if let Some(u) = &e.uri {
                    m.insert("uri".into(), json!(u));
                }
                if let Some(v) = &e.volume {
                    m.insert("volume".into(), json!(v));
                }
                Value::Object(m)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from roar-cli 0.4.7's own function (Python's
    /// `hashlib.blake2b(raw, digest_size=16)`).
    #[test]
    fn task_identity_is_roars_derivation() {
        assert_eq!(
            task_identity("k8s", "", "uid-1:train:2:0", "0a1b2c3d"),
            "af40d10e0fc1bc3427a8acbaa93b5288"
        );
        assert_eq!(
            task_identity("k8s", "parent9", "uid-1:train:2:0", "0a1b2c3d"),
            "e493128db47b7aabb062838b21256cdd"
        );
        assert_eq!(
            task_identity("local", "", "local:vm:0275c14a:481", "2d209a08"),
            "f9950dd623ba79e09450706811725985"
        );
    }

    #[test]
    fn mount_map_entries_carry_uri_or_volume() {
        let v = mount_map_json(&[
            MountMapEntry {
                mount_path: "/data".into(),
                uri: Some("gs://b".into()),
                volume: None,
            },
            MountMapEntry {
                mount_path: "/ckpt".into(),
                uri: None,
                volume: Some("pvc://c".into()),
            },
        ]);
        assert_eq!(
            v,
            json!([
                {"mount_path": "/data", "uri": "gs://b"},
                {"mount_path": "/ckpt", "volume": "pvc://c"},
            ])
        );
    }
}
