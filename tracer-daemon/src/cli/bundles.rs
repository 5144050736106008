//! `roar-node bundles export`: print every finished bundle of a bundle
//! directory as one JSON object on stdout, `{"bundles": {name: bundle}}`,
//! so a collector can fetch them with `kubectl exec` from a DaemonSet pod
//! whose image has no shell or tar.

use std::{fs, path::PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

#[derive(Debug, Args)]
pub struct BundlesArgs {
    #[command(subcommand)]
    pub command: BundlesCommand,
}

#[derive(Debug, Subcommand)]
pub enum BundlesCommand {
    /// Print the bundles of --bundle-dir as one JSON object.
    Export {
        #[arg(
            long,
            default_value = "/var/lib/roar-node/bundles",
            env = "ROAR_NODE_BUNDLE_DIR"
        )]
        bundle_dir: PathBuf,
    },
}

pub fn bundles(args: BundlesArgs) -> anyhow::Result<i32> {
    let BundlesCommand::Export { bundle_dir } = args.command;
    let mut out = Map::new();
    let mut names: Vec<_> = fs::read_dir(&bundle_dir)
        .with_context(|| format!("{}", bundle_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // Only finished bundles: temporary files never match.
        .filter(|n| n.starts_with("roar-fragments-") && n.ends_with(".json"))
        .collect();
    names.sort();
    for name in names {
        let text = fs::read_to_string(bundle_dir.join(&name))?;
        let v: Value = serde_json::from_str(&text).with_context(|| name.clone())?;
        out.insert(name, v);
    }
    let mut doc = Map::new();
    doc.insert("bundles".into(), Value::Object(out));
    println!("{}", serde_json::to_string(&Value::Object(doc))?);
    Ok(0)
}
