//! Bad input to `roar-node run` gets a clear error or a flagged record and
//! loses nothing: huge argv, 4 KiB paths, a bundle directory that is full or
//! read-only.

use std::{fs, path::PathBuf, process::Command};

use roar_node_tests::*;

#[test]
fn one_mib_argv_is_truncated_and_flagged() {
    let w = Work::new("huge-argv");
    let arg = "a".repeat(64 * 1024);
    let mut cmd: Vec<&str> = vec!["/bin/echo"];
    cmd.extend(std::iter::repeat_n(arg.as_str(), 16));
    let t = w.trace(&cmd).ok();
    let procs = t.processes();
    let echo = procs
        .iter()
        .find(|p| p["executable"] == "/usr/bin/echo" || p["executable"] == "/bin/echo")
        .unwrap_or_else(|| panic!("{procs:?}"));
    assert_eq!(echo["argv_truncated"], true);
    // The real size is reported, the captured part is bounded.
    assert!(
        echo["argv_bytes"].as_u64().unwrap() > 1_000_000,
        "{}",
        echo["argv_bytes"]
    );
    let captured: usize = echo["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().len() + 1)
        .sum();
    assert!(captured <= 16 * 1024, "{captured}");
    assert_eq!(echo["argv"][0], "/bin/echo");
    // The record as a whole stays small.
    assert!(fs::metadata(&t.bundle_path).unwrap().len() < 100_000);
}

#[test]
fn paths_up_to_4_kib_are_exact() {
    let w = Work::new("deep-paths");
    // Nest 200-byte directory names until the absolute path nearly reaches
    // PATH_MAX, then name the output so its path is exactly 4095 bytes.
    let mut rel = PathBuf::new();
    let mut abs = w.path("");
    while abs.as_os_str().len() + 1 + 200 + 1 + 60 < 4095 {
        let name = "d".repeat(200);
        abs.push(&name);
        rel.push(&name);
    }
    fs::create_dir_all(&abs).unwrap();
    let input = abs.join("in.txt");
    fs::write(&input, "deep input\n").unwrap();
    let out_len = 4095 - abs.as_os_str().len() - 1;
    assert!(out_len <= 255, "{out_len}");
    let out_name = "o".repeat(out_len);
    let output = abs.join(&out_name);
    assert_eq!(output.as_os_str().len(), 4095);
    let script = format!("cd {} && cat in.txt > {out_name}", rel.display());
    let t = w.trace(&["sh", "-c", &script]).ok();
    let read = t
        .read(input.to_str().unwrap())
        .unwrap_or_else(|| panic!("{:?}", t.read_paths()));
    assert_eq!(read["hash"], blake3_file(&input));
    let write = t
        .write(output.to_str().unwrap())
        .unwrap_or_else(|| panic!("{:?}", t.write_paths()));
    assert_eq!(write["hash"], blake3_file(&output));
    // Records name inexact paths under `inexact_paths` (absent when every
    // path is exact), and a record with one is partial.
    assert!(t.md().get("inexact_paths").is_none(), "{}", t.md());
    assert_eq!(t.md()["capture"]["inexact_paths"], 0, "{}", t.md());
    assert_eq!(t.md()["capture"]["partial"], false, "{}", t.md());
}

/// A path longer than PATH_MAX (reached by `cd`-ing one relative step at a
/// time) cannot be walked to the root in the kernel: the record must not
/// report the shorter path the walk found, hash it, or call it deleted.
/// It names what is known (the end of the path, marked with a leading
/// `…`), why, and is partial; the loss is counted.
#[test]
fn paths_beyond_path_max_are_flagged_not_guessed() {
    let w = Work::new("too-deep");
    // 24 levels of 220-byte names: over 5 KiB below the work directory,
    // each step a relative chdir (a shell's `cd` gives up at PATH_MAX).
    let descend = "import os\nfor _ in range(24):\n    os.makedirs('d' * 220, exist_ok=True)\n    os.chdir('d' * 220)\n";
    let setup = format!("{descend}open('in.txt', 'w').write('deep input')\n");
    let made = Command::new("python3")
        .current_dir(&w.dir)
        .args(["-c", &setup])
        .status();
    assert!(made.unwrap().success());
    let script = format!("{descend}open('out.txt', 'w').write(open('in.txt').read())\n");
    let t = w.trace(&["python3", "-c", &script]).ok();
    let md = t.md();
    // No guessed absolute path: neither file is a read or a write, neither
    // is unhashed or deleted under a name it does not have.
    let guessed = |p: &str| p.ends_with("/in.txt") || p.ends_with("/out.txt");
    assert!(
        !t.read_paths().iter().any(|p| guessed(p)),
        "{:?}",
        t.read_paths()
    );
    assert!(
        !t.write_paths().iter().any(|p| guessed(p)),
        "{:?}",
        t.write_paths()
    );
    assert_eq!(md["deleted"], serde_json::json!([]), "{md}");
    assert_eq!(md["unhashed"], serde_json::json!([]), "{md}");
    // Named as inexact, with the reason and the role.
    let inexact = md["inexact_paths"]
        .as_array()
        .unwrap_or_else(|| panic!("{md}"));
    for (leaf, role) in [("/in.txt", "input"), ("/out.txt", "output")] {
        let e = inexact
            .iter()
            .find(|e| e["path"].as_str().unwrap().ends_with(leaf))
            .unwrap_or_else(|| panic!("{leaf}: {inexact:?}"));
        let path = e["path"].as_str().unwrap();
        assert!(path.starts_with('…'), "{path}");
        assert!(
            e["roles"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(role)),
            "{e}"
        );
        assert!(
            e["problems"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("truncated")),
            "{e}"
        );
    }
    // Partial, counted in the record and by the kernel (which /metrics
    // exports as a loss cause).
    assert_eq!(md["capture"]["partial"], true, "{md}");
    assert!(
        md["capture"]["partial_reason"]
            .as_str()
            .unwrap()
            .contains("inexact"),
        "{md}"
    );
    assert_eq!(md["capture"]["inexact_paths"], 2, "{md}");
    assert!(
        md["kernel_counters"]["lost_path_inexact"].as_u64() >= Some(2),
        "{md}"
    );
}

/// A tiny tmpfs, unmounted on drop.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(dir: PathBuf, opts: &str) -> Self {
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs {opts}");
        Self(dir)
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_bundle_directory_keeps_the_record_elsewhere() {
    let w = Work::new("full-bundles");
    let full = TinyFs::mount(w.path("full"), "size=8k,mode=0700");
    // Fill it (tmpfs counts pages: one 8 KiB file leaves no room).
    let _ = fs::write(full.0.join("filler"), vec![0u8; 8192]);
    w.write("a", "alpha\n");
    let keep = w.path("kept");
    let out = Command::new(bin())
        .current_dir(w.path(""))
        .arg("run")
        .arg("--bundle-dir")
        .arg(&full.0)
        .arg("--fallback-dir")
        .arg(&keep)
        .args(["--", "sh", "-c", "cat a > b"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The command ran; roar-node says the record is not where asked.
    assert!(w.path("b").exists());
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("could not be written"), "{stderr}");
    assert!(stderr.contains(keep.to_str().unwrap()), "{stderr}");
    // ... and the record is whole in the fallback directory.
    let kept: Vec<_> = fs::read_dir(&keep)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let bundle: serde_json::Value = serde_json::from_slice(&fs::read(&kept[0]).unwrap()).unwrap();
    let writes = &bundle["fragments"][0]["writes"];
    assert_eq!(writes[0]["path"], w.s("b"), "{bundle}");
    // No half-written file was left in the full directory.
    let left: Vec<_> = fs::read_dir(&full.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "filler")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn read_only_bundle_directory_is_refused_before_the_command_runs() {
    let w = Work::new("ro-bundles");
    let ro = TinyFs::mount(w.path("ro"), "size=64k,ro");
    let out = Command::new(bin())
        .current_dir(w.path(""))
        .arg("run")
        .arg("--bundle-dir")
        .arg(&ro.0)
        .args(["--", "touch", "ran"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("bundle directory"), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(!w.path("ran").exists(), "the command must not run");
}
