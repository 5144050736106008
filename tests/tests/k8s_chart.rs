//! The release `cargo xtask e2e-k8s` installed on the local cluster
//! (`ROAR_NODE_K8S=1`): it came through the chart and runs the image the
//! node pulled from the cluster's registry. (The chart rendered and
//! linted without a cluster: chart.rs.)

use roar_node_tests::{chart::*, http_get, k8s::*};
use serde_json::Value;

/// On the local cluster: roar-node came through the chart, from the
/// cluster's registry, and the node pulled it.
#[test]
fn installed_release_runs_the_pulled_registry_image() {
    if !enabled() {
        return;
    }
    let kc = kubeconfig();
    let ds: Value = serde_json::from_str(&kubectl_ok(
        &kc,
        &[
            "-n",
            "roar-node",
            "get",
            "daemonset",
            "roar-node",
            "-o",
            "json",
        ],
        None,
    ))
    .unwrap();
    assert_eq!(
        ds["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
    assert_eq!(
        ds["metadata"]["annotations"]["meta.helm.sh/release-name"],
        "roar-node"
    );
    let image = container(&ds)["image"].as_str().unwrap().to_string();
    let (named, digest) = image.split_once('@').expect("pulled by digest");
    assert!(named.starts_with("127.0.0.1:5000/roar-node:"), "{image}");
    // The registry holds the version and commit tags.
    let (repo, tag) = named.rsplit_once(':').unwrap();
    let (code, body) = http_get("127.0.0.1:5000", &format!("/v2/{}/tags/list", &repo[15..]));
    assert_eq!(code, 200, "{body}");
    let tags: Value = serde_json::from_str(&body).unwrap();
    let listed: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&tag) && listed.contains(&workspace_version().as_str()),
        "{tags}"
    );
    // The running pod's image id is the registry's digest: containerd
    // pulled it from there.
    let pods: Value = serde_json::from_str(&kubectl_ok(
        &kc,
        &[
            "-n",
            "roar-node",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=roar-node",
            "-o",
            "json",
        ],
        None,
    ))
    .unwrap();
    let running: Vec<&Value> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    assert_eq!(running.len(), 1, "{pods:#}");
    let status = &running[0]["status"]["containerStatuses"][0];
    assert_eq!(
        status["imageID"],
        format!("127.0.0.1:5000/roar-node@{digest}"),
        "{status:#}"
    );
    assert_eq!(status["ready"], true, "{status:#}");
    assert_eq!(
        running[0]["spec"]["priorityClassName"],
        "system-node-critical"
    );
    // Rendered for this cluster (Kubernetes 1.20: a server-side dry run
    // under another release name), AppArmor is the annotation that
    // version reads, not the 1.30 field.
    let Some(mut h) = helm() else {
        return;
    };
    let out = h
        .env("KUBECONFIG", &kc)
        .arg("template")
        .arg(chart())
        .args(["--cluster", "--json", "--name", "roar-node-dry-run"])
        .args(["--set", "image.repository=x.example.com/roar-node"])
        .args(["--set", "securityModules.appArmorUnconfined=true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ds = kind(&objs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/roar-node"],
        "unconfined"
    );
    assert!(
        container(ds)["securityContext"]
            .get("appArmorProfile")
            .is_none()
    );
}
