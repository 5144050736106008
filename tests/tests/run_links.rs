//! An output is recorded under the name it has when the task ends, with
//! its hash, whatever route it took there: a hard link then an unlink of
//! the first name, an `O_TMPFILE` file linked to its name (both ways
//! `linkat` can do it), names swapped by `renameat2(RENAME_EXCHANGE)`,
//! directories swapped the same way. Real programs, real kernel, hashes
//! checked against the files on disk.

use std::fs;

use roar_node_tests::*;

fn deleted(t: &Traced) -> Vec<String> {
    t.md()["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Nothing in the record is inexact, unhashed or partial.
fn assert_exact(t: &Traced) {
    assert!(t.md().get("inexact_paths").is_none(), "{}", t.md());
    assert_eq!(t.md()["unhashed"], serde_json::json!([]), "{}", t.md());
    assert_eq!(t.md()["capture"]["partial"], false, "{}", t.md());
}

#[test]
fn hard_link_then_unlink_of_the_first_name_records_the_link() {
    let w = Work::new("link-rm");
    let t = w
        .trace(&["sh", "-c", "echo payload > a && ln a b && rm a"])
        .ok();
    assert_eq!(t.write_paths(), vec![w.s("b")], "{}", t.md());
    let b = t.write(&w.s("b")).unwrap();
    assert_eq!(b["hash"], blake3_bytes(b"payload\n"));
    assert_eq!(b["hash"], blake3_file(w.path("b")));
    // `a` was written and is gone: recorded as deleted, never as an output.
    assert_eq!(deleted(&t), vec![w.s("a")]);
    assert_exact(&t);
    assert!(t.events("link") >= 1, "{}", t.md()["capture"]);
}

/// A hard link of an input gives the input's content a new name the task
/// made: an output with the input's hash (as `cp` would), the input stays
/// an input.
#[test]
fn hard_link_of_an_input_is_an_output_with_the_inputs_hash() {
    let w = Work::new("link-input");
    w.write("data.csv", "a,b\n1,2\n");
    let t = w
        .trace(&[
            "sh",
            "-c",
            "cat data.csv > /dev/null && ln data.csv alias.csv",
        ])
        .ok();
    let want = blake3_file(w.path("data.csv"));
    assert_eq!(t.read(&w.s("data.csv")).expect("input")["hash"], want);
    assert_eq!(t.write_paths(), vec![w.s("alias.csv")]);
    assert_eq!(t.write(&w.s("alias.csv")).unwrap()["hash"], want);
    assert_exact(&t);
}

/// open(O_TMPFILE), write, then give the file a name, once with
/// `linkat(fd, "", AT_FDCWD, name, AT_EMPTY_PATH)` and once with
/// `linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, name, AT_SYMLINK_FOLLOW)`
/// (what open(2) recommends), and one O_TMPFILE file that never gets a
/// name.
const TMPFILE: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static int tmp(const char *content) {
    int fd = open(".", O_TMPFILE | O_WRONLY, 0644);
    if (fd < 0) { perror("O_TMPFILE"); _exit(1); }
    if (write(fd, content, strlen(content)) != (ssize_t)strlen(content)) { perror("write"); _exit(1); }
    return fd;
}
int main(void) {
    int a = tmp("by empty path\n");
    if (linkat(a, "", AT_FDCWD, "empty-path.bin", AT_EMPTY_PATH) != 0) { perror("AT_EMPTY_PATH"); return 1; }
    int b = tmp("by proc fd\n");
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", b);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, "proc-fd.bin", AT_SYMLINK_FOLLOW) != 0) { perror("proc fd"); return 1; }
    int c = tmp("never named\n");
    close(a); close(b); close(c);
    return 0;
}
"#;

#[test]
fn o_tmpfile_linked_to_its_name_is_recorded_under_that_name() {
    let w = Work::new("tmpfile");
    let exe = compile_c(&w, "tmpfile", TMPFILE, &[]);
    let t = w.trace(&[exe.to_str().unwrap()]).ok();
    let mut writes = t.write_paths();
    writes.sort();
    assert_eq!(
        writes,
        vec![w.s("empty-path.bin"), w.s("proc-fd.bin")],
        "{}",
        t.md()
    );
    assert_eq!(
        t.write(&w.s("empty-path.bin")).unwrap()["hash"],
        blake3_bytes(b"by empty path\n")
    );
    assert_eq!(
        t.write(&w.s("proc-fd.bin")).unwrap()["hash"],
        blake3_bytes(b"by proc fd\n")
    );
    // No `#<inode>` name the kernel gives a nameless file, anywhere.
    assert_eq!(deleted(&t), Vec::<String>::new());
    assert!(!t.bundle.to_string().contains("/#"), "{}", t.md());
    // The file that never got a name was a temporary: counted, not a loss.
    assert_eq!(
        t.md()["capture"]["unnamed_files"],
        1,
        "{}",
        t.md()["capture"]
    );
    assert_exact(&t);
}

/// renameat2(RENAME_EXCHANGE) of two files, then of two directories that
/// hold outputs: each output is recorded where it is at the end.
const EXCHANGE: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
static void put(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(s, f) < 0 || fclose(f) != 0) { perror(path); _exit(1); }
}
int main(void) {
    put("model.new", "new weights\n");
    if (renameat2(AT_FDCWD, "model.new", AT_FDCWD, "model", RENAME_EXCHANGE) != 0) { perror("exchange files"); return 1; }
    if (mkdir("left", 0755) || mkdir("right", 0755)) { perror("mkdir"); return 1; }
    put("left/x", "x\n");
    put("right/y", "y\n");
    if (renameat2(AT_FDCWD, "left", AT_FDCWD, "right", RENAME_EXCHANGE) != 0) { perror("exchange dirs"); return 1; }
    return 0;
}
"#;

#[test]
fn rename_exchange_of_files_and_directories_swaps_outputs() {
    let w = Work::new("exchange");
    w.write("model", "old weights\n");
    let exe = compile_c(&w, "exchange", EXCHANGE, &[]);
    let t = w.trace(&[exe.to_str().unwrap()]).ok();
    let mut writes = t.write_paths();
    writes.sort();
    let want = ["left/y", "model", "model.new", "right/x"].map(|p| w.s(p));
    assert_eq!(writes, want.to_vec(), "{}", t.md());
    for p in &want {
        assert_eq!(t.write(p).unwrap()["hash"], blake3_file(p), "{p}");
    }
    assert_eq!(
        t.write(&w.s("model")).unwrap()["hash"],
        blake3_bytes(b"new weights\n")
    );
    // What was written at left/x and right/y was renamed away (the
    // directories swapped): deleted from those names, as a temp file
    // renamed into place is.
    let mut gone = deleted(&t);
    gone.sort();
    assert_eq!(gone, vec![w.s("left/x"), w.s("right/y")]);
    assert_exact(&t);
    assert!(fs::metadata(w.path("left/y")).is_ok());
}

/// A file that never had a name (a memfd reopened through /proc, as runc
/// reads its own cloned binary in every container it starts) has no path
/// to lose: the read is described under `nameless_reads` and the record
/// stays exact. A file read through /proc after its name was deleted had
/// a path the record cannot give: inexact, and the record partial.
#[test]
fn a_memfd_read_is_described_a_deleted_files_read_is_inexact() {
    let w = Work::new("nameless");
    let memfd = "import os\n\
        fd = os.memfd_create('blob')\n\
        os.write(fd, b'x')\n\
        open(f'/proc/self/fd/{fd}', 'rb').read()\n";
    let t = w.trace(&["python3", "-c", memfd]).ok();
    assert_exact(&t);
    let nameless = t.md()["nameless_reads"].as_array().expect("nameless_reads");
    assert_eq!(nameless.len(), 1, "{}", t.md());
    assert_eq!(
        nameless[0]["problems"],
        serde_json::json!(["disconnected", "no_name"])
    );
    assert_eq!(t.md()["capture"]["nameless_reads"], 1);

    let deleted = "import os\n\
        open('gone', 'w').write('x')\n\
        fd = os.open('gone', os.O_RDONLY)\n\
        os.unlink('gone')\n\
        open(f'/proc/self/fd/{fd}', 'rb').read()\n";
    let t = w.trace(&["python3", "-c", deleted]).ok();
    assert_eq!(t.md()["capture"]["partial"], true, "{}", t.md());
    let inexact = t.md()["inexact_paths"].as_array().expect("inexact_paths");
    assert!(
        inexact
            .iter()
            .any(|e| e["roles"] == serde_json::json!(["input"])
                && e["problems"] == serde_json::json!(["no_name"])),
        "{}",
        t.md()
    );
}

/// Clones a mount of one file into a mount that hangs in no tree
/// (`open_tree(OPEN_TREE_CLONE)`, as runc seals its own binary before it
/// execs it in every container), reads the file through /proc and runs it.
const DETACHED: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = syscall(SYS_open_tree, AT_FDCWD, argv[1], 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC);
    if (fd < 0) { perror("open_tree"); return 2; }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    int rd = open(proc, O_RDONLY);
    char b[16];
    if (rd < 0 || read(rd, b, sizeof b) <= 0) { perror("read"); return 3; }
    char *args[] = {argv[1], NULL};
    char *env[] = {NULL};
    syscall(SYS_execveat, fd, "", args, env, AT_EMPTY_PATH);
    perror("execveat");
    return 4;
}
"#;

/// A file on a mount attached nowhere has no path in any namespace: the
/// read is a nameless read and the program run from it says so in its
/// process entry; neither is a lost path (runc does this in every
/// container; every container's record was partial).
#[test]
fn a_file_on_a_detached_mount_is_nameless_not_lost() {
    let w = Work::new("detached");
    let exe = compile_c(&w, "detached", DETACHED, &[]);
    let t = w.trace(&[exe.to_str().unwrap(), "/bin/true"]).ok();
    assert_exact(&t);
    let nameless = t.md()["nameless_reads"].as_array().expect("nameless_reads");
    assert_eq!(nameless.len(), 1, "{}", t.md());
    let procs = t.md()["processes"].as_array().unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p["executable_problems"] == serde_json::json!(["disconnected"])),
        "{}",
        t.md()
    );
    assert_eq!(t.md()["capture"]["inexact_events"], 0, "{}", t.md());
}
