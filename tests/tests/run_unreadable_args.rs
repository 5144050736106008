//! A syscall's user-memory argument can be gone by the time the tracer
//! reads it at syscall exit (reclaimed, or unmapped by another thread).
//! tests/fixtures/argument_race.c makes that happen on every call: the
//! calls run on a slow FUSE mount (each lookup takes 20 ms) while another
//! thread drops the page holding the argument. The record must say the
//! name (or the open flags) could not be read, and must not guess: no
//! working directory "unlinked" or "renamed", no truncated file taken for
//! an input.

mod fuse;

use std::collections::BTreeSet;

use fuse::TestFuse;
use roar_node_tests::*;
use serde_json::{Value, json};

const FILES: usize = 3;

/// Runs argument_race `mode` on a fresh slow mount, traced.
fn race(name: &str, mode: &str, prefix: &str) -> (Work, TestFuse, Traced) {
    let w = Work::new(name);
    let fs = TestFuse::mount(&w, "slow", prefix, FILES);
    let src = include_str!("../fixtures/argument_race.c");
    let exe = compile_c(&w, "argument_race", src, &["-pthread"]);
    let dir = fs.dir.to_str().unwrap().to_string();
    let t = w
        .trace(&[exe.to_str().unwrap(), mode, &FILES.to_string(), &dir])
        .ok();
    (w, fs, t)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The inexact entries with `problem`, and every one of them is partial
/// and counted.
fn unreadable_names(t: &Traced) -> Vec<Value> {
    let md = t.md();
    let found: Vec<Value> = md["inexact_paths"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e["problems"]
                .as_array()
                .unwrap()
                .contains(&json!("argument_unreadable"))
        })
        .collect();
    assert!(!found.is_empty(), "no argument was unreadable: {md}");
    for e in &found {
        assert!(e["path"].as_str().unwrap().starts_with('…'), "{e}");
    }
    assert_eq!(md["capture"]["partial"], true, "{md}");
    assert!(md["capture"]["inexact_events"].as_u64() >= Some(1), "{md}");
    assert!(
        md["kernel_counters"]["lost_path_inexact"].as_u64() >= Some(1),
        "{md}"
    );
    found
}

#[test]
fn an_unlink_whose_name_cannot_be_read_removes_nothing_else() {
    let (w, fs, t) = race("unlink-race", "unlink", "f");
    // Only names the task unlinked, and only those read exactly: never
    // the directory it worked in (what the kernel sent instead before).
    let mut allowed: BTreeSet<String> = (0..FILES).map(|i| fs.s(&format!("f{i:06}"))).collect();
    let deleted = strings(&t.md()["deleted"]);
    for d in &deleted {
        assert!(allowed.remove(d), "{d} reported deleted: {deleted:?}");
    }
    assert!(!deleted.contains(&w.s("")));
    let noted = unreadable_names(&t);
    assert!(
        noted.iter().all(|e| e["roles"] == json!(["removed"])),
        "{noted:?}"
    );
}

#[test]
fn a_rename_whose_old_name_cannot_be_read_moves_nothing_else() {
    let (_w, fs, t) = race("rename-race", "rename", "f");
    // Every new name holds its content, hashed, whatever the old name was.
    let mut writes = t.write_paths();
    writes.sort();
    let want: Vec<String> = (0..FILES).map(|i| fs.s(&format!("g{i:06}"))).collect();
    assert_eq!(writes, want, "{}", t.md());
    for i in 0..FILES {
        let g = t.write(&fs.s(&format!("g{i:06}"))).unwrap();
        assert_eq!(g["hash"], blake3_bytes(format!("old-{i:06}\n").as_bytes()));
    }
    // No output moved under another name by a guessed directory rename.
    for d in strings(&t.md()["deleted"]) {
        assert!(d.starts_with(&fs.s("f")), "{d}");
    }
    unreadable_names(&t);
}

#[test]
fn an_open_whose_flags_cannot_be_read_claims_no_input() {
    let (_w, fs, t) = race("openat2-race", "openat2", "h");
    let md = t.md();
    // A file the open truncated held nothing the task read: it must not be
    // an input (the old record hashed its new content as one). It is an
    // output with its final content, and named as a maybe-input.
    let maybe = strings(&md["maybe_inputs"]);
    for i in 0..FILES {
        let h = fs.s(&format!("h{i:06}"));
        let truncated = t
            .write(&h)
            .is_some_and(|o| o["hash"] == blake3_bytes(format!("new-{i:06}\n").as_bytes()));
        if truncated {
            assert!(t.read(&h).is_none(), "{h} truncated, reported read: {md}");
        }
        if maybe.contains(&h) {
            assert!(t.read(&h).is_none(), "{h}: {md}");
        }
    }
    assert!(!maybe.is_empty(), "{md}");
    assert!(
        md["capture"]["unreadable_fields"]["open_flags"].as_u64() >= Some(1),
        "{md}"
    );
    assert!(
        md["kernel_counters"]["lost_field_unreadable"].as_u64() >= Some(1),
        "{md}"
    );
    assert_eq!(md["capture"]["partial"], true, "{md}");
    assert!(
        md["capture"]["partial_reason"]
            .as_str()
            .unwrap()
            .contains("could not be read")
    );
}
