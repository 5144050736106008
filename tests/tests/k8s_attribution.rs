//! No container without a record, on the real local cluster, when the
//! daemon learns of a container late or not from the kernel at all:
//!
//! - the pod watch held (the daemon's test-only knob) while the kubelet
//!   makes the pods' cgroups and runs them: one container ends before its
//!   pod is known, one is running; the hold lasts longer than the daemon
//!   keeps a removed cgroup no pod names;
//! - the kernel's ring buffer full (the daemon stopped with SIGSTOP while a
//!   traced pod floods it) when a new pod's cgroups are made: their mkdir
//!   events are lost.
//!
//! Each container gets a record, complete or honestly partial.
//!
//! Runs only with `ROAR_NODE_K8S=1` (`cargo xtask e2e-k8s`); the tests of
//! this file stop or hold the daemon: one at a time.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use roar_node_tests::{k8s::*, *};
use serde_json::{Value, json};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_id(seed: &str) -> String {
    blake3_bytes(format!("{seed}{:?}{}", Instant::now(), std::process::id()).as_bytes())[..8]
        .to_string()
}

fn phase(kc: &Path, ns: &str, name: &str) -> String {
    get_pod(kc, ns, name)
        .and_then(|p| p["status"]["phase"].as_str().map(String::from))
        .unwrap_or_default()
}

/// The one record of pod `uid` (waits for it).
fn record(uid: &str, timeout: Duration) -> Value {
    let mut recs = Vec::new();
    wait_until(&format!("a record for pod {uid}"), timeout, || {
        recs = records_of(&bundles(), uid);
        !recs.is_empty()
    });
    assert_eq!(recs.len(), 1, "{recs:#?}");
    recs.remove(0).1
}

