//! Which pods and containers are traced.
//!
//! A pod is traced when its annotation `roar-node/trace` is `"true"`, or
//! when it matches a configured namespace, label selector or preset and
//! does not carry `roar-node/trace: "false"`. Any other annotation value
//! is a mistake: the pod is not traced and the daemon says why.
//!
//! Containers: for an OSMO pod (label `osmo.task_uuid`) the user container
//! (the one whose command is `/osmo/bin/osmo_exec`, role `user`), the
//! `osmo-ctrl` sidecar (role `osmo-ctrl`) and any other regular container
//! a pod template added (role `sidecar`), never `osmo-init` nor another
//! init container; for other pods every regular container (role `task`)
//! and init container (role `init`). Ephemeral (debug) containers never.

use std::{collections::BTreeMap, io::Read, path::Path};

use super::{
    pods::{ContainerKind, PodInfo},
    task::{Role, TraceReason},
};

pub const ANNOTATION: &str = "roar-node/trace";
pub const OSMO_TASK_LABEL: &str = "osmo.task_uuid";
pub const OSMO_INIT: &str = "osmo-init";
pub const OSMO_CTRL: &str = "osmo-ctrl";

/// One requirement of an equality-based label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// An equality-based label selector, as `kubectl -l` spells it:
/// `a=b,c!=d,e,!f` (all must hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    text: String,
    reqs: Vec<Requirement>,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("empty requirement in selector {text:?}"));
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(format!("bad label key {key:?} in selector {text:?}"));
            }
            reqs.push(req);
        }
        Ok(Self {
            text: text.into(),
            reqs,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Every pod of these namespaces.
    pub namespaces: Vec<String>,
    /// Pods matching any of these.
    pub selectors: Vec<Selector>,
    /// Every OSMO task pod (label `osmo.task_uuid`).
    pub osmo: bool,
}

/// What the policy says about a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Traced; why (for the log and the record).
    Trace(TraceReason),
    /// Not traced.
    Skip,
    /// Not traced because the annotation is malformed: warn the operator.
    Invalid(String),
}

impl Policy {
    /// From the daemon's settings: namespaces, selectors and preset names
    /// (`osmo`), each possibly comma- or semicolon-separated lists (a
    /// selector's own commas are kept: selectors are `;`-separated).
    pub fn from_settings(
        namespaces: &[String],
        selectors: &[String],
        presets: &[String],
    ) -> Result<Self, String> {
        let mut p = Policy::default();
        for ns in namespaces.iter().flat_map(|s| s.split(',')) {
            let ns = ns.trim();
            if !ns.is_empty() {
                p.namespaces.push(ns.into());
            }
        }
        for sel in selectors.iter().flat_map(|s| s.split(';')) {
            let sel = sel.trim();
            if !sel.is_empty() {
                p.selectors.push(Selector::parse(sel)?);
            }
        }
        for preset in presets.iter().flat_map(|s| s.split(',')) {
            match preset.trim() {
                "" => {}
                "osmo" => p.osmo = true,
                other => return Err(format!("unknown policy preset {other:?} (known: osmo)")),
            }
        }
        Ok(p)
    }

    pub fn decide(&self, pod: &PodInfo) -> Decision {
        match pod.annotations.get(ANNOTATION).map(|v| v.trim()) {
            Some("true") => return Decision::Trace(TraceReason::Annotation),
            Some("false") => return Decision::Skip,
            Some(other) => {
                return Decision::Invalid(format!(
                    "pod {}/{} has annotation {ANNOTATION}={other:?}; expected \"true\" or \"false\": not tracing it",
                    pod.namespace, pod.name
                ));
            }
            None => {}
        }
        if self.namespaces.contains(&pod.namespace) {
            return Decision::Trace(TraceReason::Namespace(pod.namespace.clone()));
        }
        if let Some(s) = self.selectors.iter().find(|s| s.matches(&pod.labels)) {
            return Decision::Trace(TraceReason::Selector(s.as_str().into()));
        }
        if self.osmo && is_osmo(pod) {
            return Decision::Trace(TraceReason::OsmoPreset);
        }
        Decision::Skip
    }
}

/// Keys of the policy ConfigMap (one file each when it is mounted).
pub(crate) const POLICY_KEYS: [&str; 3] = ["namespaces", "selectors", "presets"];
/// A policy file larger than this is not a policy.
const MAX_POLICY_FILE: u64 = 1 << 20;

