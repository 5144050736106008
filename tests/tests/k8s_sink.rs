//! The object-store sink on the real local cluster, against a real S3
//! server (moto) on this machine's loopback, which the daemon reaches over
//! the host network, credentials from a Secret: the OSMO-shaped workflow's
//! records in the bucket under the documented layout, `roar-node collect
//! --workflow` + roar's DAG; the store down for 30 s; the daemon killed
//! during an upload; the node's state wiped; bad configurations.
//!
//! Runs only with `ROAR_NODE_K8S=1` (cargo runs test binaries one after
//! the other, so this never overlaps the other cluster tests). It changes
//! the DaemonSet's environment and puts it back at the end.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use roar_node_tests::{k8s::*, s3::S3, *};
use serde_json::Value;

const NS: &str = "roar-node";
const SECRET: &str = "roar-node-sink-test";
const PREFIX: &str = "cluster";
/// The variables this test sets on the DaemonSet (removed at the end).
const VARS: [&str; 7] = [
    "ROAR_NODE_SINK",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
    "AWS_REGION",
    "AWS_METADATA_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
];

fn id(seed: &str) -> String {
    blake3_bytes(format!("{seed}:{:?}:{}", Instant::now(), std::process::id()).as_bytes())[..32]
        .to_string()
}

/// Sets the daemon's environment (`None`: removes the variable) and waits
/// for the new daemon to write its stats. `secret`: the AWS keys from the
/// Secret (as an operator would give them), else none at all.
fn configure(kc: &Path, vars: &[(&str, Option<String>)], secret: bool) {
    let old = daemon_pid();
    let after = wall_now();
    let mut args: Vec<String> = ["-n", NS, "set", "env", "ds/roar-node"]
        .map(String::from)
        .to_vec();
    for (k, v) in vars {
        args.push(match v {
            Some(v) => format!("{k}={v}"),
            None => format!("{k}-"),
        });
    }
    if secret {
        args.push(format!("--from=secret/{SECRET}"));
    } else {
        for k in ["AWS_ACCESS_KEY_ID-", "AWS_SECRET_ACCESS_KEY-"] {
            if !args.iter().any(|a| a == k) {
                args.push(k.into());
            }
        }
    }
    // One change, one rollout: the next daemon is the one configured.
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kubectl_ok(kc, &args, None);
    // `set env` may roll the DaemonSet more than once: wait for the
    // last template's one pod, then for its daemon.
    wait_until("the DaemonSet rolled out", Duration::from_secs(180), || {
        rolled_out(kc)
    });
    if let Some(old) = old {
        wait_new_daemon(old, after);
    }
}

/// The DaemonSet's current template is the one running, in one pod.
fn rolled_out(kc: &Path) -> bool {
    let ds = kubectl_ok(
        kc,
        &[
            "-n",
            NS,
            "get",
            "ds/roar-node",
            "-o",
            "jsonpath={.metadata.generation} {.status.observedGeneration} {.status.updatedNumberScheduled} {.status.desiredNumberScheduled}",
        ],
        None,
    );
    let n: Vec<&str> = ds.split_whitespace().collect();
    let pods = kubectl_ok(
        kc,
        &[
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=roar-node",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
        None,
    );
    n.len() == 4 && n[0] == n[1] && n[2] == n[3] && pods.trim() == "Running"
}

fn sink_env(s3: &S3, url: &str) -> Vec<(&'static str, Option<String>)> {
    let mut v: Vec<(&str, Option<String>)> = vec![("ROAR_NODE_SINK", Some(url.into()))];
    for (k, val) in s3.env() {
        if !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET") {
            let k: &'static str = VARS.iter().find(|n| **n == k).expect("a known variable");
            v.push((k, Some(val)));
        }
    }
    v
}

fn ready() -> (u16, String) {
    daemon_http_get("/readyz")
}

