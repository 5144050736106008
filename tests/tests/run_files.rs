//! `roar-node run` captures what a command reads and writes: real eBPF
//! programs, real processes in a real cgroup, hashes checked against the
//! files on disk.

use std::{ffi::OsStr, fs, os::unix::ffi::OsStrExt, process::Command};

use roar_node_tests::*;

#[test]
fn shell_redirection_is_captured() {
    let w = Work::new("redirect");
    w.write("a", "alpha\n");
    let t = w.trace(&["sh", "-c", "cat a > b"]).ok();
    let read = t
        .read(&w.s("a"))
        .unwrap_or_else(|| panic!("a not read: {:?}", t.read_paths()));
    assert_eq!(read["hash"], blake3_file(w.path("a")));
    assert_eq!(read["hash_algorithm"], "blake3");
    assert_eq!(read["size"], 6);
    let write = t
        .write(&w.s("b"))
        .unwrap_or_else(|| panic!("b not written: {:?}", t.write_paths()));
    assert_eq!(write["hash"], blake3_file(w.path("b")));
    // Nothing else of the task's own files, and system files filtered out.
    assert_eq!(t.read_paths(), vec![w.s("a")]);
    assert_eq!(t.write_paths(), vec![w.s("b")]);
    assert_eq!(t.lost(), 0);
    let capture = &t.md()["capture"];
    assert_eq!(capture["lost_by_cause"]["kernel_read_failed"], 0);
    assert_eq!(capture["partial"], false);
    let counters = &t.md()["kernel_counters"];
    assert!(
        counters.get("lost_kernel_read_failed").is_none(),
        "{counters}"
    );
}

#[test]
fn statically_linked_binary_is_captured() {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| fs::metadata(p).is_ok())
        .expect("busybox-static is installed by `cargo xtask setup`");
    let file = Command::new("file")
        .arg("-L")
        .arg(busybox)
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    if !file.is_empty() {
        assert!(
            String::from_utf8_lossy(&file).contains("statically linked"),
            "{busybox} is not static: {}",
            String::from_utf8_lossy(&file)
        );
    }
    let w = Work::new("static");
    w.write("src.bin", vec![7u8; 10_000]);
    let t = w.trace(&[busybox, "cp", "src.bin", "dst.bin"]).ok();
    assert_eq!(
        t.read(&w.s("src.bin")).expect("read")["hash"],
        blake3_file(w.path("src.bin"))
    );
    assert_eq!(
        t.write(&w.s("dst.bin")).expect("write")["hash"],
        blake3_file(w.path("dst.bin"))
    );
}

#[test]
fn temp_file_renamed_to_final_name() {
    let w = Work::new("rename");
    let t = w
        .trace(&[
            "sh",
            "-c",
            "mkdir -p out && echo checkpoint-1 > out/model.tmp && mv out/model.tmp out/model.bin",
        ])
        .ok();
    let out = t
        .write(&w.s("out/model.bin"))
        .unwrap_or_else(|| panic!("{:?}", t.write_paths()));
    assert_eq!(out["hash"], blake3_bytes(b"checkpoint-1\n"));
    assert_eq!(out["hash"], blake3_file(w.path("out/model.bin")));
    assert!(
        t.write(&w.s("out/model.tmp")).is_none(),
        "temp file reported: {:?}",
        t.write_paths()
    );
    assert!(t.events("rename") >= 1);
}

#[test]
fn relative_rename_with_dirfd_and_directory_rename() {
    // renameat with a directory fd and a relative name, then renaming the
    // directory that holds an output: the output is reported where it
    // ended up.
    let w = Work::new("renameat");
    let py = r#"
import os
os.makedirs("stage", exist_ok=True)
with open("stage/part.tmp", "w") as f:
    f.write("payload")
d = os.open("stage", os.O_RDONLY | os.O_DIRECTORY)
os.rename("part.tmp", "part", src_dir_fd=d, dst_dir_fd=d)
os.close(d)
os.rename("stage", "final")
"#;
    let t = w.trace(&["python3", "-c", py]).ok();
    let out = t
        .write(&w.s("final/part"))
        .unwrap_or_else(|| panic!("{:?}", t.write_paths()));
    assert_eq!(out["hash"], blake3_bytes(b"payload"));
    assert_eq!(t.write_paths(), vec![w.s("final/part")]);
}

