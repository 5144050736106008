//! The daemon under failure, on the real local cluster: `kill -9` while
//! tasks run and a record waits in the spool (bundle directory read-only),
//! then the API server down mid-run and at the daemon's start. No record
//! may be lost or written twice; interrupted tasks are marked partial with
//! their gap; capture continues while the API server is down.
//!
//! Runs only with `ROAR_NODE_K8S=1` (like k8s_e2e; cargo runs test
//! binaries one after the other, so the two never overlap).

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use roar_node_tests::{k8s::*, *};
use serde_json::{Value, json};

fn wait_running(kc: &Path, ns: &str, name: &str) -> Value {
    let mut pod = Value::Null;
    wait_until(
        &format!("pod {name} running"),
        Duration::from_secs(90),
        || {
            pod = get_pod(kc, ns, name).unwrap_or(Value::Null);
            pod["status"]["phase"] == "Running"
        },
    );
    pod
}

/// The bundle directory made read-only (the sink refuses records), and
/// writable again when dropped, also when the test fails in between: a
/// directory left read-only would refuse every record of the node's later
/// runs, whoever runs them.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn new(dir: &Path) -> Self {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o500)).unwrap();
        Self(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o700));
    }
}

fn one_record(uid: &str, timeout: Duration) -> Value {
    let mut all = bundles();
    wait_until(&format!("a record for pod {uid}"), timeout, || {
        all = bundles();
        !records_of(&all, uid).is_empty()
    });
    // Settled: the daemon has reported (after the record was there) no
    // record being built or waiting and none undelivered in its spool, so
    // a duplicate, if one were coming, would be here.
    let seen_at = wall_now();
    wait_until("the daemon has no record in flight", timeout, || {
        let s = stats();
        s["time"].as_f64().is_some_and(|t| t > seen_at)
            && s["tasks"]["records_pending"] == 0
            && s["spool"]["undelivered"] == 0
    });
    let recs = records_of(&bundles(), uid);
    assert_eq!(recs.len(), 1, "exactly one record for {uid}: {recs:#?}");
    recs[0].1.clone()
}

/// The record lists `path` as written: hashed to `content`'s hash, or, for
/// a container too short-lived for its mount namespace to be held,
/// unhashed with the reason (never called deleted, never hashed from the
/// daemon's own view).
fn wrote(rec: &Value, path: &str, content: &[u8]) -> bool {
    let listed = rec["writes"]
        .as_array()
        .is_some_and(|w| w.iter().any(|a| a["path"] == path));
    let hashed = write_hash(rec, path) == Some(blake3_bytes(content));
    let explained = rec["backend_metadata"]["unhashed"]
        .as_array()
        .is_some_and(|u| {
            u.iter()
                .any(|x| x["path"] == path && x["reason"].is_string())
        });
    listed && (hashed || explained)
}

/// The local cluster's API server, stopped and started again with the
/// same command line (as `deploy/k8s-local/up.sh` started it).
struct ApiServer {
    state: PathBuf,
    argv: Vec<String>,
}

impl ApiServer {
    fn stop() -> Self {
        let state = PathBuf::from(
            std::env::var("K8S_LOCAL_STATE").unwrap_or_else(|_| "/var/tmp/k8s-local".into()),
        );
        let pid = fs::read_to_string(state.join("run/apiserver.pid"))
            .expect("the local cluster's apiserver.pid")
            .trim()
            .to_string();
        let argv: Vec<String> = fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(argv[0].ends_with("kube-apiserver"), "{argv:?}");
        // Abruptly, as a crash would (SIGTERM waits for watches to end).
        Command::new("kill").args(["-9", &pid]).status().unwrap();
        wait_until("the API server stops", Duration::from_secs(30), || {
            !Path::new(&format!("/proc/{pid}")).exists()
                || fs::read_to_string(format!("/proc/{pid}/status"))
                    .is_ok_and(|s| s.contains("State:\tZ"))
        });
        Self { state, argv }
    }