/// Waits for /readyz to answer 200; if it does not, says what it answers,
/// the daemon's sink stats, its environment and the end of its log.
fn wait_ready(kc: &Path, what: &str) {
    let t0 = Instant::now();
    // A rollout on a loaded machine: the new pod may take a while to start.
    while t0.elapsed() < Duration::from_secs(180) {
        if ready().0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let run = |args: &[&str]| {
        kubectl(kc)
            .args(args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default()
    };
    let pods = run(&["-n", NS, "get", "pods", "-o", "wide"]);
    let env = run(&[
        "-n",
        NS,
        "get",
        "ds/roar-node",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    ]);
    let logs = run(&[
        "-n",
        NS,
        "logs",
        "-l",
        "app.kubernetes.io/name=roar-node",
        "--tail=30",
    ]);
    panic!(
        "{what}: /readyz {:?}\nsink stats: {}\npods: {pods}\nenv: {env}\nlog: {logs}",
        ready(),
        std::panic::catch_unwind(stats)
            .map(|s| s["sink"].clone())
            .unwrap_or_default(),
    );
}

/// The task ids with a record object under `dir` (a key prefix).
fn tasks_in(s3: &S3, dir: &str) -> Vec<String> {
    s3.keys(dir)
        .iter()
        .filter_map(|k| {
            k.strip_suffix(".json")?
                .rsplit('/')
                .next()
                .map(|t| t.replace("=3A", ":"))
        })
        .collect()
}

/// The record objects of a pod's tasks (its traced containers), by task id.
fn objects_of_pod(s3: &S3, uid: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in s3.keys(&format!("{PREFIX}/")) {
        let Some(task) = k.strip_suffix(".json").and_then(|t| t.rsplit('/').next()) else {
            continue;
        };
        if k.contains(uid) && !k.starts_with(&format!("{PREFIX}/_by-workflow/")) {
            m.entry(task.replace("=3A", ":"))
                .or_default()
                .push(k.clone());
        }
    }
    m
}

/// The task's user container has its record, and every task of the pod
/// has exactly one object.
fn delivered_once(s3: &S3, uid: &str, container: &str) -> bool {
    let m = objects_of_pod(s3, uid);
    m.contains_key(&format!("{uid}:{container}:0:0")) && m.values().all(|keys| keys.len() == 1)
}

/// No record is in the bucket twice: each object's fragment is its own
/// task's, and no task has two objects.
fn assert_no_duplicates(s3: &S3) {
    let mut seen = BTreeMap::new();
    for k in s3.keys(&format!("{PREFIX}/")) {
        if !k.ends_with(".json") {
            continue;
        }
        let v: Value = serde_json::from_slice(&s3.get(&k)).unwrap();
        let frags = v["fragments"].as_array().unwrap();
        assert_eq!(frags.len(), 1, "{k}");
        let task = frags[0]["task_id"].as_str().unwrap().to_string();
        assert!(
            k.ends_with(&format!("/{}.json", task.replace(':', "=3A"))),
            "{k}: {task}"
        );
        if let Some(other) = seen.insert(task.clone(), k.clone()) {
            panic!("task {task} twice: {other} and {k}");
        }
    }
}

struct Cluster {
    kc: PathBuf,
    ns: String,
    shared: PathBuf,
    workflow_uuid: String,
}

impl Cluster {
    fn task(&self, name: &str, input: Option<&str>, script: &str) -> OsmoTask {
        OsmoTask {
            namespace: self.ns.clone(),
            workflow_name: "sink".into(),
            workflow_uuid: self.workflow_uuid.clone(),
            task_name: name.into(),
            task_uuid: id(name),
            retry_id: 0,
            input: input.map(String::from),
            script: script.into(),
            opt_in: true,
            shared_dir: self.shared.clone(),
        }
    }

    /// Runs a task to its end; its pod's UID.
    fn run(&self, t: &OsmoTask) -> String {
        create(&self.kc, &t.pod());
        let pod = wait_pod_done(&self.kc, &self.ns, &t.pod_name(), Duration::from_secs(120));
        assert_eq!(exit_code(&pod, &t.container_name()), Some(0), "{pod}");
        uid_of(&pod)
    }
}

#[test]
fn records_reach_the_bucket_through_outages_crashes_and_bad_configuration() {
    if !enabled() {
        return;
    }
    let kc = kubeconfig();
    let s3 = S3::start("roar-cluster");
    let url = s3.url(PREFIX);
    let run = &id("run")[..8];
    let c = Cluster {
        kc: kc.clone(),
        ns: format!("roar-sink-{run}"),
        shared: PathBuf::from(format!("/var/tmp/roar-node-e2e/sink-{run}")),
        workflow_uuid: id("workflow"),
    };
    create_namespace(&kc, &c.ns);
    let _ = kubectl(&kc)
        .args(["-n", NS, "delete", "secret", SECRET])
        .output();
    kubectl_ok(
        &kc,
        &[
            "-n",
            NS,
            "create",
            "secret",
            "generic",
            SECRET,
            "--from-literal=AWS_ACCESS_KEY_ID=roar-test-key",
            "--from-literal=AWS_SECRET_ACCESS_KEY=roar-test-secret",
        ],
        None,
    );
    configure(&kc, &sink_env(&s3, &url), true);
    wait_ready(&kc, "the daemon is ready with its sink");

    workflow_lands_in_the_bucket(&c, &s3, &url);
    store_down_for_30_seconds(&c, &s3);
    killed_during_an_upload(&c, &s3);
    state_wiped_after_delivery(&c, &s3);
    bad_configuration_keeps_records_in_the_spool(&c, &s3, &url);
    assert_no_duplicates(&s3);

    // Back as it was: no sink, records in the node's bundle directory.
    let none: Vec<(&str, Option<String>)> = VARS.iter().map(|v| (*v, None)).collect();
    configure(&kc, &none, false);
    kubectl_ok(&kc, &["-n", NS, "delete", "secret", SECRET], None);
    collect_from_the_cluster(&c);
    let _ = kubectl(&kc)
        .args(["delete", "namespace", &c.ns, "--wait=false"])
        .output();
    let _ = fs::remove_dir_all(&c.shared);
}

/// produce -> consume: both records under PREFIX/<ns>/<workflow>/, each
/// once, with their index markers; none left on the node; `roar-node
/// collect --workflow` and roar's DB show the edge.
fn workflow_lands_in_the_bucket(c: &Cluster, s3: &S3, url: &str) {
    let produce = c.task(
        "produce",
        None,
        "head -c 100000 /dev/urandom > /osmo/data/output/data.bin",
    );
    let produce_uid = c.run(&produce);
    let consume = c.task(
        "consume",
        Some("produce/data.bin"),
        "wc -c < /osmo/data/input/0/data.bin > /osmo/data/output/size.txt",
    );
    let consume_uid = c.run(&consume);
    let dir = format!("{PREFIX}/{}/sink-1/", c.ns);
    let want = [
        format!("{produce_uid}:produce:0:0"),
        format!("{consume_uid}:consume:0:0"),
    ];
    wait_until(
        "both user tasks' records in the bucket",
        Duration::from_secs(60),
        || {
            let got = tasks_in(s3, &dir);
            want.iter().all(|w| got.contains(w))
        },
    );
    for t in &want {
        let e = t.replace(':', "=3A");
        let keys = s3.keys(&format!("{PREFIX}/"));
        assert_eq!(
            keys.iter()
                .filter(|k| k.ends_with(&format!("/{e}.json")))
                .count(),
            1,
            "{keys:?}"
        );
        assert!(
            keys.contains(&format!("{PREFIX}/_by-workflow/sink-1/{}/{e}", c.ns)),
            "{keys:?}"
        );
    }
    wait_until("the spool is empty", Duration::from_secs(30), || {
        stats()["spool"]["undelivered"] == 0
    });
    assert!(
        records_of(&bundles(), &produce_uid).is_empty(),
        "a delivered record's node copy is removed"
    );

    let w = Work::new("k8s-collect");
    let out = w.path("collected");
    let o = Command::new(bin())
        .args([
            "collect",
            "--from",
            url,
            "--workflow",
            "sink-1",
            "--out",
            out.to_str().unwrap(),
        ])
        .envs(s3.env())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{said}");
    assert!(said.contains("1 workflows"), "{said}");
    let roar = Roar::get();
    roar.init(&w.dir);
    roar.run(&w.dir, &["k8s", "ingest-bundles", out.to_str().unwrap()]);
    assert!(
        roar.edges(&w.dir, "produce", "consume", None) > 0,
        "no edge produce -> consume in roar's DB"
    );
}

/// The store unreachable for 30 s while a task finishes: its record waits
/// in the spool (seen in /metrics and /readyz), arrives after, once.
fn store_down_for_30_seconds(c: &Cluster, s3: &S3) {
    let down_at = Instant::now();
    s3.set_down(true);
    let uid = c.run(&c.task("offline", None, "echo offline > /osmo/data/output/o.txt"));
    wait_until(
        "the record waits in the spool",
        Duration::from_secs(60),
        || {
            daemon_metric("roar_node_records_spooled").is_some_and(|n| n >= 1.0)
                && daemon_metric("roar_node_sink_up") == Some(0.0)
        },
    );
    let (code, body) = ready();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("sink refuses records") && body.contains("store unreachable"),
        "{body}"
    );
    while down_at.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let waited = daemon_metric("roar_node_spool_oldest_record_age_seconds").unwrap();
    assert!(waited >= 5.0, "the wait shows in /metrics: {waited}");
    assert!(objects_of_pod(s3, &uid).is_empty());
    let redelivered = daemon_metric("roar_node_records_redelivered_total").unwrap_or(0.0);
    s3.set_down(false);
    wait_until(
        "the record arrives after the outage",
        Duration::from_secs(120),
        || delivered_once(s3, &uid, "offline"),
    );
    wait_until("the spool empties", Duration::from_secs(30), || {
        daemon_metric("roar_node_records_spooled") == Some(0.0)
            && daemon_metric("roar_node_sink_up") == Some(1.0)
    });
    assert!(delivered_once(s3, &uid, "offline"), "none duplicated");
    assert!(daemon_metric("roar_node_records_redelivered_total").unwrap() > redelivered);
    assert_eq!(ready().0, 200);
}

/// The store hangs mid-upload and the daemon is killed: after the
/// restart the record is delivered from the spool, one object per task.
fn killed_during_an_upload(c: &Cluster, s3: &S3) {
    s3.freeze(true);
    let uid = c.run(&c.task("crash", None, "echo crash > /osmo/data/output/c.txt"));
    wait_until(
        "the record is spooled, its upload hanging",
        Duration::from_secs(60),
        || {
            stats()["spool"]["undelivered"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        },
    );
    let old = daemon_pid().expect("a daemon");
    let after = wall_now();
    signal(old, "-9");
    s3.freeze(false);
    wait_new_daemon(old, after);
    wait_until(
        "the record arrives after the restart",
        Duration::from_secs(120),
        || delivered_once(s3, &uid, "crash"),
    );
    wait_until("the spool empties", Duration::from_secs(60), || {
        stats()["spool"]["undelivered"] == 0
    });
    let objects = objects_of_pod(s3, &uid);
    assert!(
        delivered_once(s3, &uid, "crash"),
        "exactly one object per task: {objects:?}"
    );
}

/// The node's state directory wiped (a reclaimed node): every record is
/// still in the bucket, and the next daemon adds nothing twice.
fn state_wiped_after_delivery(_c: &Cluster, s3: &S3) {
    let before = s3.keys(&format!("{PREFIX}/"));
    assert!(!before.is_empty());
    let old = daemon_pid().expect("a daemon");
    let after = wall_now();
    signal(old, "-9");
    for sub in ["spool", "bundles", "unsent"] {
        let _ = fs::remove_dir_all(node_state().join(sub));
    }
    wait_new_daemon(old, after);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(s3.keys(&format!("{PREFIX}/")), before);
}

/// Without a store: `roar-node collect --from cluster` gathers the
/// namespace's records from the daemon pods through the API server.
fn collect_from_the_cluster(c: &Cluster) {
    let uid = c.run(&c.task("local", None, "echo here > /osmo/data/output/l.txt"));
    wait_until(
        "the record in the bundle directory",
        Duration::from_secs(60),
        || !records_of(&bundles(), &uid).is_empty(),
    );
    let w = Work::new("k8s-collect-cluster");
    let out = w.path("collected");
    let o = Command::new(bin())
        .args(["collect", "--from", "cluster", "--namespace", &c.ns])
        .args(["--out", out.to_str().unwrap()])
        .env("KUBECONFIG", &c.kc)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{said}");
    let names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.contains(&uid)), "{names:?}\n{said}");
    assert!(said.contains("collected "), "{said}");
}

