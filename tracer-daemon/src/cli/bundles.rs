//! `roar-node bundles export`: print every finished bundle of a bundle
//! directory as one JSON object on stdout (for collectors).

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub(crate) struct BundlesArgs {
    #[command(subcommand)]
    command: BundlesCommand,
}

#[derive(Debug, Subcommand)]
enum BundlesCommand {
    /// Print the bundles of --bundle-dir as one JSON object,
    /// `{"bundles": {name: bundle}}`.
    Export {
        #[arg(
            long,
            default_value = "/var/lib/roar-node/bundles",
            env = "ROAR_NODE_BUNDLE_DIR"
        )]
        bundle_dir: PathBuf,
    },
}

pub(super) fn run(args: BundlesArgs) -> anyhow::Result<i32> {
    let BundlesCommand::Export { bundle_dir } = args.command;
    let doc = crate::sinks::bundle::export(&bundle_dir)?;
    println!("{}", serde_json::to_string(&doc)?);
    Ok(0)
}