    fn start(self) {
        let log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.state.join("logs/apiserver.log"))
            .unwrap();
        let child = unsafe {
            Command::new(&self.argv[0])
                .args(&self.argv[1..])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .pre_exec(|| {
                    libc::setsid();
                    Ok(())
                })
                .spawn()
                .unwrap()
        };
        fs::write(self.state.join("run/apiserver.pid"), child.id().to_string()).unwrap();
        let kc = kubeconfig();
        wait_until("the API server answers", Duration::from_secs(90), || {
            kubectl(&kc)
                .args(["get", "--raw", "/readyz"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }
}

/// The tests of this file take the daemon down or change its policy: one
/// at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the policy ConfigMap and makes the kubelet refresh the daemon's
/// mounted copy now (a pod update re-processes its volumes; otherwise it
/// takes up to its sync period, a minute or more).
fn set_policy(kc: &Path, data: Value) {
    let patch = json!({"data": data}).to_string();
    kubectl_ok(
        kc,
        &[
            "-n",
            "roar-node",
            "patch",
            "configmap",
            "roar-node-policy",
            "--type",
            "merge",
            "-p",
            &patch,
        ],
        None,
    );
    let stamp = format!("roar-node.test/poke={}", wall_now() as u64);
    kubectl_ok(
        kc,
        &[
            "-n",
            "roar-node",
            "annotate",
            "pods",
            "-l",
            "app.kubernetes.io/name=roar-node",
            "--overwrite",
            &stamp,
        ],
        None,
    );
}

/// An invalid policy edit is reported and changes nothing; a valid one is
/// in force at once (a namespace: its pods are traced without opting in).
#[test]
fn policy_configmap_reload_on_a_real_cluster() {
    if !enabled() {
        return;
    }
    let _one = serial();
    let kc = kubeconfig();
    let run =
        &blake3_bytes(format!("policy{:?}{}", Instant::now(), std::process::id()).as_bytes())[..8];
    let ns = format!("roar-pol-{run}");
    create_namespace(&kc, &ns);
    let before = stats();
    let kept = before["policy"]["in_force"].as_str().unwrap().to_string();
    let errors = before["policy"]["errors"].as_u64().unwrap();
    let generation = before["policy"]["generation"].as_u64().unwrap();

    set_policy(&kc, json!({"presets": "osmoo", "namespaces": ns}));
    wait_until(
        "the invalid policy is reported",
        Duration::from_secs(120),
        || stats()["policy"]["errors"].as_u64() > Some(errors),
    );
    let s = stats();
    assert_eq!(s["policy"]["in_force"], kept.as_str(), "{s}");
    assert_eq!(s["policy"]["generation"].as_u64(), Some(generation));
    assert!(daemon_metric("roar_node_policy_reload_errors_total").is_some_and(|v| v >= 1.0));
    let logs = daemon_logs(&kc);
    assert!(
        logs.contains("unknown policy preset \"osmoo\"")
            && logs.contains("keeping the one in force"),
        "{logs}"
    );

    set_policy(&kc, json!({"presets": "", "namespaces": ns}));
    wait_until(
        "the valid policy is in force",
        Duration::from_secs(120),
        || {
            stats()["policy"]["in_force"]
                .as_str()
                .is_some_and(|p| p.contains(&ns))
        },
    );
    // Not annotated: traced because of its namespace.
    create(
        &kc,
        &shell_pod(
            &ns,
            "by-namespace",
            "mkdir -p /work && echo ns > /work/n.txt",
            false,
        ),
    );
    let uid = uid_of(&wait_pod_done(
        &kc,
        &ns,
        "by-namespace",
        Duration::from_secs(90),
    ));
    let rec = one_record(&uid, Duration::from_secs(60));
    assert_eq!(
        rec["backend_metadata"]["traced_because"],
        format!("namespace {ns}").as_str()
    );
    assert!(wrote(&rec, "/work/n.txt", b"ns\n"), "{rec}");
    set_policy(&kc, json!({"presets": "", "namespaces": ""}));
    wait_until("the policy is back", Duration::from_secs(120), || {
        stats()["policy"]["in_force"]
            .as_str()
            .is_some_and(|p| !p.contains(&ns))
    });
    let _ = kubectl(&kc)
        .args(["delete", "namespace", &ns, "--wait=false"])
        .status();
}

#[test]
fn kill_restart_and_api_server_outage() {
    if !enabled() {
        return;
    }
    let _one = serial();
    let kc = kubeconfig();
    let run = &blake3_bytes(format!("{:?}{}", Instant::now(), std::process::id()).as_bytes())[..8];
    let ns = format!("roar-res-{run}");
    let shared = PathBuf::from(format!("/var/tmp/roar-node-e2e/res-{run}"));
    fs::create_dir_all(&shared).unwrap();
    create_namespace(&kc, &ns);
    let bundle_dir = node_state().join("bundles");
    wait_until("/readyz says ready", Duration::from_secs(60), || {
        daemon_http_get("/readyz").0 == 200
    });
    assert_eq!(daemon_http_get("/healthz").0, 200);
    assert!(daemon_metric("roar_node_events_total{kind=\"open\"}").is_some_and(|v| v > 0.0));
    assert!(daemon_metric("roar_node_records_emitted_total").is_some());

    // 1. kill -9 with a task running, another about to end, and a
    // finished record the bundle directory refuses (read-only to the
    // daemon, which has no CAP_DAC_OVERRIDE).
    for name in ["long", "ends"] {
        create(
            &kc,
            &gated_pod(&ns, name, &shared, &[("mid", "during"), ("go", "after")]),
        );
    }
    let long_uid = uid_of(&wait_running(&kc, &ns, "long"));
    let ends_uid = uid_of(&wait_running(&kc, &ns, "ends"));
    wait_traced(&long_uid);
    wait_traced(&ends_uid);
    // Checkpointed: what the tasks did so far is in the spool.
    wait_until("checkpoints in the spool", Duration::from_secs(30), || {
        in_spool(b"/gate/long.before") && in_spool(b"/gate/ends.before")
    });
    let refusing = ReadOnly::new(&bundle_dir);
    let quick = shell_pod(
        &ns,
        "quick",
        "mkdir -p /work && echo quick > /work/q.txt",
        true,
    );
    create(&kc, &quick);
    let quick_uid = uid_of(&wait_pod_done(&kc, &ns, "quick", Duration::from_secs(90)));
    wait_until(
        "the refused record waits in the spool, the error surfaced",
        Duration::from_secs(60),
        || {
            let s = stats();
            s["spool"]["undelivered"].as_u64() >= Some(1)
                && s["sink"]["failures"].as_u64() >= Some(1)
        },
    );
    assert!(records_of(&bundles(), &quick_uid).is_empty());
    assert!(daemon_metric("roar_node_records_spooled").is_some_and(|v| v >= 1.0));
    let old = daemon_pid().expect("the roar-node daemon runs");
    let killed_at = wall_now();
    signal(old, "-9");
    // While no daemon runs: `long` writes, `ends` ends.
    for f in ["long.mid", "ends.mid", "ends.go"] {
        fs::write(shared.join(f), "").unwrap();
    }
    wait_until(
        "long writes while the daemon is down",
        Duration::from_secs(10),
        || shared.join("long.during").exists(),
    );
    let down_write_at = wall_now();
    drop(refusing);
    wait_new_daemon(old, killed_at);
    // It found the programs the dead daemon pinned still attached.
    assert_eq!(stats()["probes"]["adopted"], true, "{}", stats());

    // The refused record: delivered by the new daemon, exactly once.
    let q = one_record(&quick_uid, Duration::from_secs(60));
    assert_eq!(q["exit_code"], 0);
    assert!(wrote(&q, "/work/q.txt", b"quick\n"), "{q}");
    assert_eq!(q["backend_metadata"]["capture"]["partial"], false);
    // The running task: traced again at once; its record is partial, with
    // the gap, and has what it did after the restart.
    fs::write(shared.join("long.go"), "").unwrap();
    let long = one_record(&long_uid, Duration::from_secs(90));
    let cap = &long["backend_metadata"]["capture"];
    assert_eq!(cap["partial"], true, "{cap}");
    // The gap: from the last checkpoint to the dead daemon's last
    // heartbeat (capture went on after it, through the pins).
    let gap = &cap["gaps"][0];
    let (from, to) = (gap["from"].as_f64().unwrap(), gap["to"].as_f64().unwrap());
    assert!(from <= to && to <= killed_at + 0.5, "{cap}");
    assert!(to < down_write_at, "{cap}");
    // What it wrote while no daemon ran: kept in the pinned ring buffer.
    assert_eq!(
        write_hash(&long, "/gate/long.during"),
        Some(blake3_bytes(b"during\n")),
        "{}",
        long["writes"]
    );
    assert_eq!(
        write_hash(&long, "/gate/long.after"),
        Some(blake3_bytes(b"after\n")),
        "{}",
        long["writes"]
    );
    // What it did before the crash comes from the checkpoint.
    assert_eq!(
        write_hash(&long, "/gate/long.before"),
        Some(blake3_bytes(b"before\n")),
        "{}",
        long["writes"]
    );
    assert_eq!(long["exit_code"], 0);
    // The task that ended around the restart: one record, partial.
    let ends = one_record(&ends_uid, Duration::from_secs(90));
    assert_eq!(
        ends["backend_metadata"]["capture"]["partial"], true,
        "{}",
        ends["backend_metadata"]["capture"]
    );
    // What it wrote before the crash is in the record (from the
    // checkpoint): hashed if its container was still there when the new
    // daemon started, else unhashed with the reason.
    let md = &ends["backend_metadata"];
    assert!(wrote(&ends, "/gate/ends.before", b"before\n"), "{ends}");
    // And what it did after the crash, before it ended with no daemon
    // running: taken from the pinned ring buffer.
    assert!(wrote(&ends, "/gate/ends.after", b"after\n"), "{ends}");
    assert!(md["capture"]["gaps"][0]["from"].as_f64().is_some(), "{md}");

    // 2. The API server goes down with a task running; the daemon is
    // killed too, so it also starts with the API server down.
    create(
        &kc,
        &gated_pod(
            &ns,
            "outage",
            &shared,
            &[("mid", "during"), ("go", "after")],
        ),
    );
    let outage_uid = uid_of(&wait_running(&kc, &ns, "outage"));
    wait_traced(&outage_uid);
    let api = ApiServer::stop();
    let down_at = wall_now();
    let old = daemon_pid().expect("the roar-node daemon runs");
    signal(old, "-9");
    wait_new_daemon(old, down_at);
    let s = stats();
    assert_eq!(s["api_reachable"], false, "{s}");
    // Alive, capturing, but not ready: no pod list yet.
    wait_until("/healthz answers", Duration::from_secs(30), || {
        daemon_http_get("/healthz").0 == 200
    });
    let (code, body) = daemon_http_get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("pod cache not synced"), "{body}");
    assert_eq!(daemon_metric("roar_node_api_server_reachable"), Some(0.0));
    // The task works while the API server is down, under a daemon that
    // started while it was down.
    fs::write(shared.join("outage.mid"), "").unwrap();
    fs::write(shared.join("outage.go"), "").unwrap();
    wait_until("the task ends", Duration::from_secs(30), || {
        shared.join("outage.after").exists()
    });
    // The daemon has closed the task while the API server is down: its
    // record is built and waits for the pod's identity.
    wait_until(
        "the task's record waits for the API server",
        Duration::from_secs(30),
        || stats()["tasks"]["records_pending"].as_u64() >= Some(1),
    );
    api.start();
    let rec = one_record(&outage_uid, Duration::from_secs(120));
    assert_eq!(rec["exit_code"], 0);
    assert_eq!(rec["backend_metadata"]["capture"]["partial"], true);
    // Hashed by the daemon that started while the API server was down.
    assert_eq!(
        write_hash(&rec, "/gate/outage.after"),
        Some(blake3_bytes(b"after\n")),
        "{rec}"
    );
    wait_until("the watch is back", Duration::from_secs(60), || {
        let s = stats();
        s["api_reachable"] == true && s["watch_healthy"] == true
    });
    wait_until("/readyz says ready again", Duration::from_secs(60), || {
        daemon_http_get("/readyz").0 == 200
    });
    let _ = kubectl(&kc)
        .args(["delete", "namespace", &ns, "--wait=false"])
        .status();
}