/// A bucket that does not exist, an unknown scheme, no credentials: the
/// daemon says so in one log line and in /readyz, traces on, and keeps
/// the records in the spool; fixed, it delivers them.
fn bad_configuration_keeps_records_in_the_spool(c: &Cluster, s3: &S3, url: &str) {
    let cases = [
        ("s3://no-such-bucket/x".to_string(), true, "no such bucket"),
        ("ftp://roar-cluster/x".to_string(), true, "unknown scheme"),
        (url.to_string(), false, "no credentials"),
    ];
    let mut waiting = Vec::new();
    for (bad, secret, says) in cases {
        configure(&c.kc, &sink_env(s3, &bad), secret);
        wait_until(
            &format!("/readyz says {says}"),
            Duration::from_secs(60),
            || {
                let (code, body) = ready();
                code == 503 && body.contains(says)
            },
        );
        let logs = daemon_logs(&c.kc);
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains(says)).collect();
        assert!(!lines.is_empty(), "the log says {says}:\n{logs}");
        assert!(!logs.contains("roar-test-secret"), "no secret in the log");
        let uid = c.run(&c.task("spooled", None, "echo kept > /osmo/data/output/k.txt"));
        let n = waiting.len() as u64 + 1;
        wait_until(
            "the record is in the spool",
            Duration::from_secs(60),
            || {
                stats()["spool"]["undelivered"]
                    .as_u64()
                    .is_some_and(|u| u >= n)
            },
        );
        waiting.push(uid);
    }
    configure(&c.kc, &sink_env(s3, url), true);
    wait_until(
        "the waiting records are delivered",
        Duration::from_secs(120),
        || waiting.iter().all(|u| delivered_once(s3, u, "spooled")),
    );
    wait_ready(&c.kc, "ready again");
}