impl Policy {
    /// From a mounted ConfigMap: a directory with one file per key
    /// (`namespaces`, `selectors`, `presets`; the kubelet's `..data`
    /// entries are skipped). Any other key, an unreadable, non-UTF-8 or
    /// oversized file, a bad selector or an unknown preset is an error
    /// that names it.
    pub(crate) fn from_dir(dir: &Path) -> Result<Self, String> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("policy {}: {e}", dir.display()))?;
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("policy {}: {e}", dir.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("..") {
                continue;
            }
            let Some(key) = POLICY_KEYS.iter().find(|k| **k == name) else {
                return Err(format!(
                    "policy {}: unknown key {name:?} (known: {})",
                    dir.display(),
                    POLICY_KEYS.join(", ")
                ));
            };
            let path = entry.path();
            let read = || -> std::io::Result<Vec<u8>> {
                let f = std::fs::File::open(&path)?;
                let mut buf = Vec::new();
                f.take(MAX_POLICY_FILE + 1).read_to_end(&mut buf)?;
                Ok(buf)
            };
            let bytes = read().map_err(|e| format!("policy key {key}: {e}"))?;
            if bytes.len() as u64 > MAX_POLICY_FILE {
                return Err(format!(
                    "policy key {key}: larger than {MAX_POLICY_FILE} bytes"
                ));
            }
            let text =
                String::from_utf8(bytes).map_err(|_| format!("policy key {key}: not UTF-8"))?;
            values.insert(key, text);
        }
        let get = |k: &str| values.get(k).cloned().into_iter().collect::<Vec<_>>();
        Self::from_settings(&get("namespaces"), &get("selectors"), &get("presets"))
            .map_err(|e| format!("policy {}: {e}", dir.display()))
    }

    /// The policy in one line, for logs.
    pub(crate) fn describe(&self) -> String {
        let sels: Vec<&str> = self.selectors.iter().map(Selector::as_str).collect();
        format!(
            "annotation {ANNOTATION}=true; namespaces [{}]; selectors [{}]; osmo preset {}",
            self.namespaces.join(","),
            sels.join("; "),
            if self.osmo { "on" } else { "off" }
        )
    }
}

/// A policy directory, re-read when its contents change (the kubelet
/// updates a mounted ConfigMap in place, by swapping a symlink).
pub(crate) struct PolicyDir {
    dir: std::path::PathBuf,
    seen: Option<blake3::Hash>,
}

impl PolicyDir {
    pub(crate) fn new(dir: std::path::PathBuf) -> Self {
        Self { dir, seen: None }
    }

    /// `None` when nothing changed since the last call; otherwise the new
    /// policy or why it is invalid (the caller keeps the one in force).
    pub(crate) fn poll(&mut self) -> Option<Result<Policy, String>> {
        let mut h = blake3::Hasher::new();
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        names.sort();
        for n in names {
            h.update(n.as_encoded_bytes());
            h.update(&[0]);
            if let Ok(b) = std::fs::read(self.dir.join(&n)) {
                h.update(&(b.len() as u64).to_le_bytes());
                h.update(&b);
            }
        }
        let now = h.finalize();
        if self.seen == Some(now) {
            return None;
        }
        self.seen = Some(now);
        Some(Policy::from_dir(&self.dir))
    }
}

pub(crate) fn is_osmo(pod: &PodInfo) -> bool {
    pod.labels.contains_key(OSMO_TASK_LABEL)
}

