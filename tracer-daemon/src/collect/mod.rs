//! `roar-node collect`: the records of a workflow (a namespace, or all of
//! them) gathered into one directory as roar bundle files, ready for
//! `roar k8s ingest-bundles DIR`. From an object store the daemons deliver
//! to ([`store`]), or from the daemons' bundle directories through the API
//! server with the user's own kubeconfig ([`cluster`]).

mod cluster;
mod store;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::sinks::{
    Item, Sink,
    bundle::BundleDir,
    layout::{RecordKey, encode_segment},
};

/// Where the records are.
#[derive(Debug)]
pub(crate) enum Source {
    /// An object store URL (what the daemons' `--sink` names).
    Store(String),
    /// The daemons' bundle directories, by `kubectl exec`'s API.
    Cluster(cluster::Daemons),
}

/// The cluster's daemons as a source (`--from cluster`).
pub(crate) fn cluster_source(
    kubeconfig: Option<PathBuf>,
    namespace: String,
    selector: String,
) -> Source {
    Source::Cluster(cluster::Daemons {
        kubeconfig,
        namespace,
        selector,
        binary: "/roar-node".into(),
    })
}

/// Which records.
#[derive(Clone, Debug, Default)]
pub(crate) struct Query {
    pub(crate) workflow: Option<String>,
    pub(crate) namespace: Option<String>,
    /// Only records stored at or after this (unix seconds).
    pub(crate) since: Option<i64>,
}

impl Query {
    pub(crate) fn matches(&self, k: &RecordKey) -> bool {
        let is = |want: &Option<String>, have: &Option<String>| {
            want.is_none() || want.as_deref() == have.as_deref()
        };
        is(&self.workflow, &k.workflow_id) && is(&self.namespace, &k.namespace)
    }

    /// "workflow W in namespace N", for messages.
    fn describe(&self) -> String {
        match (&self.workflow, &self.namespace) {
            (Some(w), Some(n)) => format!("workflow {w} in namespace {n}"),
            (Some(w), None) => format!("workflow {w}"),
            (None, Some(n)) => format!("namespace {n}"),
            (None, None) => "any task".into(),
        }
    }
}

/// What a collection wrote.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) records: u64,
    pub(crate) tasks: BTreeSet<String>,
    pub(crate) workflows: BTreeSet<String>,
    pub(crate) bytes: u64,
}

/// Writes records into the output directory and says how far it got.
pub(crate) struct Collector {
    out: BundleDir,
    summary: Summary,
    quiet: bool,
    last_note: Instant,
    /// Records expected in all (0: not known yet).
    pub(crate) expected: u64,
}

impl Collector {
    fn new(out: PathBuf, quiet: bool) -> anyhow::Result<Self> {
        let out = BundleDir::new(&out).context("output directory")?;
        out.check().context("output directory")?;
        Ok(Self {
            out,
            summary: Summary::default(),
            quiet,
            last_note: Instant::now(),
            expected: 0,
        })
    }

    /// Writes one record's bundle. Its file name derives from the task id
    /// (one file per task: collecting again overwrites, never adds).
    pub(crate) fn write(&mut self, key: &RecordKey, bytes: &bytes::Bytes) -> anyhow::Result<()> {
        let name = format!("roar-fragments-{}.json", encode_segment(&key.task_id));
        let owner = crate::records::Owner {
            namespace: key.namespace.clone(),
            workflow_id: key.workflow_id.clone(),
        };
        let item = Item {
            task_id: &key.task_id,
            bundle_file: &name,
            owner: &owner,
            bytes,
        };
        self.out.put(&item)?;
        let s = &mut self.summary;
        s.records += 1;
        s.bytes += bytes.len() as u64;
        s.tasks.insert(key.task_id.clone());
        if let Some(w) = &key.workflow_id {
            s.workflows.insert(w.clone());
        }
        if !self.quiet && self.last_note.elapsed() > Duration::from_secs(2) {
            self.last_note = Instant::now();
            let of = if self.expected > 0 {
                format!(" of {}", self.expected)
            } else {
                String::new()
            };
            eprintln!(
                "roar-node: {}{of} records ({}) so far",
                s.records,
                bytesize::ByteSize(s.bytes)
            );
        }
        Ok(())
    }
}

/// Collects what `query` names from `source` into `out`.
pub(crate) async fn collect(
    source: Source,
    query: Query,
    out: PathBuf,
    quiet: bool,
) -> anyhow::Result<Summary> {
    let mut c = Collector::new(out.clone(), quiet)?;
    let from = match &source {
        Source::Store(url) => url.clone(),
        Source::Cluster(d) => d.describe(),
    };
    match source {
        Source::Store(url) => store::collect(&url, &query, &mut c).await?,
        Source::Cluster(d) => cluster::collect(&d, &query, &mut c).await?,
    }
    if c.summary.records == 0 {
        bail!("no records of {} in {from}", query.describe());
    }
    Ok(c.summary)
}

impl Summary {
    /// The closing line.
    pub(crate) fn line(&self, out: &std::path::Path) -> String {
        format!(
            "roar-node: collected {} records ({} tasks, {} workflows, {}) into {}; next: roar k8s ingest-bundles {}",
            self.records,
            self.tasks.len(),
            self.workflows.len(),
            bytesize::ByteSize(self.bytes),
            out.display(),
            out.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_matches_owner_parts() {
        let k = RecordKey {
            namespace: Some("ns".into()),
            workflow_id: Some("wf".into()),
            task_id: "t".into(),
        };
        let q = |w: Option<&str>, n: Option<&str>| Query {
            workflow: w.map(String::from),
            namespace: n.map(String::from),
            since: None,
        };
        assert!(q(Some("wf"), None).matches(&k));
        assert!(q(Some("wf"), Some("ns")).matches(&k));
        assert!(q(None, None).matches(&k));
        assert!(!q(Some("other"), None).matches(&k));
        assert!(!q(None, Some("other")).matches(&k));
    }
}