/// The daemon's logs, with its previous run's (for a test that failed).
fn all_daemon_logs(kc: &Path) -> String {
    let previous = kubectl(kc)
        .args([
            "-n",
            "roar-node",
            "logs",
            "-l",
            "app.kubernetes.io/name=roar-node",
            "--previous",
            "--tail=200",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pods = kubectl(kc)
        .args([
            "-n",
            "roar-node",
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} restarts={.status.containerStatuses[0].restartCount} last={.status.containerStatuses[0].lastState}{\"\\n\"}{end}",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    format!(
        "daemon pods:\n{pods}\nprevious run:\n{previous}\nthis run:\n{}",
        daemon_logs(kc)
    )
}

/// The daemon is up and watching: its stats are fresh and its pod watch
/// healthy (a test that stopped it must not leave the next one a daemon
/// that is still restarting).
fn wait_daemon_watching() {
    wait_until(
        "the daemon is up and watching",
        Duration::from_secs(120),
        || {
            let s = std::panic::catch_unwind(stats).unwrap_or(Value::Null);
            s["time"].as_f64().is_some_and(|t| wall_now() - t < 3.0)
                && s["watch_healthy"] == true
                && s["watch_held"] != true
        },
    );
}

/// The daemon's test-only hold on its pod watch (the file it watches for),
/// taken off when dropped, even by a failed test: a hold left behind would
/// hold the next daemon's first pod list.
struct HoldFile(PathBuf);

impl HoldFile {
    fn new() -> Self {
        let p = node_state().join("test-hold-pod-watch");
        fs::write(&p, "").unwrap();
        Self(p)
    }
}

impl Drop for HoldFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The pod watch held behind the kubelet: the daemon knows the pods'
/// cgroups long before it knows the pods. `quick` runs and ends while its
/// pod is unknown; `late` is running. The hold outlasts the time the
/// daemon keeps a removed cgroup that no pod has named, so a daemon that
/// dropped it on a timer would write no record of `quick`.
#[test]
fn pod_watch_held_behind_the_kubelet() {
    if !enabled() {
        return;
    }
    let _one = serial();
    wait_daemon_watching();
    let kc = kubeconfig();
    let run = run_id("hold");
    let ns = format!("roar-hold-{run}");
    let shared = PathBuf::from(format!("/var/tmp/roar-node-e2e/hold-{run}"));
    fs::create_dir_all(&shared).unwrap();
    create_namespace(&kc, &ns);
    let hold = HoldFile::new();
    // A daemon without the setting keeps them 120 s.
    let grace = stats()["pending_grace_secs"].as_u64().unwrap_or(120);
    create(
        &kc,
        &shell_pod(
            &ns,
            "quick",
            "mkdir -p /work && echo quick > /work/q.txt",
            true,
        ),
    );
    create(&kc, &gated_pod(&ns, "late", &shared, &[("go", "after")]));
    // Settled: the daemon holds the watch's events, and the kubelet has
    // run `quick` to its end and started `late`.
    let t0 = Instant::now();
    while stats()["watch_held"] != true {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the daemon does not hold the pod watch ({}): stats {}\nlogs:\n{}",
            hold.0.display(),
            stats(),
            all_daemon_logs(&kc)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    wait_until("quick ran, late runs", Duration::from_secs(120), || {
        phase(&kc, &ns, "quick") == "Succeeded" && shared.join("late.before").exists()
    });
    let held_since = Instant::now();
    wait_until(
        "the hold outlasts the daemon's grace for removed cgroups",
        Duration::from_secs(grace + 30),
        || held_since.elapsed() > Duration::from_secs(grace + 5),
    );
    drop(hold);
    wait_until("the watch delivers again", Duration::from_secs(60), || {
        stats()["watch_held"] == false
    });
    fs::write(shared.join("late.go"), "").unwrap();
    let quick_uid = uid_of(&get_pod(&kc, &ns, "quick").unwrap());
    let late_uid = uid_of(&wait_pod_done(&kc, &ns, "late", Duration::from_secs(60)));

    // `quick` ended before anything could be seen of it: its record says
    // so (no process), with its exit code from the pod's status.
    let q = record(&quick_uid, Duration::from_secs(60));
    let cap = &q["backend_metadata"]["capture"];
    assert_eq!(cap["partial"], true, "{cap}");
    assert!(
        cap["partial_reason"]
            .as_str()
            .is_some_and(|r| r.contains("no process")),
        "{cap}"
    );
    assert_eq!(q["exit_code"], 0);
    assert_eq!(
        q["backend_metadata"]["exit_code_source"],
        "container_status"
    );
    // `late` was running when its pod became known: traced from then on,
    // partial for what came before, complete after.
    let l = record(&late_uid, Duration::from_secs(60));
    let cap = &l["backend_metadata"]["capture"];
    assert_eq!(cap["partial"], true, "{cap}");
    assert_eq!(
        write_hash(&l, "/gate/late.after"),
        Some(blake3_bytes(b"after\n")),
        "{}",
        l["writes"]
    );
    delete_namespace(&kc, &ns);
    let _ = fs::remove_dir_all(&shared);
}

/// The kernel's ring buffer full when a pod's cgroups are made: the daemon
/// is stopped (SIGSTOP) while a traced pod writes files until the buffer
/// cannot take more, and a new pod is created then. Its cgroups' mkdir
/// events are lost; the daemon, continued, finds them again (the kernel
/// counted the loss) and the new pod's container gets its record.
#[test]
fn cgroups_whose_creation_events_were_lost_are_found_again() {
    if !enabled() {
        return;
    }
    let _one = serial();
    wait_daemon_watching();
    let kc = kubeconfig();
    let run = run_id("lost");
    let ns = format!("roar-lost-{run}");
    let shared = PathBuf::from(format!("/var/tmp/roar-node-e2e/lost-{run}"));
    fs::create_dir_all(&shared).unwrap();
    create_namespace(&kc, &ns);
    // The flood: distinct files (repeats are suppressed in the kernel)
    // with 200-byte names (an event carries its path: ~330 bytes each),
    // 80,000 of them (one exec of touch per 10,000 names), half again what
    // the 16 MiB ring buffer holds, made only once the daemon is stopped
    // (`/gate/flood.go`); `/gate/flood.filled` says they are made. Under
    // /tmp, which records leave out (counted), so that its record does not
    // hash them all.
    create(
        &kc,
        &with_volume(
            shell_pod(
                &ns,
                "flood",
                "mkdir -p /tmp/f && cd /tmp/f && long=$(printf '%0200d' 0); \
                 while [ ! -e /gate/flood.go ]; do sleep 0.1; done; \
                 i=0; while [ $i -lt 8 ]; do \
                   seq 1 10000 | sed \"s/^/$i-$long-/\" | xargs touch; i=$((i+1)); done; \
                 echo filled > /gate/flood.filled; \
                 while [ ! -e /tmp/stop ]; do sleep 0.1; done",
                true,
            ),
            json!({"name": "gate", "hostPath": {"path": shared, "type": "Directory"}}),
            "/gate",
            false,
        ),
    );
    wait_until("flood runs", Duration::from_secs(90), || {
        phase(&kc, &ns, "flood") == "Running"
    });
    let flood_uid = uid_of(&get_pod(&kc, &ns, "flood").unwrap());
    wait_traced(&flood_uid);
    let daemon = daemon_pid().expect("the roar-node daemon runs");
    signal(daemon, "-STOP");
    let stopped = Instant::now();
    // Settled: the flood is made, then the target pod runs, both while the
    // daemon is stopped (SIGCONT whatever happens: a daemon left stopped
    // would fail every later test).
    let waited = std::panic::catch_unwind(|| {
        fs::write(shared.join("flood.go"), "").unwrap();
        wait_until("the flood is made", Duration::from_secs(40), || {
            shared.join("flood.filled").exists()
        });
        create(&kc, &gated_pod(&ns, "target", &shared, &[("go", "after")]));
        wait_until("target runs", Duration::from_secs(15), || {
            shared.join("target.before").exists()
        })
    });
    signal(daemon, "-CONT");
    waited.expect("the flood is made and target runs while the daemon is stopped");
    // Stopped for less than the liveness probe allows (60 s): the daemon
    // that continues is the one that was stopped.
    assert!(stopped.elapsed() < Duration::from_secs(58));
    let target_uid = uid_of(&get_pod(&kc, &ns, "target").unwrap());
    // Settled: the daemon traces it (it is in the spool).
    wait_traced(&target_uid);
    fs::write(shared.join("target.go"), "").unwrap();
    kubectl_ok(
        &kc,
        &["-n", &ns, "exec", "flood", "--", "touch", "/tmp/stop"],
        None,
    );
    let rec = record(&target_uid, Duration::from_secs(90));
    let cap = &rec["backend_metadata"]["capture"];
    // Traced from when it was found: partial, saying why.
    assert_eq!(cap["partial"], true, "{cap}");
    assert_eq!(
        write_hash(&rec, "/gate/target.after"),
        Some(blake3_bytes(b"after\n")),
        "{rec}\nlogs:\n{}",
        all_daemon_logs(&kc)
    );
    // The loss is in the flood's own record, counted.
    let flood = record(&flood_uid, Duration::from_secs(120));
    let fcap = &flood["backend_metadata"]["capture"];
    assert!(
        fcap["events_lost"].as_u64() > Some(0),
        "{fcap}\nlogs:\n{}",
        all_daemon_logs(&kc)
    );
    assert!(
        fcap["lost_by_cause"]["kernel_ring_buffer_full"].as_u64() > Some(0),
        "{fcap}"
    );
    let s = stats();
    assert!(
        s["lost_by_cause"]["kernel_ring_buffer_full"].as_u64() > Some(0),
        "{s}"
    );
    delete_namespace(&kc, &ns);
    let _ = fs::remove_dir_all(&shared);
}
