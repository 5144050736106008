//! `cargo xtask run`: the whole story on a real (local, single-node)
//! Kubernetes cluster. Starts the cluster if needed (deploy/k8s-local),
//! builds the roar-node image and the OSMO-shaped task image and pushes
//! them to the cluster's registry, installs the Helm chart, runs a two-task OSMO-shaped workflow (the second
//! task reads what the first one wrote), collects the bundles and shows
//! the lineage graph roar makes of them.
//!
//! kind is not used: it needs Docker, which these machines do not have;
//! deploy/k8s-local builds Kubernetes from Debian's source package and
//! runs Debian's docker-registry instead.

use std::{fs, path::PathBuf, time::Duration};

use roar_node_tests::k8s::{self as wf, OsmoTask};
use serde_json::Value;

use crate::{
    cluster,
    util::{self, roar_venv, root},
};

#[derive(clap::Args)]
pub struct Args {
    /// Leave the workflow's namespace in place.
    #[arg(long)]
    pub keep: bool,
}

/// 32 hex digits, unique per call (OSMO's uuids are hex).
pub fn hex_id(seed: &str) -> String {
    use sha2::Digest;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = sha2::Sha256::digest(format!("{seed}:{t}:{}:{n}", std::process::id()));
    format!("{d:x}")[..32].to_string()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    cluster::prepare_e2e()?;

    let kc = cluster::kubeconfig();
    let run_id = &hex_id("run")[..8];
    let ns = format!("roar-demo-{run_id}");
    let shared = PathBuf::from(format!("/var/tmp/roar-node-demo/{run_id}"));
    wf::create_namespace(&kc, &ns);
    let workflow_uuid = hex_id("workflow");
    let task = |name: &str, input: Option<&str>, script: &str| OsmoTask {
        namespace: ns.clone(),
        workflow_name: "roar-demo".into(),
        workflow_uuid: workflow_uuid.clone(),
        task_name: name.into(),
        task_uuid: hex_id(name),
        retry_id: 0,
        input: input.map(String::from),
        script: script.into(),
        opt_in: true,
        shared_dir: shared.clone(),
    };
    let steps = [
        task(
            "prepare",
            None,
            "seq 1 500 | sed 's/^/sample-/' > /osmo/data/output/dataset.txt",
        ),
        task(
            "train",
            Some("prepare/dataset.txt"),
            "wc -l < /osmo/data/input/0/dataset.txt > /osmo/data/output/model.txt; \
             sort -r /osmo/data/input/0/dataset.txt | head -3 >> /osmo/data/output/model.txt",
        ),
    ];
    for t in &steps {
        eprintln!("\n== task {} (pod {}/{})", t.task_name, ns, t.pod_name());
        wf::create(&kc, &t.pod());
        let pod = wf::wait_pod_done(&kc, &ns, &t.pod_name(), Duration::from_secs(120));
        eprintln!(
            "   phase {}, user container exit code {:?}",
            pod["status"]["phase"].as_str().unwrap_or("?"),
            wf::exit_code(&pod, &t.container_name())
        );
    }
    // Records are written when the API server has reported the exit
    // codes; give the daemon a moment.
    let dir = root().join("target/k8s-demo");
    let _ = fs::remove_dir_all(&dir);
    let bundles = dir.join("bundles");
    let all = root().join("target/k8s-bundles");
    let mut mine = Vec::new();
    for _ in 0..40 {
        let got = cluster::collect(&all)?;
        mine = got
            .into_iter()
            .filter(|(_, b)| {
                b["fragments"][0]["backend_metadata"]["pod"]["namespace"].as_str()
                    == Some(ns.as_str())
            })
            .collect::<Vec<(String, Value)>>();
        if mine.len() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each task has two traced containers (the user's and osmo-ctrl).
    if mine.len() < 2 * steps.len() {
        anyhow::bail!(
            "got {} bundles of this workflow, expected {} (two per task): see `kubectl -n roar-node logs -l app.kubernetes.io/name=roar-node`",
            mine.len(),
            2 * steps.len()
        );
    }
    fs::create_dir_all(&bundles)?;
    for (name, b) in &mine {
        fs::write(bundles.join(name), serde_json::to_vec_pretty(b)?)?;
        let f = &b["fragments"][0];
        eprintln!(
            "   {name}: {} role={} exit={} reads={} writes={}",
            f["task_name"],
            f["backend_metadata"]["execution_role"],
            f["exit_code"],
            f["reads"].as_array().map_or(0, |a| a.len()),
            f["writes"].as_array().map_or(0, |a| a.len()),
        );
    }
    eprintln!(
        "\n== {} bundles of this workflow in {}",
        mine.len(),
        bundles.display()
    );

    util::roar_graph(&dir, &bundles)?;
    if !args.keep {
        let _ = util::output(cluster::kubectl().args(["delete", "namespace", &ns, "--wait=false"]));
    }
    eprintln!(
        "\nTo see the graph again:\n  cd {}\n  {} dag\nTo collect every bundle of the cluster:\n  cargo xtask cluster collect --out DIR && roar k8s ingest-bundles DIR",
        dir.display(),
        roar_venv()?.join("bin/roar").display()
    );
    Ok(())
}
