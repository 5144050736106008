//! A file that cannot be read to the end never keeps a record from
//! arriving. The command reads three files of a FUSE mount that stops
//! answering (tests/fixtures/test_fuse.c `hang`: a file's second open, the
//! one roar-node hashes through, never gets its reads answered), more
//! files than roar-node has hashing threads, then reads and writes
//! ordinary files. The record must arrive with the ordinary files hashed
//! and the hung ones unhashed with the reason.

mod fuse;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fuse::TestFuse;
use roar_node_tests::*;
use serde_json::Value;

/// How long a record may take before the test says the pool stalled: a
/// liveness bound far above the one-second stall budget given to
/// roar-node, not a measure of speed.
const NO_RECORD_AFTER: Duration = Duration::from_secs(120);

/// The one bundle in `dir`, once it is there.
fn wait_for_bundle(dir: &Path) -> Option<Value> {
    let t0 = Instant::now();
    while t0.elapsed() < NO_RECORD_AFTER {
        let done = fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "json"))
        });
        if let Some(p) = done {
            return Some(serde_json::from_slice(&fs::read(p).unwrap()).unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_hung_fuse_mount_leaves_files_unhashed_and_the_record_arrives() {
    let w = Work::new("hung-fuse");
    let mut mnt = TestFuse::mount(&w, "hang", "f", 3);
    w.write("a.txt", "ordinary input\n");
    let bundles = w.path("bundles");
    let hung: Vec<String> = (0..3).map(|i| mnt.s(&format!("f{i:06}"))).collect();
    let script = format!("cat {} > /dev/null && cat a.txt > out.txt", hung.join(" "));
    let stderr = fs::File::create(w.path("roar-node.stderr")).unwrap();
    let mut roar_node = Command::new(bin())
        .current_dir(&w.dir)
        // The stall budget from the environment (--hash-stall-secs): a
        // roar-node without budgets ignores it, and this test shows it
        // stalls.
        .env("ROAR_NODE_HASH_STALL_SECS", "1")
        .args(["run", "--bundle-dir"])
        .arg(&bundles)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    // The settle point: the record is written. (roar-node itself may not
    // exit before the mount is aborted: its abandoned hashing threads are
    // still blocked in the kernel.)
    let bundle = wait_for_bundle(&bundles);
    mnt.abort();
    let status = roar_node.wait().unwrap();
    let said = fs::read_to_string(w.path("roar-node.stderr")).unwrap();
    let bundle = bundle.unwrap_or_else(|| {
        panic!("no record {NO_RECORD_AFTER:?} after: the hashing pool stalled on the hung mount\n{said}")
    });
    assert!(status.success(), "{status}: {said}");
    let f = &bundle["fragments"][0];
    let md = &f["backend_metadata"];
    let find = |list: &str, path: &str| {
        f[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} not in {list}: {f}"))
    };
    // The ordinary files are hashed, after more hung files than workers.
    assert_eq!(
        find("reads", &w.s("a.txt"))["hash"],
        blake3_file(w.path("a.txt"))
    );
    assert_eq!(
        find("writes", &w.s("out.txt"))["hash"],
        blake3_file(w.path("out.txt"))
    );
    // The hung ones are inputs without a hash, each with the reason.
    for path in &hung {
        assert!(find("reads", path)["hash"].is_null(), "{path}");
        let why = md["unhashed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["path"] == path.as_str())
            .unwrap_or_else(|| panic!("{path} not in unhashed: {md}"));
        let reason = why["reason"].as_str().unwrap();
        assert!(
            reason.contains("did not answer") || reason.contains("stopped answering"),
            "{reason}"
        );
    }
    assert_eq!(md["capture"]["unhashed_over_budget"], 3, "{md}");
    assert!(said.contains("hashing thread abandoned"), "{said}");
}