#[test]
fn deleted_output_is_recorded_as_deleted_not_output() {
    let w = Work::new("deleted");
    w.write("gone-before.txt", "x");
    let t = w
        .trace(&["sh", "-c", "echo scratch > scratch.txt && rm scratch.txt && echo kept > kept.txt && rm gone-before.txt"])
        .ok();
    assert_eq!(t.write_paths(), vec![w.s("kept.txt")]);
    let deleted: Vec<String> = t.md()["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    assert!(deleted.contains(&w.s("scratch.txt")), "{deleted:?}");
    assert!(deleted.contains(&w.s("gone-before.txt")), "{deleted:?}");
}

#[test]
fn processes_outside_the_cgroup_are_not_traced() {
    let w = Work::new("outside");
    fs::create_dir_all(w.path("outside")).unwrap();
    // A writer the test starts itself: not in the traced cgroup, writing
    // into the same directory while the traced command runs.
    let mut outsider = Command::new("sh")
        .current_dir(&w.dir)
        .args(["-c", "i=0; while [ $i -lt 300 ]; do echo $i > outside/o$i; cat outside/o$i > /dev/null; i=$((i+1)); sleep 0.002; done"])
        .spawn()
        .unwrap();
    let t = w
        .trace(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 100 ]; do echo $i > in$i; i=$((i+1)); sleep 0.003; done",
        ])
        .ok();
    outsider.wait().unwrap();
    assert!(fs::read_dir(w.path("outside")).unwrap().count() > 0);
    let all: Vec<String> = t.read_paths().into_iter().chain(t.write_paths()).collect();
    assert!(
        all.iter().all(|p| !p.contains("/outside/")),
        "outsider's files leaked in: {all:?}"
    );
    assert_eq!(t.write_paths().len(), 100);
}

