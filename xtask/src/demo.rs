//! The README's first command: trace a two-step pipeline with
//! `roar-node run`, show a bundle, let roar draw the lineage graph, and
//! fail unless roar's graph has the edge the README shows (the hash the
//! first step wrote is the hash the second read).
//!
//! It works wherever the checkout is: roar (and so roar-node, by default)
//! leaves files under `/tmp` out of records, and system prefixes such as
//! `/opt` or `/usr` out of reads; the demo keeps its own directory in
//! (`--keep-path`), whatever that directory is.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, bail};

use crate::util::{self, build_release, roar_venv, root};

#[derive(clap::Args)]
pub struct Args {
    /// Where the demo runs (made afresh; default: target/demo in the
    /// checkout).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Tests only: leave the demo's directory to roar's default filters
    /// (under /tmp that loses the edge, and the demo must say so).
    #[arg(long, hide = true)]
    pub no_keep: bool,
}

/// The two steps: the second reads what the first wrote.
const STEPS: [(&str, &str); 2] = [
    ("count", "sort data/words.txt | uniq -c > data/counts.txt"),
    ("top", "sort -rn data/counts.txt | head -2 > data/top.txt"),
];

pub fn run_demo(dir: PathBuf, keep_dir: bool) -> anyhow::Result<()> {
    let bin = build_release()?;
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("data"))?;
    // Records name files by their resolved path.
    let dir = fs::canonicalize(&dir)?;
    fs::write(
        dir.join("data/words.txt"),
        "roar\nnode\nebpf\nroar\nlineage\nroar\nnode\n",
    )?;
    let bundles = dir.join("bundles");
    let keep = format!("{}/", dir.display());
    for (name, script) in STEPS {
        eprintln!("\n== step {name}: roar-node run -- sh -c '{script}'");
        let mut cmd = Command::new(&bin);
        cmd.current_dir(&dir).args(["run", "--name", name]);
        if keep_dir {
            cmd.args(["--keep-path", &keep]);
        }
        util::run(
            cmd.arg("--bundle-dir")
                .arg(&bundles)
                .args(["--", "sh", "-c", script]),
        )?;
    }
    let mut names: Vec<_> = fs::read_dir(&bundles)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    names.sort();
    let first = names.first().context("no bundle was written")?;
    eprintln!(
        "\n== {} bundles in {}; the first one:",
        names.len(),
        bundles.display()
    );
    println!("{}", fs::read_to_string(first)?);

    eprintln!("\n== roar k8s ingest-bundles, then roar dag (roar-cli 0.4.7)");
    util::roar_graph(&dir, &bundles)?;
    check_edge(&dir)?;
    eprintln!(
        "\nThe demo lives in {}; run `roar dag` there to see the graph again.",
        dir.display()
    );
    Ok(())
}

/// The edge the README shows, from roar's own database: an artifact the
/// first step wrote that the second read.
fn check_edge(dir: &std::path::Path) -> anyhow::Result<()> {
    let sql = format!(
        "select count(*) from jobs j1 join job_outputs o on o.job_id = j1.id \
         join job_inputs i on i.artifact_id = o.artifact_id join jobs j2 on i.job_id = j2.id \
         where j1.command = 'k8s_task:{}' and j2.command = 'k8s_task:{}'",
        STEPS[0].0, STEPS[1].0
    );
    let script = "import sqlite3,sys\nprint(sqlite3.connect('.roar/roar.db').execute(sys.argv[1]).fetchone()[0])";
    let out = util::output(
        Command::new(roar_venv()?.join("bin/python"))
            .current_dir(dir)
            .args(["-c", script, &sql]),
    )
    .context("reading roar's database")?;
    let edges: u64 = out.trim().parse().context("roar's database")?;
    if edges == 0 {
        bail!(
            "roar's graph has no edge {} -> {}: the first step's output is not the second's input \
             (look at the bundles in {}: a step with 0 writes or 0 reads is the one to explain)",
            STEPS[0].0,
            STEPS[1].0,
            dir.join("bundles").display()
        );
    }
    eprintln!(
        "\n== roar's graph has the edge {} -> {}",
        STEPS[0].0, STEPS[1].0
    );
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| root().join("target/demo"));
    run_demo(dir, !args.no_keep)
}
