//! The Helm chart (deploy/chart/roar-node), rendered and linted by a real
//! Helm (v4, embedded by helm-python-sdk; xtask/helm.py): its values reach
//! the DaemonSet, bad values fail in one line, its default rendering is the
//! kustomize base's DaemonSet (so the two cannot drift apart). The
//! release installed on the local cluster: k8s_chart.rs.

use std::{fs, path::PathBuf, process::Command};

use roar_node_tests::{chart::*, k8s::*, workspace};
use serde_json::{Value, json};

/// `helm.py template` with `--set`s; the objects, or None if no Helm.
fn render(sets: &[&str]) -> Option<Vec<Value>> {
    let mut h = helm()?;
    h.arg("template").arg(chart()).arg("--json");
    for s in sets {
        h.args(["--set", s]);
    }
    let out = h.output().unwrap();
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn env<'a>(ds: &'a Value, name: &str) -> Option<&'a Value> {
    container(ds)["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| &e["value"])
}

#[test]
fn lint_is_clean() {
    let Some(mut h) = helm() else {
        return;
    };
    let out = h
        .arg("lint")
        .arg(chart())
        .args(["--set", "image.repository=registry.example.com/roar-node"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("no problems"), "{said}");
}

#[test]
fn versions_agree() {
    let v = workspace_version();
    let chart_yaml = fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    assert!(
        chart_yaml.contains(&format!("\nversion: {v}\n")),
        "{chart_yaml}"
    );
    assert!(chart_yaml.contains(&format!("\nappVersion: \"{v}\"\n")));
    let base = fs::read_to_string(workspace().join("deploy/base/daemonset.yaml")).unwrap();
    assert!(base.contains(&format!("image: roar-node:{v}\n")), "{base}");
}

/// The chart's default rendering and `kubectl kustomize deploy/` (what
/// `kubectl apply -k deploy/` applies) give the same DaemonSet spec, the
/// same policy ConfigMap data and the same RBAC rules.
#[test]
fn default_rendering_is_the_kustomize_base() {
    let Some(chart) = render(&["image.repository=roar-node"]) else {
        return;
    };
    let kubectl = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/k8s-local/bin/kubectl")
        });
    if !kubectl.exists() {
        skip(&format!(
            "no kubectl at {} (cargo xtask cluster up builds it)",
            kubectl.display()
        ));
        return;
    }
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(workspace().join("deploy"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kust = yaml_objects(helm().unwrap(), &String::from_utf8_lossy(&out.stdout));
    let (a, b) = (kind(&chart, "DaemonSet"), kind(&kust, "DaemonSet"));
    assert_eq!(
        a["spec"], b["spec"],
        "the chart's DaemonSet spec drifted from deploy/base:\nchart: {:#}\nkustomize: {:#}",
        a["spec"], b["spec"]
    );
    assert_eq!(a["metadata"]["name"], b["metadata"]["name"]);
    assert_eq!(a["metadata"]["namespace"], b["metadata"]["namespace"]);
    let (a, b) = (kind(&chart, "ConfigMap"), kind(&kust, "ConfigMap"));
    assert_eq!(a["data"], b["data"]);
    assert_eq!(a["metadata"]["name"], b["metadata"]["name"]);
    assert_eq!(
        kind(&chart, "ClusterRole")["rules"],
        kind(&kust, "ClusterRole")["rules"]
    );
    assert_eq!(
        kind(&chart, "ClusterRoleBinding")["subjects"],
        kind(&kust, "ClusterRoleBinding")["subjects"]
    );
}

#[test]
fn values_reach_the_daemonset() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let sets = [
        "image.repository=registry.example.com/team/roar-node".to_string(),
        "image.tag=0.1.0-gabc".to_string(),
        format!("image.digest={digest}"),
        "image.pullPolicy=Always".to_string(),
        "image.pullSecrets[0].name=regcred".to_string(),
        "nodeSelector.kubernetes\\.io/arch=arm64".to_string(),
        "tolerations[0].key=nvidia.com/gpu".to_string(),
        "tolerations[0].operator=Exists".to_string(),
        "priorityClassName=roar-critical".to_string(),
        "resources.limits.memory=2Gi".to_string(),
        "updateStrategy.type=OnDelete".to_string(),
        "policy.namespaces={ml,train}".to_string(),
        "policy.selectors[0]=team=a\\,tier!=x".to_string(),
        "policy.selectors[1]=app=b".to_string(),
        "policy.presets={osmo}".to_string(),
        "sinks.stateDir=/data/roar-node".to_string(),
        "daemon.maxFilesTotal=900000".to_string(),
        "daemon.pinDir=".to_string(),
        "metrics.port=9555".to_string(),
        "metrics.podMonitor.enabled=true".to_string(),
        "metrics.serviceMonitor.enabled=true".to_string(),
        "metrics.serviceMonitor.labels.release=prometheus".to_string(),
        "securityModules.appArmorUnconfined=true".to_string(),
        "securityModules.seLinuxSpcT=true".to_string(),
        "hostNetwork=true".to_string(),
        "extraEnv[0].name=HTTPS_PROXY".to_string(),
        "extraEnv[0].value=http://proxy:3128".to_string(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let Some(objs) = render(&sets) else {
        return;
    };
    let ds = kind(&objs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(ds);
    assert_eq!(
        c["image"],
        format!("registry.example.com/team/roar-node:0.1.0-gabc@{digest}")
    );
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(
        pod["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"})
    );
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "nvidia.com/gpu", "operator": "Exists"}])
    );
    assert_eq!(pod["priorityClassName"], "roar-critical");
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(c["resources"]["limits"]["memory"], "2Gi");
    assert_eq!(c["resources"]["requests"]["memory"], "128Mi");
    assert_eq!(ds["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
    let cm = kind(&objs, "ConfigMap");
    assert_eq!(
        cm["data"],
        json!({"namespaces": "ml,train", "selectors": "team=a,tier!=x;app=b", "presets": "osmo"})
    );
    let state = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .unwrap();
    assert_eq!(state["hostPath"]["path"], "/data/roar-node");
    assert_eq!(env(ds, "ROAR_NODE_MAX_FILES_TOTAL"), Some(&json!("900000")));
    assert_eq!(env(ds, "ROAR_NODE_PIN_DIR"), None);
    assert_eq!(
        env(ds, "ROAR_NODE_METRICS_ADDR"),
        Some(&json!("0.0.0.0:9555"))
    );
    assert_eq!(env(ds, "HTTPS_PROXY"), Some(&json!("http://proxy:3128")));
    assert_eq!(c["ports"][0]["containerPort"], 9555);
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "9555"
    );
    // Offline, Helm assumes a recent Kubernetes: the AppArmor field.
    assert_eq!(
        c["securityContext"]["appArmorProfile"],
        json!({"type": "Unconfined"})
    );
    assert_eq!(
        c["securityContext"]["seLinuxOptions"],
        json!({"type": "spc_t"})
    );
    let pm = kind(&objs, "PodMonitor");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"],
        ds["spec"]["selector"]["matchLabels"]
    );
    let sm = kind(&objs, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    let svc = kind(&objs, "Service");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9555);
    assert_eq!(
        svc["spec"]["selector"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
}

/// The object-store sink: URL, settings and budgets as the daemon's
/// variables, credentials from a Secret (envFrom, never a value in the
/// chart), a cloud identity on the ServiceAccount; none of it by default.
#[test]
fn sink_values_reach_the_daemonset() {
    let Some(objs) = render(&[
        "image.repository=r.example.com/roar-node",
        "sinks.url=s3://records/cluster-a",
        "sinks.credentialsSecret=roar-node-s3",
        "sinks.env.AWS_REGION=eu-west-1",
        "sinks.env.AWS_ENDPOINT_URL=https://minio.example.com",
        "sinks.spoolMaxBytes=4GiB",
        "sinks.keepLocalBytes=100MiB",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/roar",
    ]) else {
        return;
    };
    let ds = kind(&objs, "DaemonSet");
    assert_eq!(
        env(ds, "ROAR_NODE_SINK"),
        Some(&json!("s3://records/cluster-a"))
    );
    assert_eq!(env(ds, "AWS_REGION"), Some(&json!("eu-west-1")));
    assert_eq!(
        env(ds, "AWS_ENDPOINT_URL"),
        Some(&json!("https://minio.example.com"))
    );
    assert_eq!(env(ds, "ROAR_NODE_SPOOL_MAX_BYTES"), Some(&json!("4GiB")));
    assert_eq!(
        env(ds, "ROAR_NODE_KEEP_LOCAL_BYTES"),
        Some(&json!("100MiB"))
    );
    assert_eq!(
        container(ds)["envFrom"],
        json!([{"secretRef": {"name": "roar-node-s3"}}])
    );
    let sa = kind(&objs, "ServiceAccount");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::1:role/roar"
    );
    let Some(plain) = render(&["image.repository=r.example.com/roar-node"]) else {
        return;
    };
    let ds = kind(&plain, "DaemonSet");
    assert_eq!(env(ds, "ROAR_NODE_SINK"), None);
    assert!(container(ds).get("envFrom").is_none());
}

