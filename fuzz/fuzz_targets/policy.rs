//! The opt-in policy: settings (namespaces, selectors, presets), label
//! selectors, and the decision and container role for a pod with any
//! namespace, name, labels, annotations and containers. No panic, and every
//! answer agrees with the rules the module documents.
//!
//! Input: a flag byte, then fields separated by 0xff bytes (lossy UTF-8;
//! lists are one item per line):
//! 0 namespace settings, 1 selector settings, 2 preset settings,
//! 3 pod namespace, 4 pod name, 5 `roar-node/trace` value (present only
//! when flag bit 0 is set), 6 labels (`key=value`), 7 other annotations
//! (`key=value`), 8 containers (first character `i` init, `e` ephemeral,
//! `x` regular started as OSMO's `osmo_exec`, anything else regular; the
//! rest is the name), 9 one more container name to ask about.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use roar_node::fuzzing::{
    ANNOTATION, ContainerInfo, ContainerKind, Decision, OSMO_CTRL, OSMO_EXEC, OSMO_INIT,
    OSMO_TASK_LABEL, PodInfo, Policy, Role, Selector, TraceReason, container_role,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let parts: Vec<String> = rest
        .split(|b| *b == 0xff)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let part = |i: usize| parts.get(i).map(String::as_str).unwrap_or("");
    let lines = |i: usize| -> Vec<String> { part(i).split('\n').map(str::to_string).collect() };

    let (namespaces, selectors, presets) = (lines(0), lines(1), lines(2));
    for text in &selectors {
        check_selector(text, &pairs(&lines(6)));
    }
    let policy = check_settings(&namespaces, &selectors, &presets);

    let mut annotations = pairs(&lines(7));
    if flags & 1 != 0 {
        annotations.insert(ANNOTATION.to_string(), part(5).to_string());
    } else {
        annotations.remove(ANNOTATION);
    }
    let containers = lines(8)
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut chars = l.chars();
            let first = chars.next();
            let kind = match first {
                Some('i') => ContainerKind::Init,
                Some('e') => ContainerKind::Ephemeral,
                _ => ContainerKind::Regular,
            };
            let command = match first {
                Some('x') => vec![OSMO_EXEC.to_string()],
                _ => Vec::new(),
            };
            ContainerInfo {
                name: chars.as_str().to_string(),
                kind,
                command,
                ..ContainerInfo::default()
            }
        })
        .collect();
    let pod = PodInfo {
        uid: String::new(),
        name: part(4).to_string(),
        namespace: part(3).to_string(),
        node: String::new(),
        labels: pairs(&lines(6)),
        annotations,
        containers,
        phase: String::new(),
        job_name: None,
    };

    if let Some(policy) = &policy {
        check_decision(policy, &pod);
    }
    // With no settings at all, only the annotation can trace.
    check_decision(&Policy::default(), &pod);

    let mut names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    names.push(part(9));
    for name in names {
        check_role(&pod, name);
    }
});

/// `key=value` lines (a line without `=` is a key with an empty value).
fn pairs(lines: &[String]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect()
}

/// A selector that parses keeps its text, parses again to itself, matches
/// deterministically, and is the conjunction of its comma-separated parts.
fn check_selector(text: &str, labels: &BTreeMap<String, String>) {
    let parsed = Selector::parse(text);
    assert_eq!(parsed, Selector::parse(text), "{text:?}");
    match &parsed {
        Ok(s) => {
            assert_eq!(s.as_str(), text);
            assert_eq!(Selector::parse(s.as_str()).as_ref(), Ok(s));
            let m = s.matches(labels);
            assert_eq!(m, s.matches(labels), "{text:?}");
        }
        Err(msg) => assert!(!msg.is_empty()),
    }
    if let Some((a, b)) = text.split_once(',') {
        let (pa, pb) = (Selector::parse(a), Selector::parse(b));
        assert_eq!(
            parsed.is_ok(),
            pa.is_ok() && pb.is_ok(),
            "{text:?}: {parsed:?} vs {pa:?} and {pb:?}"
        );
        if let (Ok(s), Ok(sa), Ok(sb)) = (&parsed, &pa, &pb) {
            assert_eq!(
                s.matches(labels),
                sa.matches(labels) && sb.matches(labels),
                "{text:?} on {labels:?}"
            );
        }
    }
}

