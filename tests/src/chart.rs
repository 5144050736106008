//! The Helm chart's place and the parts of its rendering that the chart
//! tests (chart.rs, and k8s_chart.rs on the cluster) look at.

use std::{fs, path::PathBuf};

use serde_json::Value;

use crate::workspace;

/// The chart's directory.
pub fn chart() -> PathBuf {
    workspace().join("deploy/chart/roar-node")
}

/// The one object of `kind` among `objs`.
pub fn kind<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let m: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(m.len(), 1, "one {kind}: {objs:#?}");
    m[0]
}

/// The DaemonSet's (the daemon's) container.
pub fn container(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]["containers"][0]
}

/// The workspace's version (Cargo.toml), which the chart and image carry.
pub fn workspace_version() -> String {
    let toml = fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let pkg = toml.split_once("[workspace.package]").unwrap().1;
    pkg.lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}