/// Off by default: no monitor objects (their CRDs may not exist), no LSM
/// exceptions.
#[test]
fn defaults_add_nothing_optional() {
    let Some(objs) = render(&["image.repository=r.example.com/roar-node"]) else {
        return;
    };
    let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    for k in ["PodMonitor", "ServiceMonitor", "Service", "Namespace"] {
        assert!(!kinds.contains(&k), "{kinds:?}");
    }
    let ds = kind(&objs, "DaemonSet");
    let sc = &container(ds)["securityContext"];
    assert!(sc.get("appArmorProfile").is_none() && sc.get("seLinuxOptions").is_none());
    assert_eq!(
        container(ds)["image"],
        format!("r.example.com/roar-node:{}", workspace_version())
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["priorityClassName"],
        "system-node-critical"
    );
}

#[test]
fn bad_values_fail_in_one_line() {
    for (sets, says) in [
        (vec![], "image.repository is required"),
        (
            vec!["image.repository=r.example.com/x", "image.digest=sha256:12"],
            "/image/digest",
        ),
        (
            vec!["image.repository=r.example.com/x", "nodeselector.a=b"],
            "nodeselector",
        ),
        (
            vec!["image.repository=r.example.com/x", "policy.presets={osmoo}"],
            "/policy/presets",
        ),
        (
            vec!["image.repository=r.example.com/x", "metrics.port=http"],
            "/metrics/port",
        ),
        (
            vec!["image.repository=r.example.com/x", "sinks.url=ftp://b/p"],
            "/sinks/url",
        ),
    ] {
        let Some(mut h) = helm() else {
            return;
        };
        h.arg("template").arg(chart());
        for s in &sets {
            h.args(["--set", s]);
        }
        let out = h.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sets:?} rendered");
        assert!(err.contains(says), "{sets:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{sets:?}: {err}");
    }
}
