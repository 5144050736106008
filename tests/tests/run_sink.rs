//! `roar-node run --sink s3://…` against a real S3 server (moto, over
//! HTTP on the loopback), `roar-node collect` from it, and roar-cli
//! ingesting what was collected.

use std::{fs, path::Path, process::Command};

use roar_node_tests::{s3::S3, *};
use serde_json::Value;

/// `roar-node ARGS` with the store's environment; (exit code, stderr).
fn roar_node(s3: &S3, dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .current_dir(dir)
        .args(args)
        .envs(s3.env())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `roar-node collect --from URL --out OUT ARGS`.
fn collect(s3: &S3, w: &Work, url: &str, out: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut a = vec!["collect", "--from", url, "--out", out.to_str().unwrap()];
    a.extend_from_slice(args);
    roar_node(s3, &w.dir, &a)
}

fn run_into(s3: &S3, w: &Work, url: &str, extra: &[&str], script: &str) -> String {
    let mut args = vec!["run", "--sink", url];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let (code, stderr) = roar_node(s3, &w.dir, &args);
    assert_eq!(code, Some(0), "{stderr}");
    stderr
}

/// The record lands under PREFIX/<namespace>/<workflow>/<task>.json
/// (`-` for none), with its marker in the workflow index; nothing is
/// written to the bundle directory.
#[test]
fn run_puts_its_record_into_the_bucket_under_the_layout() {
    let s3 = S3::start("records");
    let w = Work::new("sink-layout");
    w.write("in.txt", "hello\n");
    let said = run_into(
        &s3,
        &w,
        &s3.url("team/runs"),
        &["--workflow", "wf-7", "--bundle-dir", "unused"],
        "cat in.txt > out.txt",
    );
    let keys = s3.keys("team/runs/");
    assert_eq!(keys.len(), 2, "{keys:?}");
    let record_key = keys.iter().find(|k| k.ends_with(".json")).unwrap();
    let marker = keys.iter().find(|k| !k.ends_with(".json")).unwrap();
    let bundle: Value = serde_json::from_slice(&s3.get(record_key)).unwrap();
    let task_id = bundle["fragments"][0]["task_id"].as_str().unwrap();
    let encoded = task_id.replace(':', "=3A");
    assert_eq!(record_key, &format!("team/runs/-/wf-7/{encoded}.json"));
    assert_eq!(marker, &format!("team/runs/_by-workflow/wf-7/-/{encoded}"));
    assert!(
        said.contains(&format!("-> s3://records/team/runs/-/wf-7/{encoded}.json")),
        "{said}"
    );
    assert!(!w.path("unused").exists(), "the node keeps no copy");
    let writes = &bundle["fragments"][0]["writes"];
    assert!(
        writes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == w.s("out.txt")),
        "{writes}"
    );
}

/// Two runs of one workflow share a bucket; `roar-node collect
/// --workflow` brings exactly them back as bundle files, and roar's
/// database shows the edge between them.
#[test]
fn collect_then_ingest_shows_the_dag_edge() {
    let s3 = S3::start("lineage");
    let url = s3.url("p");
    let w = Work::new("sink-collect");
    w.write("data/raw.csv", "b,2\na,1\n");
    run_into(
        &s3,
        &w,
        &url,
        &["--workflow", "wf-a", "--name", "prepare"],
        "sort data/raw.csv > data/sorted.csv",
    );
    run_into(
        &s3,
        &w,
        &url,
        &["--workflow", "wf-a", "--name", "summarize"],
        "head -1 data/sorted.csv > data/top.csv",
    );
    run_into(
        &s3,
        &w,
        &url,
        &["--workflow", "wf-b", "--name", "other"],
        "cat data/raw.csv > data/copy.csv",
    );

    let out = w.path("collected");
    let (code, said) = collect(&s3, &w, &url, &out, &["--workflow", "wf-a"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("collected 2 records (2 tasks, 1 workflows,")
            && said.contains("roar k8s ingest-bundles"),
        "{said}"
    );
    let files: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");

    let roar = Roar::get();
    roar.init(&w.dir);
    let merged = roar.run(&w.dir, &["k8s", "ingest-bundles", out.to_str().unwrap()]);
    assert!(merged.contains("2 fragment(s) merged"), "{merged}");
    let sorted = w.s("data/sorted.csv");
    assert_eq!(
        roar.edges(&w.dir, "prepare", "summarize", Some(&sorted)),
        1,
        "no edge prepare -> summarize"
    );

    // --since in the future: nothing; an unknown workflow: said so.
    for (args, says) in [
        (
            vec!["--workflow", "wf-none"],
            "no records of workflow wf-none in s3://lineage/p",
        ),
        (
            vec!["--all", "--since", "2999-01-01T00:00:00Z"],
            "no records of any task",
        ),
    ] {
        let (code, said) = collect(&s3, &w, &url, &w.path("nothing"), &args);
        assert_eq!(code, Some(125), "{said}");
        assert!(
            said.contains(says) && said.trim().lines().count() == 1,
            "{said}"
        );
    }
    // --all: the three of them.
    let (code, said) = collect(&s3, &w, &url, &w.path("all"), &["--all"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("collected 3 records (3 tasks, 2 workflows,"),
        "{said}"
    );
}

/// The store unreachable: the command still runs (a warning first); if
/// the store still refuses at the end, the record is kept on disk, said
/// where, never lost, and roar-node exits 125 (as for a bundle directory
/// that refused it: the record is not where it was asked to go).
#[test]
fn store_down_keeps_the_record_in_the_fallback_directory() {
    let s3 = S3::start("down");
    s3.set_down(true);
    let w = Work::new("sink-down");
    let fallback = w.path("unsent");
    let out = Command::new(bin())
        .current_dir(&w.dir)
        .args([
            "run",
            "--sink",
            &s3.url("x"),
            "--fallback-dir",
            fallback.to_str().unwrap(),
        ])
        .args(["--", "sh", "-c", "echo ran > ran.txt"])
        .envs(s3.env())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{said}");
    assert!(w.path("ran.txt").exists(), "the command ran");
    assert!(said.contains("store unreachable"), "{said}");
    assert!(said.contains("it was kept in"), "{said}");
    let kept: Vec<_> = fs::read_dir(&fallback).unwrap().collect();
    assert_eq!(kept.len(), 1);
    s3.set_down(false);
    assert!(s3.keys("").is_empty());
}

/// Bad configuration stops `run` before the command, in one line: an
/// unknown scheme, a bucket that does not exist, no credentials.
#[test]
fn bad_configuration_is_one_line_before_the_command() {
    let s3 = S3::start("exists");
    let w = Work::new("sink-bad");
    let no_creds: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"))
        .collect();
    for (url, env, says) in [
        ("ftp://exists/x", s3.env(), "unknown scheme \"ftp\""),
        ("s3://no-such-bucket/x", s3.env(), "no such bucket"),
        ("s3://exists/x", no_creds, "no credentials"),
    ] {
        let out = Command::new(bin())
            .current_dir(&w.dir)
            .args(["run", "--sink", url, "--", "touch", "ran"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .envs(env)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{url}: {said}");
        assert!(said.contains(says), "{url}: {said}");
        assert_eq!(said.trim().lines().count(), 1, "{url}: one line: {said}");
        assert!(!said.contains("roar-test-secret"), "no secret in errors");
        assert!(!w.path("ran").exists(), "{url}: the command must not run");
    }
}
