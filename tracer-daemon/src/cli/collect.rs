//! `roar-node collect`: arguments, and the closing summary.

use std::{path::PathBuf, time::SystemTime};

use anyhow::bail;
use clap::Args;

use crate::collect::{self, Query, Source, cluster_source};

#[derive(Debug, Args)]
pub(crate) struct CollectArgs {
    /// Where the records are: the store the daemons deliver to
    /// (`s3://BUCKET/PREFIX`, `gs://…`, `az://…`, `file:///DIR`; the
    /// cloud's standard credentials), or `cluster`: the daemons' bundle
    /// directories, through the API server with your kubeconfig.
    #[arg(long, value_name = "URL|cluster")]
    from: String,
    /// The OSMO workflow (its `osmo.workflow_id`).
    #[arg(long, value_name = "WF_ID")]
    workflow: Option<String>,
    /// Only tasks of pods in this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only records stored since: a time ago (`2h`, `3d`) or a time
    /// (`2026-05-01T12:00:00Z`).
    #[arg(long, value_parser = parse_since)]
    since: Option<SystemTime>,
    /// Every record (neither --workflow nor --namespace).
    #[arg(long)]
    all: bool,
    /// The directory the bundles are written to (then: `roar k8s
    /// ingest-bundles DIR`).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// With `--from cluster`: a kubeconfig (default: KUBECONFIG, then
    /// ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// With `--from cluster`: the daemons' namespace.
    #[arg(long, default_value = "roar-node")]
    daemon_namespace: String,
    /// With `--from cluster`: the daemons' pod label selector.
    #[arg(long, default_value = "app.kubernetes.io/name=roar-node")]
    daemon_selector: String,
    /// No progress lines, only the summary and errors.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_since(s: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(s) {
        return Ok(SystemTime::now() - ago);
    }
    humantime::parse_rfc3339_weak(s).map_err(|e| {
        format!("{s:?}: neither a duration (2h) nor a time (2026-05-01T12:00:00Z): {e}")
    })
}

pub(super) async fn run(args: CollectArgs) -> anyhow::Result<i32> {
    if args.all == (args.workflow.is_some() || args.namespace.is_some()) {
        bail!("say what to collect: --workflow WF_ID and/or --namespace NS, or --all");
    }
    let source = if args.from == "cluster" {
        cluster_source(args.kubeconfig, args.daemon_namespace, args.daemon_selector)
    } else {
        Source::Store(args.from)
    };
    let query = Query {
        workflow: args.workflow,
        namespace: args.namespace,
        since: args.since.map(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        }),
    };
    let summary = collect::collect(source, query, args.out.clone(), args.quiet).await?;
    eprintln!("{}", summary.line(&args.out));
    Ok(0)
}
