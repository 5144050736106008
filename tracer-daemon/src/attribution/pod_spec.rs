//! What a pod's spec says that a record needs beyond who the pod is: each
//! container's command and args (OSMO's `osmo_exec` and `osmo-ctrl`
//! arguments name the user's command and the task's data), the two plain
//! env values roar's k8s contract reads from the spec, roar's mount map,
//! and the Job the pod belongs to.
//!
//! No other env value is ever read: a container's env holds secrets, and
//! a `valueFrom` (secret, config map, field) is never resolved.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Pod, Volume, VolumeMount};

/// roar's parent job uid, set by roar's own k8s launcher.
pub(crate) const PARENT_JOB_UID_ENV: &str = "ROAR_K8S_PARENT_JOB_UID";
/// An Indexed Job's completion index as a plain env value.
pub(crate) const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The only env names whose (plain) values are read.
const CONTRACT_ENV: [&str; 2] = [PARENT_JOB_UID_ENV, COMPLETION_INDEX_ENV];
/// The job controller's annotation on an Indexed Job's pods.
pub(crate) const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Labels the job controller puts on a Job's pods (the second on old
/// clusters only).
const JOB_NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];

/// Inline CSI drivers whose volume names an object-store bucket, and the
/// URI scheme roar rewrites their paths to (roar-cli 0.4.7 `mount_map.py`).
const CSI_URI_SCHEMES: [(&str, &str); 2] = [
    ("gcsfuse.csi.storage.gke.io", "gs"),
    ("s3.csi.aws.com", "s3"),
];

/// One entry of roar's `k8s_mount_map`: a mount path and the object-store
/// URI it stands for (roar rewrites paths under it when it merges), or a
/// claim that only tags it (`pvc://<claim>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountMapEntry {
    pub mount_path: String,
    pub uri: Option<String>,
    pub volume: Option<String>,
}

/// A container as its spec describes it.
pub(crate) struct SpecContainer {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) command: Vec<String>,
    pub(crate) args: Vec<String>,
    pub(crate) contract_env: BTreeMap<String, String>,
    pub(crate) mount_map: Vec<MountMapEntry>,
}

impl SpecContainer {
    /// The fields of one container of any of the three lists (their types
    /// differ, their fields do not).
    pub(crate) fn new(
        name: &str,
        image: Option<&String>,
        command: Option<&Vec<String>>,
        args: Option<&Vec<String>>,
        env: Option<&Vec<EnvVar>>,
        mounts: Option<&Vec<VolumeMount>>,
        volumes: &[Volume],
    ) -> Self {
        Self {
            name: name.to_string(),
            image: image.cloned().unwrap_or_default(),
            command: command.cloned().unwrap_or_default(),
            args: args.cloned().unwrap_or_default(),
            contract_env: contract_env(env),
            mount_map: mount_map(mounts.map(Vec::as_slice).unwrap_or_default(), volumes),
        }
    }
}

/// The plain values of the contract's env names; nothing else.
fn contract_env(env: Option<&Vec<EnvVar>>) -> BTreeMap<String, String> {
    env.into_iter()
        .flatten()
        .filter(|e| CONTRACT_ENV.contains(&e.name.as_str()) && e.value_from.is_none())
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

/// roar's mount map for a container, derived as roar derives it when it
/// launches a pod itself: an inline gcsfuse or mountpoint-s3 CSI volume
/// with a `bucketName` is that bucket (plus the mount's `subPath`), a
/// persistent volume claim is a `pvc://` tag.
fn mount_map(mounts: &[VolumeMount], volumes: &[Volume]) -> Vec<MountMapEntry> {
    let mut out = Vec::new();
    for m in mounts {
        let path = m.mount_path.trim_end_matches('/');
        let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        if let Some(uri) = csi_uri(v) {
            let uri = match m.sub_path.as_deref().map(|s| s.trim_matches('/')) {
                Some(sub) if !sub.is_empty() => format!("{uri}/{sub}"),
                _ => uri,
            };
            out.push(MountMapEntry {
                mount_path: path.into(),
                uri: Some(uri),
                volume: None,
            });
        } else if let Some(claim) = v
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str())
            .filter(|c| !c.is_empty())
        {
            out.push(MountMapEntry {
                mount_path: path.into(),
                uri: None,
                volume: Some(format!("pvc://{claim}")),
            });
        }
    }
    out
}

