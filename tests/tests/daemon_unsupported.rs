//! A node roar-node cannot serve (here: no cgroup v2 where the host's
//! cgroup tree should be) keeps the daemon up and not ready, saying why in
//! /readyz, the log and `roar_node_node_supported`, instead of exiting and
//! being restarted hot by the kubelet. Needs no cluster: the daemon stops
//! before it asks the API server anything.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use roar_node_tests::*;

#[test]
fn a_node_without_cgroup_v2_is_not_ready_and_says_why() {
    let work = Work::new("unsupported");
    // An empty directory is not a cgroup2 mount.
    let not_cgroup = work.dir.join("no-cgroup");
    std::fs::create_dir_all(&not_cgroup).unwrap();
    let addr = "127.0.0.1:19478";
    let mut daemon = Command::new(bin())
        .args(["daemon", "--node-name", "test-node"])
        .arg("--host-cgroup")
        .arg(&not_cgroup)
        .arg("--spool-dir")
        .arg(work.dir.join("spool"))
        .arg("--bundle-dir")
        .arg(work.dir.join("bundles"))
        .args(["--metrics-addr", addr])
        .env("RUST_LOG", "error")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let (code, body) = loop {
        let (code, body) = http_get(addr, "/readyz");
        if body.contains("cannot trace on this node") || t0.elapsed() > Duration::from_secs(30) {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&not_cgroup.display().to_string()), "{body}");
    // Still up, and alive for the liveness probe: not restarted hot.
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
    assert_eq!(http_get(addr, "/healthz").0, 200);
    let metrics = http_get(addr, "/metrics").1;
    assert_eq!(
        metric_value(&metrics, "roar_node_node_supported"),
        Some(0.0),
        "{metrics}"
    );
    nix_kill(daemon.id());
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("cannot trace on this node"), "{log}");
}

fn nix_kill(pid: u32) {
    // SAFETY: plain syscall.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
}
