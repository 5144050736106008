//! The README's first command, `cargo xtask demo`, from a directory under
//! /tmp (where roar leaves writes out of records by default, as a checkout
//! under /tmp would put it): the graph roar draws has the edge the README
//! shows, read back from roar's database; and when it cannot have it (the
//! demo's directory left to roar's filters) the demo fails, saying so.

use std::process::{Command, Output};

use roar_node_tests::*;

fn demo(dir: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO"))
        .current_dir(workspace())
        .env("ROAR_VENV", Roar::get().venv)
        .args(["run", "--quiet", "-p", "xtask", "--", "demo", "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_demo_works_under_tmp_and_fails_without_its_edge() {
    let dir = std::path::PathBuf::from(format!("/tmp/roar-node-demo-test-{}", std::process::id()));
    let out = demo(&dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("roar's graph has the edge count -> top"),
        "{err}"
    );
    let count = std::fs::read_dir(dir.join("bundles"))
        .unwrap()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.unwrap().path()).unwrap())
                .unwrap()
        })
        .find(|b| b["fragments"][0]["task_name"] == "count")
        .expect("the first step's bundle");
    let writes = count["fragments"][0]["writes"].as_array().unwrap();
    assert_eq!(writes.len(), 1, "{count}");
    assert_eq!(
        writes[0]["path"],
        format!("{}/data/counts.txt", dir.display())
    );

    let out = demo(&dir, &["--no-keep"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("has no edge count -> top"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