fn csi_uri(v: &Volume) -> Option<String> {
    let csi = v.csi.as_ref()?;
    let (_, scheme) = CSI_URI_SCHEMES.iter().find(|(d, _)| *d == csi.driver)?;
    let bucket = csi.volume_attributes.as_ref()?.get("bucketName")?.trim();
    (!bucket.is_empty()).then(|| format!("{scheme}://{bucket}"))
}

/// The Job that owns the pod: its controller owner reference, else the
/// job controller's label.
pub(crate) fn job_name(pod: &Pod) -> Option<String> {
    let md = &pod.metadata;
    let owner = md
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Job" && o.api_version.starts_with("batch/"))
        .map(|o| o.name.clone());
    owner.or_else(|| {
        let labels = md.labels.as_ref()?;
        JOB_NAME_LABELS.iter().find_map(|l| labels.get(*l).cloned())
    })
}

/// A completion index as Kubernetes writes it: a decimal number.
pub(crate) fn parse_index(value: &str) -> Option<u32> {
    let v = value.trim();
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_the_contract_env_values_are_read_never_value_from() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "env": [
                {"name": "ROAR_K8S_PARENT_JOB_UID", "value": "a1b2c3d4"},
                {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                {"name": "AWS_SECRET_ACCESS_KEY", "value": "s3cr3t"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ]}]},
        }));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = contract_env(c.env.as_ref());
        assert_eq!(
            env,
            BTreeMap::from([(PARENT_JOB_UID_ENV.to_string(), "a1b2c3d4".to_string())])
        );
    }

    #[test]
    fn mount_map_as_roar_derives_it() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "c", "volumeMounts": [
                    {"name": "gcs", "mountPath": "/data/", "subPath": "/train/"},
                    {"name": "s3", "mountPath": "/s3"},
                    {"name": "ckpt", "mountPath": "/ckpt"},
                    {"name": "tmp", "mountPath": "/scratch"},
                    {"name": "nobucket", "mountPath": "/nb"},
                ]}],
                "volumes": [
                    {"name": "gcs", "csi": {"driver": "gcsfuse.csi.storage.gke.io", "volumeAttributes": {"bucketName": "my-bucket"}}},
                    {"name": "s3", "csi": {"driver": "s3.csi.aws.com", "volumeAttributes": {"bucketName": "b2"}}},
                    {"name": "ckpt", "persistentVolumeClaim": {"claimName": "claim-1"}},
                    {"name": "tmp", "emptyDir": {}},
                    {"name": "nobucket", "csi": {"driver": "s3.csi.aws.com"}},
                ],
            },
        }));
        let spec = p.spec.as_ref().unwrap();
        let m = mount_map(
            spec.containers[0].volume_mounts.as_deref().unwrap(),
            spec.volumes.as_deref().unwrap(),
        );
        let entry = |p: &str, uri: Option<&str>, vol: Option<&str>| MountMapEntry {
            mount_path: p.into(),
            uri: uri.map(String::from),
            volume: vol.map(String::from),
        };
        assert_eq!(
            m,
            [
                entry("/data", Some("gs://my-bucket/train"), None),
                entry("/s3", Some("s3://b2"), None),
                entry("/ckpt", None, Some("pvc://claim-1")),
            ]
        );
    }

    #[test]
    fn job_name_from_the_owner_then_the_label() {
        let owned = pod(serde_json::json!({"metadata": {
            "name": "p", "labels": {"job-name": "label-name"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "u", "controller": true}],
        }}));
        assert_eq!(job_name(&owned).as_deref(), Some("train"));
        let labelled = pod(serde_json::json!({"metadata": {
            "name": "p", "labels": {"batch.kubernetes.io/job-name": "j2"}}}));
        assert_eq!(job_name(&labelled).as_deref(), Some("j2"));
        let plain = pod(serde_json::json!({"metadata": {"name": "p"}}));
        assert_eq!(job_name(&plain), None);
    }

    #[test]
    fn completion_indexes_are_decimal_numbers() {
        assert_eq!(parse_index("3"), Some(3));
        assert_eq!(parse_index(" 12 "), Some(12));
        for bad in ["", "-1", "x", "1e3", "0x10", "9999999999"] {
            assert_eq!(parse_index(bad), None, "{bad:?}");
        }
    }
}
