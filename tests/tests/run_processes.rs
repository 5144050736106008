//! The process tree and exit codes of a traced command.

use roar_node_tests::*;

const FORKER: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void *worker(void *arg) { (void)arg; return NULL; }

int main(void) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    pid_t a = fork();
    if (a == 0) {
        pid_t b = fork();               /* a grandchild that execs */
        if (b == 0) { execl("/bin/sh", "sh", "-c", "exit 4", (char *)NULL); _exit(99); }
        int st; waitpid(b, &st, 0);
        _exit(WEXITSTATUS(st) == 4 ? 0 : 1);
    }
    int st; waitpid(a, &st, 0);
    return WEXITSTATUS(st) == 0 ? 7 : 1;
}
"#;

#[test]
fn forks_threads_and_exit_codes_form_the_tree() {
    let w = Work::new("tree");
    let exe = compile_c(&w, "forker", FORKER, &["-pthread"]);
    let t = w.trace(&[exe.to_str().unwrap()]);
    assert_eq!(
        t.exit_code(),
        Some(7),
        "roar-node must exit with the command's code:\n{}",
        t.stderr()
    );
    assert_eq!(t.fragment()["exit_code"], 7);

    let procs = t.processes();
    let root = procs
        .iter()
        .find(|p| p["argv"][0].as_str().unwrap().ends_with("forker"))
        .expect("root process");
    assert_eq!(root["threads"], 3, "{root}");
    assert_eq!(root["exit_code"], 7);
    let root_pid = root["pid"].as_u64().unwrap();
    // The forked child runs the same image (argv inherited), exits 0.
    let child = procs
        .iter()
        .find(|p| p["ppid"].as_u64() == Some(root_pid))
        .unwrap_or_else(|| panic!("no child of {root_pid}: {procs:?}"));
    assert_eq!(child["exit_code"], 0);
    assert_eq!(child["argv"], root["argv"]);
    // The grandchild exec'd sh and exited 4.
    let child_pid = child["pid"].as_u64().unwrap();
    let grandchild = procs
        .iter()
        .find(|p| p["ppid"].as_u64() == Some(child_pid))
        .expect("grandchild");
    assert_eq!(
        grandchild["argv"],
        serde_json::json!(["sh", "-c", "exit 4"])
    );
    assert_eq!(grandchild["exit_code"], 4);
    assert!(
        grandchild["executable"].as_str().unwrap().ends_with("sh")
            || grandchild["executable"].as_str().unwrap().ends_with("dash")
    );
    assert_eq!(procs.len(), 3, "{procs:?}");
    for p in &procs {
        assert!(p["ended_at"].as_f64().unwrap() >= p["started_at"].as_f64().unwrap());
    }
}

#[test]
fn killed_command_reports_the_signal() {
    let w = Work::new("signal");
    let t = w.trace(&["sh", "-c", "kill -9 $$"]);
    assert_eq!(t.exit_code(), Some(137), "{}", t.stderr());
    assert_eq!(t.fragment()["exit_code"], 137);
    let sh = &t.processes()[0];
    assert_eq!(sh["signal"], 9);
}

#[test]
fn background_processes_are_waited_for() {
    // The command exits at once but leaves a process writing: the task
    // ends when every process in its cgroup has exited.
    let w = Work::new("background");
    let t = w
        .trace(&["sh", "-c", "(sleep 0.5; echo late > late.txt) & exit 0"])
        .ok();
    assert_eq!(
        t.write(&w.s("late.txt")).expect("late write")["hash"],
        blake3_bytes(b"late\n")
    );
}

#[test]
fn environment_is_not_captured() {
    let w = Work::new("env");
    let secret = "s3cr3t-value-that-must-not-leak";
    let out = std::process::Command::new(bin())
        .current_dir(&w.dir)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .args([
            "run",
            "--bundle-dir",
            "b",
            "--",
            "sh",
            "-c",
            "echo $AWS_SECRET_ACCESS_KEY > /dev/null",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The record exists and has the process that held the secret: an empty
    // directory, or a record without processes, proves nothing.
    let bundles: Vec<_> = std::fs::read_dir(w.path("b"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    let text = std::fs::read_to_string(&bundles[0]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let procs = v["fragments"][0]["backend_metadata"]["processes"]
        .as_array()
        .unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p["argv"].to_string().contains("$AWS_SECRET_ACCESS_KEY")),
        "{procs:?}"
    );
    assert!(
        !text.contains(secret),
        "the environment leaked into the record"
    );
}
