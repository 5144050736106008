//! Which pods and containers are traced.
//!
//! A pod is traced when its annotation `roar-node/trace` is `"true"`, or
//! when it matches a configured namespace, label selector or preset and
//! does not carry `roar-node/trace: "false"`. Any other annotation value
//! is a mistake: the pod is not traced and the daemon says why.
//!
//! Containers: for an OSMO pod (label `osmo.task_uuid`) the user container
//! (role `user`) and the `osmo-ctrl` sidecar (role `osmo-ctrl`), never
//! `osmo-init`; for other pods every regular container (role `task`) and
//! init container (role `init`). Ephemeral (debug) containers never.

use std::collections::BTreeMap;

use super::pods::{ContainerKind, PodInfo};

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
    Trace(String),
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
            Some("true") => return Decision::Trace(format!("annotation {ANNOTATION}=true")),
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
            return Decision::Trace(format!("namespace {}", pod.namespace));
        }
        if let Some(s) = self.selectors.iter().find(|s| s.matches(&pod.labels)) {
            return Decision::Trace(format!("selector {}", s.as_str()));
        }
        if self.osmo && is_osmo(pod) {
            return Decision::Trace("preset osmo".into());
        }
        Decision::Skip
    }
}

pub fn is_osmo(pod: &PodInfo) -> bool {
    pod.labels.contains_key(OSMO_TASK_LABEL)
}

/// The role of a container of a traced pod, or `None` if it is not traced.
pub fn container_role(pod: &PodInfo, container: &str) -> Option<&'static str> {
    let c = pod.container(container)?;
    if c.kind == ContainerKind::Ephemeral {
        return None;
    }
    if is_osmo(pod) {
        return match (c.kind, c.name.as_str()) {
            (_, OSMO_INIT) | (ContainerKind::Init, _) => None,
            (_, OSMO_CTRL) => Some("osmo-ctrl"),
            _ => Some("user"),
        };
    }
    Some(match c.kind {
        ContainerKind::Init => "init",
        _ => "task",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn osmo_roles() {
        let p = osmo_pod();
        assert_eq!(container_role(&p, OSMO_INIT), None);
        assert_eq!(container_role(&p, OSMO_CTRL), Some("osmo-ctrl"));
        assert_eq!(container_role(&p, "train"), Some("user"));
        assert_eq!(container_role(&p, "nope"), None);
        let mut k = p.clone();
        k.labels.clear();
        assert_eq!(container_role(&k, OSMO_INIT), Some("init"));
        assert_eq!(container_role(&k, "train"), Some("task"));
    }
}
