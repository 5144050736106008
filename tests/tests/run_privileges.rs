//! Least privilege, proved: `roar-node run` works with exactly the
//! capabilities the README lists (and nothing else, under capsh with every
//! other capability dropped from the bounding set): CAP_BPF and CAP_PERFMON
//! to trace, CAP_DAC_READ_SEARCH to hash any file, CAP_SYS_ADMIN and
//! CAP_SYS_CHROOT to hash from a task's own mount namespace. It refuses to
//! start without each required one, and records files it could not read
//! instead of dropping them.

use std::process::{Command, Output};

use roar_node_tests::*;

/// Load and attach. (CAP_SYS_ADMIN would stand in for both: the kernel's
/// bpf_capable() and perfmon_capable() accept it.)
const REQUIRED: &[&str] = &["cap_bpf", "cap_perfmon"];
/// Not required to start; needed to hash files the task made unreadable
/// to their owner (and, in the daemon, other users' files).
const HASH_ANY_FILE: &str = "cap_dac_read_search";

fn all_caps() -> Vec<String> {
    let out = Command::new("capsh")
        .arg("--print")
        .output()
        .expect("capsh (libcap2-bin)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .expect("capsh --print shows the bounding set");
    line.split(',').map(|c| c.trim().to_string()).collect()
}

/// Runs `roar-node run ... -- sh -c script` with only `keep` capabilities.
fn run_with_caps(w: &Work, keep: &[&str], bundles: &str, script: &str) -> Output {
    let drop: Vec<String> = all_caps()
        .into_iter()
        .filter(|c| !keep.contains(&c.as_str()))
        .collect();
    let inner = format!(
        "exec {} run --bundle-dir {} -- sh -c '{script}'",
        bin().display(),
        w.s(bundles)
    );
    Command::new("capsh")
        .current_dir(w.path(""))
        .arg(format!("--drop={}", drop.join(",")))
        .args(["--", "-c", &inner])
        .output()
        .unwrap()
}

fn only_bundle(w: &Work, dir: &str) -> serde_json::Value {
    let entries: Vec<_> = std::fs::read_dir(w.path(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&entries[0]).unwrap()).unwrap();
    b["fragments"][0].clone()
}

/// The task writes a file and then makes it unreadable even to its owner.
const SCRIPT: &str = "cat in.txt > out.bin && chmod 000 out.bin";

#[test]
fn runs_with_exactly_the_documented_capabilities() {
    let w = Work::new("caps-exact");
    w.write("in.txt", "input\n");
    let mut keep = REQUIRED.to_vec();
    keep.push(HASH_ANY_FILE);
    let out = run_with_caps(&w, &keep, "b", SCRIPT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = only_bundle(&w, "b");
    assert_eq!(f["reads"][0]["hash"], blake3_bytes(b"input\n"), "{f}");
    assert_eq!(f["writes"][0]["path"], w.s("out.bin"));
    assert_eq!(f["writes"][0]["hash"], blake3_bytes(b"input\n"), "{f}");
    assert_eq!(f["backend_metadata"]["capture"]["events_lost"], 0);
}

#[test]
fn without_dac_read_search_an_unreadable_output_is_recorded_with_the_reason() {
    let w = Work::new("caps-nodac");
    w.write("in.txt", "input\n");
    let out = run_with_caps(&w, REQUIRED, "b", SCRIPT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = only_bundle(&w, "b");
    let md = &f["backend_metadata"];
    assert_eq!(f["writes"][0]["path"], w.s("out.bin"), "{f}");
    assert!(f["writes"][0]["hash"].is_null(), "{f}");
    let why = md["unhashed"][0]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("ermission denied"), "{md}");
}

#[test]
fn each_required_capability_is_checked_before_the_command_runs() {
    for missing in REQUIRED {
        let w = Work::new(&format!("caps-no-{missing}"));
        let keep: Vec<&str> = REQUIRED.iter().copied().filter(|c| c != missing).collect();
        let out = run_with_caps(&w, &keep, "b", "touch ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{missing}: {stderr}");
        let name = missing.trim_start_matches("cap_").to_uppercase();
        assert!(
            stderr.contains(&format!("CAP_{name}")),
            "{missing}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            !w.path("ran").exists(),
            "{missing}: the command must not run"
        );
    }
}

#[test]
fn cap_sys_admin_alone_stands_in_for_bpf_and_perfmon() {
    let w = Work::new("caps-admin-only");
    w.write("in.txt", "input\n");
    let out = run_with_caps(&w, &["cap_sys_admin"], "b", "cat in.txt > out.bin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = only_bundle(&w, "b");
    assert_eq!(f["writes"][0]["hash"], blake3_bytes(b"input\n"), "{f}");
}

/// Outputs visible only in the task's own mount namespace: hashing them
/// means `setns`, which needs CAP_SYS_CHROOT besides CAP_SYS_ADMIN.
/// (The namespace lives 0.3 s: roar-node holds a namespace when it sees an
/// exec in it, which a loaded 2-core machine can delay past the end of a
/// process that lives a few milliseconds; the README says so.)
const PRIVATE_NS: &str = "unshare -m --propagation private sh -c \"mount -t tmpfs v vol && echo private > vol/out.bin && sleep 0.3\"";

#[test]
fn hashing_in_a_task_mount_namespace_needs_sys_chroot() {
    let w = Work::new("caps-chroot");
    std::fs::create_dir_all(w.path("vol")).unwrap();
    let mut keep = REQUIRED.to_vec();
    keep.extend([HASH_ANY_FILE, "cap_sys_admin", "cap_sys_chroot"]);
    let out = run_with_caps(&w, &keep, "with", PRIVATE_NS);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = only_bundle(&w, "with");
    assert_eq!(f["writes"][0]["path"], w.s("vol/out.bin"), "{f}");
    assert_eq!(f["writes"][0]["hash"], blake3_bytes(b"private\n"), "{f}");

    keep.pop();
    let out = run_with_caps(&w, &keep, "without", PRIVATE_NS);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("CAP_SYS_CHROOT"), "warned: {stderr}");
    let f = only_bundle(&w, "without");
    let md = &f["backend_metadata"];
    // Listed, not hashed in the wrong namespace, not called deleted.
    assert_eq!(f["writes"][0]["path"], w.s("vol/out.bin"), "{f}");
    assert!(f["writes"][0]["hash"].is_null(), "{f}");
    assert_eq!(md["deleted"], serde_json::json!([]), "{md}");
    assert!(
        !md["unhashed"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{md}"
    );
}