/// `from_settings` accepts exactly the settings whose selectors all parse
/// and whose presets are all known, and keeps every non-empty item,
/// trimmed.
fn check_settings(
    namespaces: &[String],
    selectors: &[String],
    presets: &[String],
) -> Option<Policy> {
    let result = Policy::from_settings(namespaces, selectors, presets);
    let sel_texts: Vec<&str> = selectors
        .iter()
        .flat_map(|s| s.split(';'))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let preset_names: Vec<&str> = presets
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .collect();
    let valid = sel_texts.iter().all(|s| Selector::parse(s).is_ok())
        && preset_names.iter().all(|p| p.is_empty() || *p == "osmo");
    match result {
        Ok(p) => {
            assert!(valid, "accepted {namespaces:?} {selectors:?} {presets:?}");
            let ns: Vec<&str> = namespaces
                .iter()
                .flat_map(|s| s.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            assert_eq!(p.namespaces, ns);
            let kept: Vec<&str> = p.selectors.iter().map(Selector::as_str).collect();
            assert_eq!(kept, sel_texts);
            assert_eq!(p.osmo, preset_names.contains(&"osmo"));
            Some(p)
        }
        Err(msg) => {
            assert!(
                !valid,
                "refused {namespaces:?} {selectors:?} {presets:?}: {msg}"
            );
            assert!(!msg.is_empty());
            None
        }
    }
}

/// The annotation decides alone when present: "true" traces, "false"
/// skips, anything else is a warning naming the pod. Without it: the
/// namespace, then the first matching selector, then the osmo preset.
fn check_decision(policy: &Policy, pod: &PodInfo) {
    let d = policy.decide(pod);
    assert_eq!(d, policy.decide(pod));
    let expected = match pod.annotations.get(ANNOTATION).map(|v| v.trim()) {
        Some("true") => {
            assert!(matches!(d, Decision::Trace(_)), "{d:?}");
            return;
        }
        Some("false") => Decision::Skip,
        Some(_) => {
            match &d {
                Decision::Invalid(msg) => {
                    let who = format!("pod {}/{}", pod.namespace, pod.name);
                    assert!(msg.contains(&who), "{msg:?} does not name {who:?}");
                    assert!(msg.contains(ANNOTATION), "{msg:?}");
                }
                other => panic!(
                    "annotation {:?} gave {other:?}",
                    pod.annotations[ANNOTATION]
                ),
            }
            return;
        }
        None => {
            if policy.namespaces.contains(&pod.namespace) {
                Decision::Trace(TraceReason::Namespace(pod.namespace.clone()))
            } else if let Some(s) = policy.selectors.iter().find(|s| s.matches(&pod.labels)) {
                Decision::Trace(TraceReason::Selector(s.as_str().into()))
            } else if policy.osmo && pod.labels.contains_key(OSMO_TASK_LABEL) {
                Decision::Trace(TraceReason::OsmoPreset)
            } else {
                Decision::Skip
            }
        }
    };
    assert_eq!(d, expected, "{pod:?}");
}

/// Ephemeral containers never; OSMO pods: not osmo-init nor init
/// containers, osmo-ctrl as itself, the one started as osmo_exec as the
/// user, the rest as sidecars; other pods: init or task.
fn check_role(pod: &PodInfo, name: &str) {
    let role = container_role(pod, name);
    assert_eq!(role, container_role(pod, name));
    let expected = pod
        .containers
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| {
            let osmo = pod.labels.contains_key(OSMO_TASK_LABEL);
            match c.kind {
                ContainerKind::Ephemeral => None,
                _ if osmo && (c.name == OSMO_INIT || c.kind == ContainerKind::Init) => None,
                _ if osmo && c.name == OSMO_CTRL => Some(Role::OsmoCtrl),
                _ if osmo && c.command.first().map(String::as_str) == Some(OSMO_EXEC) => {
                    Some(Role::User)
                }
                _ if osmo => Some(Role::Sidecar),
                ContainerKind::Init => Some(Role::Init),
                _ => Some(Role::Task),
            }
        });
    assert_eq!(role, expected, "{name:?} in {pod:?}");
}
