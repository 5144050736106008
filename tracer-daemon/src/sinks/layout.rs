//! Object names in a store: where a record goes, and the index that makes
//! "every record of workflow W" one listing.
//!
//! ```text
//! PREFIX/<namespace>/<workflow>/<task>.json            the record (a bundle of one fragment)
//! PREFIX/_by-workflow/<workflow>/<namespace>/<task>    an empty marker, written after the record
//! ```
//!
//! `<namespace>` is the pod's namespace and `<workflow>` its
//! `osmo.workflow_id` label; either is `-` when there is none (a local
//! run, a pod outside OSMO). Neither a namespace nor a label value can be
//! `-` or start with `_`, so those never collide with real ones.
//!
//! Each part is written with [`encode_segment`]: the bytes `A-Z a-z 0-9 .
//! _ -` stand for themselves, every other byte is `=` and two upper-case
//! hex digits. A task id `pod_uid:container:0:1` becomes
//! `pod_uid=3Acontainer=3A0=3A1`. Why `=`: it is safe in S3, GCS and Azure
//! keys and in local file names, `object_store` leaves it alone (it
//! re-encodes `%`), and hive-style keys use it already, so tools show it
//! as is. The encoding is one-to-one: two tasks never share an object.

use object_store::path::Path;

/// The part of a name that stands for "none" (no namespace, no workflow).
pub(crate) const NONE: &str = "-";
/// The index of records by workflow, under the prefix.
pub(crate) const BY_WORKFLOW: &str = "_by-workflow";
const SUFFIX: &str = ".json";

/// `s` as one path segment (see the module's comment); empty is [`NONE`].
pub(crate) fn encode_segment(s: &str) -> String {
    if s.is_empty() {
        return NONE.into();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    match out.as_str() {
        // Not file names a local store can hold.
        "." | ".." => out.replace('.', "=2E"),
        // A value that is "-" is not "none".
        NONE => "=2D".into(),
        _ => out,
    }
}

/// The inverse of [`encode_segment`]; `None` for a segment it never makes.
pub(crate) fn decode_segment(s: &str) -> Option<String> {
    if s == NONE {
        return Some(String::new());
    }
    let out = crate::records::encoding::unescape(s, b'=')?;
    String::from_utf8(out).ok()
}

/// Where one record goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordKey {
    pub(crate) namespace: Option<String>,
    pub(crate) workflow_id: Option<String>,
    pub(crate) task_id: String,
}

/// Names under one prefix of one store.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    prefix: Path,
}

fn part(o: &Option<String>) -> String {
    encode_segment(o.as_deref().unwrap_or(""))
}

impl Layout {
    pub(crate) fn new(prefix: Path) -> Self {
        Self { prefix }
    }

    pub(crate) fn prefix(&self) -> &Path {
        &self.prefix
    }

    fn under(&self, parts: &[&str]) -> Path {
        // Segments made by `encode_segment` are valid object_store parts.
        parts.iter().fold(self.prefix.clone(), |p, s| p.join(*s))
    }

    /// The record's object.
    pub(crate) fn record(&self, k: &RecordKey) -> Path {
        let task = format!("{}{SUFFIX}", encode_segment(&k.task_id));
        self.under(&[&part(&k.namespace), &part(&k.workflow_id), &task])
    }

    /// The record's marker in the workflow index.
    pub(crate) fn index_marker(&self, k: &RecordKey) -> Path {
        let task = encode_segment(&k.task_id);
        self.under(&[
            BY_WORKFLOW,
            &part(&k.workflow_id),
            &part(&k.namespace),
            &task,
        ])
    }

    /// Lists every record of a workflow (markers: see [`Self::parse_marker`]).
    pub(crate) fn workflow_index(&self, workflow_id: &str) -> Path {
        self.under(&[BY_WORKFLOW, &encode_segment(workflow_id)])
    }

    /// Lists every record of a namespace (of one workflow, if given).
    pub(crate) fn namespace_dir(&self, namespace: &str, workflow_id: Option<&str>) -> Path {
        match workflow_id {
            Some(w) => self.under(&[&encode_segment(namespace), &encode_segment(w)]),
            None => self.under(&[&encode_segment(namespace)]),
        }
    }

    fn relative(&self, p: &Path) -> Option<Vec<String>> {
        Some(
            p.prefix_match(&self.prefix)?
                .map(|s| s.as_ref().to_string())
                .collect(),
        )
    }

    /// The record a key names, if `p` is a record's object.
    pub(crate) fn parse_record(&self, p: &Path) -> Option<RecordKey> {
        let rest = self.relative(p)?;
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let [ns, wf, task] = rest.as_slice() else {
            return None;
        };
        if ns.starts_with('_') {
            return None;
        }
        key(ns, wf, task.strip_suffix(SUFFIX)?)
    }

    /// The record an index marker points to.
    pub(crate) fn parse_marker(&self, p: &Path) -> Option<RecordKey> {
        let rest = self.relative(p)?;
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let [BY_WORKFLOW, wf, ns, task] = rest.as_slice() else {
            return None;
        };
        key(ns, wf, task)
    }
}

