//! Collecting from a cluster without a store: each daemon pod's bundle
//! directory, exported by `roar-node bundles export` run in the pod
//! through the API server (the exec subresource, as `kubectl exec` does),
//! with the user's own kubeconfig and rights.

use std::path::PathBuf;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{AttachParams, ListParams},
};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::{Collector, Query};
use crate::sinks::layout::{RecordKey, owner_from_fragment};

/// Where the daemons are.
#[derive(Debug)]
pub(crate) struct Daemons {
    pub(crate) kubeconfig: Option<PathBuf>,
    pub(crate) namespace: String,
    pub(crate) selector: String,
    /// The daemons' binary in their image.
    pub(crate) binary: String,
}

impl Daemons {
    pub(super) fn describe(&self) -> String {
        format!(
            "the cluster's roar-node pods (namespace {}, {})",
            self.namespace, self.selector
        )
    }
}

async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig (set KUBECONFIG or --kubeconfig)")?,
    };
    Ok(Client::try_from(config)?)
}

pub(super) async fn collect(d: &Daemons, q: &Query, c: &mut Collector) -> anyhow::Result<()> {
    let client = client(d.kubeconfig.as_deref()).await?;
    let pods: Api<Pod> = Api::namespaced(client, &d.namespace);
    let list = pods
        .list(&ListParams::default().labels(&d.selector))
        .await
        .with_context(|| format!("listing {}", d.describe()))?;
    let names: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    if names.is_empty() {
        bail!("no running pod in {}", d.describe());
    }
    for name in names {
        let doc = export(&pods, &name, &d.binary)
            .await
            .with_context(|| format!("exporting the bundles of pod {}/{name}", d.namespace))?;
        let Some(bundles) = doc["bundles"].as_object() else {
            bail!("pod {name}: `bundles export` printed no bundles object");
        };
        for bundle in bundles.values() {
            for f in bundle["fragments"].as_array().into_iter().flatten() {
                let owner = owner_from_fragment(f);
                let key = RecordKey {
                    namespace: owner.namespace,
                    workflow_id: owner.workflow_id,
                    task_id: f["task_id"].as_str().unwrap_or_default().into(),
                };
                let recorded = f["recorded_at"].as_f64().unwrap_or(0.0) as i64;
                if !q.matches(&key) || q.since.is_some_and(|t| recorded < t) {
                    continue;
                }
                let one = serde_json::json!({ "fragments": [f] });
                c.write(&key, &serde_json::to_vec_pretty(&one)?.into())?;
            }
        }
    }
    Ok(())
}

/// Runs `roar-node bundles export` in the pod; its stdout as JSON.
async fn export(pods: &Api<Pod>, name: &str, binary: &str) -> anyhow::Result<Value> {
    let ap = AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut proc = pods.exec(name, [binary, "bundles", "export"], &ap).await?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut stdout = proc.stdout().context("no stdout")?;
    let mut stderr = proc.stderr().context("no stderr")?;
    let status = proc.take_status();
    let (r1, r2) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    r1?;
    r2?;
    if let Some(status) = status
        && let Some(s) = status.await
        && s.status.as_deref() == Some("Failure")
    {
        bail!(
            "{}: {}",
            s.message.unwrap_or_default(),
            String::from_utf8_lossy(&err).trim()
        );
    }
    proc.join().await?;
    serde_json::from_slice(&out).context("reading its output")
}