/// The role of a container of a traced pod, or `None` if it is not traced.
pub fn container_role(pod: &PodInfo, container: &str) -> Option<Role> {
    let c = pod.container(container)?;
    if c.kind == ContainerKind::Ephemeral {
        return None;
    }
    if is_osmo(pod) {
        return match (c.kind, c.name.as_str()) {
            (_, OSMO_INIT) | (ContainerKind::Init, _) => None,
            (_, OSMO_CTRL) => Some(Role::OsmoCtrl),
            _ if super::osmo::is_user_container(c) => Some(Role::User),
            _ => Some(Role::Sidecar),
        };
    }
    Some(match c.kind {
        ContainerKind::Init => Role::Init,
        _ => Role::Task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mounted ConfigMap, as the kubelet lays it out: keys are symlinks
    /// into `..data`, itself a symlink swapped on update. A valid update
    /// is picked up; an invalid one is an error naming the problem, and
    /// the caller keeps the policy it had.
    #[test]
    fn policy_dir_reload_and_errors() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path();
        let write = |generation: &str, kv: &[(&str, &str)]| {
            let g = d.join(generation);
            std::fs::create_dir(&g).unwrap();
            for (k, v) in kv {
                std::fs::write(g.join(k), v).unwrap();
                let _ = std::fs::remove_file(d.join(k));
                std::os::unix::fs::symlink(format!("..data/{k}"), d.join(k)).unwrap();
            }
            let tmp = d.join("..data_tmp");
            std::os::unix::fs::symlink(generation, &tmp).unwrap();
            std::fs::rename(&tmp, d.join("..data")).unwrap();
        };
        write(
            "..g1",
            &[
                ("namespaces", "ml, train"),
                ("presets", "osmo"),
                ("selectors", ""),
            ],
        );
        let mut pd = PolicyDir::new(d.to_path_buf());
        let p = pd.poll().unwrap().unwrap();
        assert_eq!(p.namespaces, ["ml", "train"]);
        assert!(p.osmo);
        assert!(pd.poll().is_none(), "unchanged");
        write(
            "..g2",
            &[
                ("namespaces", "ml"),
                ("presets", "osmo"),
                ("selectors", "team=a,!x="),
            ],
        );
        let err = pd.poll().unwrap().unwrap_err();
        assert!(
            err.contains("bad label key") || err.contains("selector"),
            "{err}"
        );
        write(
            "..g3",
            &[
                ("namespaces", "ml"),
                ("presets", "osmoo"),
                ("selectors", "team=a"),
            ],
        );
        let err = pd.poll().unwrap().unwrap_err();
        assert!(err.contains("unknown policy preset \"osmoo\""), "{err}");
        std::fs::write(d.join("namespace"), "typo").unwrap();
        let err = pd.poll().unwrap().unwrap_err();
        assert!(err.contains("unknown key \"namespace\""), "{err}");
        std::fs::remove_file(d.join("namespace")).unwrap();
        std::fs::write(d.join("..g3/namespaces"), [0xff, 0xfe]).unwrap();
        let err = pd.poll().unwrap().unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        write(
            "..g4",
            &[
                ("namespaces", "ml"),
                ("presets", ""),
                ("selectors", "team=a"),
            ],
        );
        let p = pd.poll().unwrap().unwrap();
        assert_eq!(p.selectors.len(), 1);
        assert!(!p.osmo);
    }
    use crate::attribution::pods::tests::OSMO_POD;

    fn osmo_pod() -> PodInfo {
        PodInfo::from_pod(&serde_json::from_str(OSMO_POD).unwrap()).unwrap()
    }

    fn plain(ns: &str, labels: &[(&str, &str)], ann: Option<&str>) -> PodInfo {
        let mut p = osmo_pod();
        p.namespace = ns.into();
        p.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p.annotations.clear();
        if let Some(a) = ann {
            p.annotations.insert(ANNOTATION.into(), a.into());
        }
        p
    }

    #[test]
    fn annotation_wins_both_ways() {
        let none = Policy::default();
        assert!(matches!(
            none.decide(&plain("x", &[], Some("true"))),
            Decision::Trace(_)
        ));
        let all = Policy::from_settings(&["x".into()], &[], &["osmo".into()]).unwrap();
        assert_eq!(all.decide(&plain("x", &[], Some("false"))), Decision::Skip);
        // The recorded pod carries the annotation an OSMO pod template adds.
        assert!(matches!(none.decide(&osmo_pod()), Decision::Trace(_)));
    }

    #[test]
    fn malformed_annotation_is_a_warning() {
        let p = Policy::from_settings(&["x".into()], &[], &[]).unwrap();
        for bad in ["yes", "True ", "1", ""] {
            match p.decide(&plain("x", &[], Some(bad))) {
                Decision::Invalid(msg) => assert!(msg.contains(ANNOTATION), "{msg}"),
                other if bad.trim() == "True" => panic!("{other:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn namespaces_selectors_presets() {
        let p = Policy::from_settings(
            &["ml, data".into()],
            &["team=vision,tier!=dev;gpu".into()],
            &["osmo".into()],
        )
        .unwrap();
        assert!(matches!(
            p.decide(&plain("data", &[], None)),
            Decision::Trace(_)
        ));
        assert_eq!(p.decide(&plain("web", &[], None)), Decision::Skip);
        assert!(matches!(
            p.decide(&plain("web", &[("team", "vision")], None)),
            Decision::Trace(_)
        ));
        assert_eq!(
            p.decide(&plain("web", &[("team", "vision"), ("tier", "dev")], None)),
            Decision::Skip
        );
        assert!(matches!(
            p.decide(&plain("web", &[("gpu", "")], None)),
            Decision::Trace(_)
        ));
        assert!(matches!(
            p.decide(&plain("web", &[(OSMO_TASK_LABEL, "u")], None)),
            Decision::Trace(_)
        ));
        assert!(Policy::from_settings(&[], &[], &["nope".into()]).is_err());
        assert!(Policy::from_settings(&[], &["a=b,,c".into()], &[]).is_err());
        assert!(Selector::parse("!x").unwrap().matches(&BTreeMap::new()));
    }

    /// The user container is the one OSMO starts as `osmo_exec`, wherever
    /// it is in the list (OSMO puts it first); a container a pod template
    /// adds is a sidecar, not the user container.
    #[test]
    fn osmo_roles() {
        let mut p = osmo_pod();
        assert_eq!(container_role(&p, OSMO_INIT), None);
        assert_eq!(container_role(&p, OSMO_CTRL), Some(Role::OsmoCtrl));
        assert_eq!(container_role(&p, "train"), Some(Role::User));
        assert_eq!(container_role(&p, "nope"), None);
        p.containers.push(crate::attribution::pods::ContainerInfo {
            name: "log-shipper".into(),
            command: vec!["/bin/fluent-bit".into()],
            ..Default::default()
        });
        assert_eq!(container_role(&p, "log-shipper"), Some(Role::Sidecar));
        let mut k = p.clone();
        k.labels.clear();
        assert_eq!(container_role(&k, OSMO_INIT), Some(Role::Init));
        assert_eq!(container_role(&k, "train"), Some(Role::Task));
    }
}
