//! The README's first command: trace a two-step pipeline with
//! `roar-node run`, show a bundle, and let roar draw the lineage graph.

use std::{fs, process::Command};

use anyhow::Context;

use crate::util::{self, build_release, root};

#[derive(clap::Args)]
pub struct Args {}

pub fn run_demo() -> anyhow::Result<()> {
    let bin = build_release()?;
    let dir = root().join("target/demo");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("data"))?;
    fs::write(
        dir.join("data/words.txt"),
        "roar\nnode\nebpf\nroar\nlineage\nroar\nnode\n",
    )?;
    let bundles = dir.join("bundles");
    let steps = [
        ("count", "sort data/words.txt | uniq -c > data/counts.txt"),
        ("top", "sort -rn data/counts.txt | head -2 > data/top.txt"),
    ];
    for (name, script) in steps {
        eprintln!("\n== step {name}: roar-node run -- sh -c '{script}'");
        util::run(
            Command::new(&bin)
                .current_dir(&dir)
                .args(["run", "--name", name, "--bundle-dir"])
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
    eprintln!(
        "\nThe demo lives in {}; run `roar dag` there to see the graph again.",
        dir.display()
    );
    Ok(())
}

pub fn run(_: Args) -> anyhow::Result<()> {
    run_demo()
}