#[test]
fn exact_long_and_non_utf8_paths_round_trip() {
    let w = Work::new("paths");
    // A 300-byte path (several long components) and a name that is not
    // UTF-8 (and contains a '%', which must survive the encoding).
    let mut long = w.dir.clone();
    while long.as_os_str().len() < 300 {
        long.push("d".repeat(60));
    }
    fs::create_dir_all(&long).unwrap();
    let long_file = long.join("data.txt");
    fs::write(&long_file, "long").unwrap();
    assert!(long_file.as_os_str().len() >= 300);
    let odd = w.dir.join(OsStr::from_bytes(b"odd-\xff\xfe-50%.bin"));
    fs::write(&odd, "odd").unwrap();

    let t = w
        .trace_os(
            &[],
            &[OsStr::new("cat"), long_file.as_os_str(), odd.as_os_str()],
        )
        .ok();
    let reads: Vec<Vec<u8>> = t
        .read_paths()
        .iter()
        .map(|p| {
            let listed = t.md()["non_utf8"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["value"] == p.as_str());
            if listed {
                decode_path(p)
            } else {
                p.as_bytes().to_vec()
            }
        })
        .collect();
    assert!(
        reads.contains(&bytes_of(&long_file)),
        "long path missing: {:?}",
        t.read_paths()
    );
    assert!(
        reads.contains(&bytes_of(&odd)),
        "non-UTF-8 path missing: {:?}",
        t.read_paths()
    );
    // The raw bytes are in the record too.
    let raw = base64_of(&bytes_of(&odd));
    assert!(
        t.md()["non_utf8"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["raw_base64"] == raw.as_str())
    );
    // And argv (cat's second argument) round-trips the same way.
    let cat = t
        .processes()
        .into_iter()
        .find(|p| p["argv"][0] == "cat")
        .unwrap();
    assert_eq!(
        decode_path(cat["argv"][2].as_str().unwrap()),
        bytes_of(&odd)
    );
    let hash = t
        .read(
            &t.read_paths()
                .into_iter()
                .find(|p| p.contains("odd-"))
                .unwrap(),
        )
        .unwrap()["hash"]
        .clone();
    assert_eq!(hash, blake3_bytes(b"odd"));
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn filters_are_configurable_and_bad_filter_files_are_refused() {
    let w = Work::new("filters");
    w.write("a", "alpha\n");
    w.write("skip-me.txt", "noise\n");
    let cmd = ["sh", "-c", "cat /etc/hostname a skip-me.txt > b"];

    // roar's defaults: system reads dropped (and counted), the rest kept.
    let t = w.trace(&cmd).ok();
    assert_eq!(t.read_paths(), vec![w.s("a"), w.s("skip-me.txt")]);
    assert!(t.md()["capture"]["filtered"]["system_reads"].as_u64() > Some(0));

    // A filter file overrides one default; --ignore-path adds a pattern.
    let filters = w.write("filters.json", r#"{"ignore_system_reads": false}"#);
    let t = w
        .trace_with(
            &[
                "--filters",
                filters.to_str().unwrap(),
                "--ignore-path",
                "skip-me",
            ],
            &cmd,
        )
        .ok();
    let reads = t.read_paths();
    assert!(reads.contains(&"/etc/hostname".to_string()), "{reads:?}");
    assert!(reads.contains(&w.s("a")), "{reads:?}");
    assert!(!reads.contains(&w.s("skip-me.txt")), "{reads:?}");
    assert_eq!(t.md()["capture"]["filtered"]["ignore_paths"], 1);

    // A typo in the filter file is an error before anything runs.
    let bad = w.write("bad.json", r#"{"ignore_system_read": false}"#);
    let out = Command::new(bin())
        .current_dir(w.path(""))
        .args(["run", "--bundle-dir"])
        .arg(w.path("bad-bundles"))
        .arg("--filters")
        .arg(&bad)
        .args(["--", "touch", "ran"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("invalid filter file"), "{stderr}");
    assert!(stderr.contains("ignore_system_read"), "{stderr}");
    assert!(!w.path("ran").exists(), "the command must not run");
    assert!(!w.path("bad-bundles").exists());
}

/// open_by_handle_at(2) opens a file without a path: the record still has
/// the file's path, resolved in the kernel from the new fd.
const BY_HANDLE: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct file_handle *h = malloc(sizeof *h + MAX_HANDLE_SZ);
    h->handle_bytes = MAX_HANDLE_SZ;
    int mount_id;
    if (name_to_handle_at(AT_FDCWD, argv[1], h, &mount_id, 0) != 0) { perror("name_to_handle_at"); return 1; }
    int mfd = open(".", O_RDONLY | O_DIRECTORY);
    int fd = open_by_handle_at(mfd, h, O_RDONLY);
    if (fd < 0) { perror("open_by_handle_at"); return 1; }
    char buf[64];
    return read(fd, buf, sizeof buf) > 0 ? 0 : 1;
}
"#;

#[test]
fn open_by_handle_at_is_captured() {
    let w = Work::new("by-handle");
    w.write("target.txt", "reached by handle\n");
    let exe = compile_c(&w, "byhandle", BY_HANDLE, &[]);
    let t = w.trace(&[exe.to_str().unwrap(), "target.txt"]).ok();
    let read = t
        .read(&w.s("target.txt"))
        .unwrap_or_else(|| panic!("not captured: {:?}", t.read_paths()));
    assert_eq!(read["hash"], blake3_file(w.path("target.txt")));
}

/// Outputs on a mount only the task can see (as a container's emptyDir is)
/// are hashed from the task's mount namespace, held open by roar-node, after
/// every process of the task has exited and nothing else can see them.
#[test]
fn outputs_in_a_private_mount_namespace_are_hashed_after_exit() {
    let w = Work::new("private-mnt");
    fs::create_dir_all(w.path("vol")).unwrap();
    let script = "mount -t tmpfs scratch vol && printf 'model weights\\n' > vol/out.bin \
                  && cp vol/out.bin vol/copy.bin && sleep 0.3";
    let t = w
        .trace(&[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ])
        .ok();
    // The host sees an empty directory: the files exist only in the task's
    // namespace, which ended with it.
    assert!(!w.path("vol/out.bin").exists());
    let want = blake3_bytes(b"model weights\n");
    for name in ["vol/out.bin", "vol/copy.bin"] {
        let write = t
            .write(&w.s(name))
            .unwrap_or_else(|| panic!("{name}: {:?} {}", t.write_paths(), t.md()));
        assert_eq!(write["hash"], want, "{name}");
    }
    assert_eq!(t.md()["deleted"], serde_json::json!([]));
    assert_eq!(t.md()["capture"]["mount_namespaces_missed"], 0);
}

/// A task that swaps its output for a symbolic link to a file it should not
/// learn about: roar-node (more privileged than the task) does not follow
/// the link, so the record says why there is no hash and never holds the
/// target's.
#[test]
fn symlinks_swapped_in_after_the_fact_are_not_followed() {
    let w = Work::new("symlink-swap");
    w.write("secret.txt", "top secret\n");
    let t = w
        .trace(&[
            "sh",
            "-c",
            "echo data > out; ln -sf secret.txt out.tmp && mv -f out.tmp out",
        ])
        .ok();
    let out = t
        .write(&w.s("out"))
        .unwrap_or_else(|| panic!("{:?}", t.write_paths()));
    assert!(out["hash"].is_null(), "{out}");
    let why = &t.md()["unhashed"][0];
    assert_eq!(why["path"], w.s("out"));
    assert!(
        why["reason"].as_str().unwrap().contains("symbolic link"),
        "{why}"
    );
    let secret = blake3_file(w.path("secret.txt"));
    assert!(!t.bundle.to_string().contains(&secret));
}
