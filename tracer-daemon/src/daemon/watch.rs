//! What the daemon watches besides the kernel: the pods of its node (one
//! list+watch through the API server) and the policy ConfigMap.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;

use super::State;
use crate::{
    attribution::{pods::PodInfo, policy::PolicyDir},
    observability::Health,
};

/// A pod watch event, reduced to what the loop needs.
pub(super) enum PodEvent {
    Apply(PodInfo),
    /// The pod's UID and its final state (`None` without a usable object).
    Delete(String, Option<PodInfo>),
    /// A (re-)list finished: these UIDs exist.
    Listed(HashSet<String>),
    Error(String),
}

/// What the daemon knows of the API server.
#[derive(Debug, Default)]
pub(super) struct ApiState {
    /// The API server answered since start-up.
    pub(super) reachable: bool,
    /// The pod watch's last word was not an error.
    pub(super) watch_healthy: bool,
    /// The first pod list is in.
    pub(super) listed_once: bool,
    pub(super) watch_errors: u64,
    /// The test-only hold (`--test-hold-pod-watch`) is holding the watch's
    /// events back.
    pub(super) held: Arc<AtomicBool>,
}

impl ApiState {
    /// The watch delivers: listed, healthy and not held.
    pub(super) fn delivers(&self) -> bool {
        self.listed_once && self.watch_healthy && !self.held.load(Ordering::Relaxed)
    }
}

/// A test-only knob: while `file` exists, the watch's events are held back
/// (the watch is not read), as a watch lagging behind the kubelet would
/// hold them; `held` says so (in the stats). The cluster tests use it to
/// make a container's cgroup appear before its pod is known.
pub(super) struct Hold {
    pub(super) file: PathBuf,
    pub(super) held: Arc<AtomicBool>,
}

impl Hold {
    async fn wait(&self) {
        while self.file.exists() {
            self.held.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.held.store(false, Ordering::Relaxed);
    }
}

pub(super) async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", p.display()))?
        }
        None => Config::incluster().context(
            "no in-cluster configuration (KUBERNETES_SERVICE_HOST and the service account token); pass --kubeconfig outside a pod",
        )?,
    };
    Client::try_from(config).context("Kubernetes client")
}

/// Says early and clearly when the API server is unreachable or forbids
/// listing pods; the daemon keeps going either way: capture continues
/// (tasks the spool names are traced again at once) and attribution catches
/// up when the watch gets through.
pub(super) async fn api_reachable(client: &Client, node: &str) -> bool {
    let api: Api<Pod> = Api::all(client.clone());
    let params = kube::api::ListParams::default()
        .fields(&format!("spec.nodeName={node}"))
        .limit(1);
    match api.list(&params).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot list pods on this node (API server down? RBAC: pods get/list/watch): capturing anyway, attribution catches up when it answers");
            false
        }
    }
}

/// One list+watch of the pods on `node`, forwarded to the loop. Restarts
/// with backoff on errors (each restart re-lists).
pub(super) fn spawn_pod_watch(
    client: Client,
    node: String,
    tx: mpsc::Sender<PodEvent>,
    hold: Option<Hold>,
) {
    tokio::spawn(async move {
        let api: Api<Pod> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        let mut listing: HashSet<String> = HashSet::new();
        while let Some(ev) = stream.next().await {
            let msg = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                    match PodInfo::from_pod(&p) {
                        Some(info) => {
                            listing.insert(info.uid.clone());
                            PodEvent::Apply(info)
                        }
                        None => continue,
                    }
                }
                Ok(watcher::Event::Delete(p)) => match p.metadata.uid.clone() {
                    Some(uid) => PodEvent::Delete(uid, PodInfo::from_pod(&p)),
                    None => continue,
                },
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    continue;
                }
                Ok(watcher::Event::InitDone) => PodEvent::Listed(std::mem::take(&mut listing)),
                Err(e) => PodEvent::Error(e.to_string()),
            };
            if let Some(h) = &hold {
                h.wait().await;
            }
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
}

impl State {
    pub(super) fn on_pod_event(&mut self, msg: PodEvent, health: &Health) {
        let now = Instant::now();
        if !matches!(msg, PodEvent::Error(_)) && !self.api.watch_healthy {
            self.api.watch_healthy = true;
            self.api.reachable = true;
            tracing::info!("the pod watch gets through again");
        }
        let acts = match msg {
            PodEvent::Apply(p) => self.attr.on_pod(p),
            PodEvent::Delete(uid, last) => self.attr.on_pod_deleted(&uid, last, now),
            PodEvent::Listed(uids) => {
                if !self.api.listed_once {
                    self.api.listed_once = true;
                    health.set_pod_cache_synced(true);
                    tracing::info!(
                        pods = uids.len(),
                        "{} pods on this node; watching",
                        uids.len()
                    );
                }
                let gone = self.attr.pods.uids_not_in(&uids);
                gone.iter()
                    .flat_map(|uid| self.attr.on_pod_deleted(uid, None, now))
                    .collect()
            }
            PodEvent::Error(e) => {
                self.api.watch_errors += 1;
                if self.api.watch_healthy {
                    tracing::warn!(error = %e, "pod watch error (retrying; capture continues)");
                }
                self.api.watch_healthy = false;
                Vec::new()
            }
        };
        self.execute(acts);
        if self.api.listed_once {
            self.write_orphans();
        }
    }

    /// Re-reads the policy ConfigMap if it changed. An invalid one is
    /// reported (log, counter, stats) and the policy in force is kept.
    pub(super) fn reload_policy(&mut self) {
        let Some(result) = self.policy_dir.as_mut().and_then(PolicyDir::poll) else {
            return;
        };
        match result {
            Ok(policy) => {
                self.counters.policy_generation += 1;
                tracing::info!(policy = %policy.describe(), generation = self.counters.policy_generation, "policy updated");
                let acts = self.attr.set_policy(policy);
                self.execute(acts);
            }
            Err(e) => {
                self.counters.policy_errors += 1;
                tracing::error!(error = %e, kept = %self.attr.policy().describe(), "invalid policy: keeping the one in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hold holds while its file exists, says so, and lets go when it
    /// is removed.
    #[tokio::test]
    async fn the_hold_holds_while_its_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hold");
        std::fs::write(&file, "").unwrap();
        let held = Arc::new(AtomicBool::new(false));
        let hold = Hold {
            file: file.clone(),
            held: held.clone(),
        };
        let waiting = tokio::spawn(async move { hold.wait().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(held.load(Ordering::Relaxed));
        assert!(!waiting.is_finished());
        std::fs::remove_file(&file).unwrap();
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(!held.load(Ordering::Relaxed));
    }
}