fn key(ns: &str, wf: &str, task: &str) -> Option<RecordKey> {
    let opt = |s: String| (!s.is_empty()).then_some(s);
    Some(RecordKey {
        namespace: opt(decode_segment(ns)?),
        workflow_id: opt(decode_segment(wf)?),
        task_id: decode_segment(task)?,
    })
}

/// Whose record a bundle is, read back from it: for spool entries written
/// before the spool kept the owner, and for bundles gathered from a
/// cluster's bundle directories. Reads the keys `records::identity`
/// writes (`pod.namespace` or roar's flat `k8s_namespace`; the OSMO labels
/// under `osmo`).
pub(crate) fn owner_from_bundle(bytes: &[u8]) -> crate::records::Owner {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    owner_from_fragment(&v["fragments"][0])
}

/// [`owner_from_bundle`] for one fragment.
pub(crate) fn owner_from_fragment(f: &serde_json::Value) -> crate::records::Owner {
    let md = &f["backend_metadata"];
    let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
    crate::records::Owner {
        namespace: text(&md["k8s_namespace"]).or_else(|| text(&md["pod"]["namespace"])),
        workflow_id: text(&md["osmo"]["osmo.workflow_id"])
            .or_else(|| text(&md["osmo_workflow_id"])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_stay_safe() {
        for s in [
            "0f3c9a1e-7d2b-4c55-9e61-0a1b2c3d4e5f:train:0:1",
            "local:host:1a2b3c4d:4242",
            "my_workflow-17",
            "a=b",
            "ünïcode/slash",
            ".",
            "..",
            "-",
            "",
        ] {
            let e = encode_segment(s);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-=".contains(&b)),
                "{e}"
            );
            assert_eq!(
                Path::from_iter([e.as_str()]).as_ref(),
                e,
                "object_store keeps it"
            );
            assert_eq!(decode_segment(&e).as_deref(), Some(s), "{e}");
        }
        assert_eq!(encode_segment("uid:main:0:0"), "uid=3Amain=3A0=3A0");
        // "-" (a real value) and "" (none) stay apart.
        assert_ne!(encode_segment("-"), encode_segment(""));
        assert_eq!(decode_segment("=4"), None);
        assert_eq!(decode_segment("=ZZ"), None);
    }

    #[test]
    fn owner_read_back_from_a_bundle() {
        let b = br#"{"fragments":[{"backend_metadata":{"pod":{"namespace":"ns"},"osmo":{"osmo.workflow_id":"wf-2"}}}]}"#;
        let o = owner_from_bundle(b);
        assert_eq!(o.namespace.as_deref(), Some("ns"));
        assert_eq!(o.workflow_id.as_deref(), Some("wf-2"));
        let flat =
            owner_from_bundle(br#"{"fragments":[{"backend_metadata":{"k8s_namespace":"n2"}}]}"#);
        assert_eq!(
            (flat.namespace.as_deref(), flat.workflow_id),
            (Some("n2"), None)
        );
        assert_eq!(owner_from_bundle(b"not json"), Default::default());
    }

    #[test]
    fn record_and_index_keys() {
        let l = Layout::new(Path::from("roar/records"));
        let k = RecordKey {
            namespace: Some("osmo-workflows".into()),
            workflow_id: Some("train-42".into()),
            task_id: "u1:train:0:0".into(),
        };
        let r = l.record(&k);
        assert_eq!(
            r.as_ref(),
            "roar/records/osmo-workflows/train-42/u1=3Atrain=3A0=3A0.json"
        );
        assert_eq!(l.parse_record(&r), Some(k.clone()));
        let m = l.index_marker(&k);
        assert_eq!(
            m.as_ref(),
            "roar/records/_by-workflow/train-42/osmo-workflows/u1=3Atrain=3A0=3A0"
        );
        assert_eq!(l.parse_marker(&m), Some(k.clone()));
        assert!(m.prefix_matches(&l.workflow_index("train-42")));
        assert!(r.prefix_matches(&l.namespace_dir("osmo-workflows", Some("train-42"))));
        // A local run: no namespace, no workflow.
        let local = RecordKey {
            namespace: None,
            workflow_id: None,
            task_id: "local:h:b:7".into(),
        };
        assert_eq!(
            l.record(&local).as_ref(),
            "roar/records/-/-/local=3Ah=3Ab=3A7.json"
        );
        assert_eq!(l.parse_record(&l.record(&local)), Some(local));
        // The index is not a namespace.
        assert_eq!(
            l.parse_record(&Path::from("roar/records/_by-workflow/w/n.json")),
            None
        );
        // Without a prefix.
        let bare = Layout::new(Path::default());
        assert_eq!(
            bare.record(&k).as_ref(),
            "osmo-workflows/train-42/u1=3Atrain=3A0=3A0.json"
        );
        assert_eq!(bare.parse_record(&bare.record(&k)), Some(k));
    }
}
