//! End to end on a real Kubernetes cluster: the roar-node DaemonSet traces
//! OSMO-shaped task pods (osmo-init, osmo-ctrl, a user container, osmo.*
//! labels, opted in by the pod template of docs/osmo.md) and a plain
//! opted-in pod, and writes one roar record per traced container run; pods
//! without (or with a malformed) opt-in get none.
//!
//! Runs only with `ROAR_NODE_K8S=1`, against the local single-node cluster
//! with roar-node installed by the chart: `cargo xtask e2e-k8s` starts the
//! cluster if needed, pushes the images to its registry, installs the
//! chart and runs this test. Skipped (and says so) otherwise; a failure
//! under CI.
//!
//! One workflow runs once (`run_workflow`); each check below is a named
//! step over what it produced.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use roar_node_tests::{k8s::*, *};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);

fn find<'a>(recs: &'a [(String, Value)], container: &str) -> &'a Value {
    let m: Vec<_> = recs
        .iter()
        .filter(|(_, f)| f["backend_metadata"]["container"]["name"] == container)
        .collect();
    assert_eq!(m.len(), 1, "records of container {container}: {m:#?}");
    &m[0].1
}

fn artifact<'a>(list: &'a Value, path: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|a| a["path"] == path)
}

fn wait_records(uids: &[(&str, usize)], timeout: Duration) -> BTreeMap<String, Value> {
    let t0 = Instant::now();
    loop {
        let all = bundles();
        if uids.iter().all(|(u, n)| records_of(&all, u).len() >= *n) {
            return all;
        }
        assert!(
            t0.elapsed() < timeout,
            "records missing after {timeout:?}: {:?}; stats {}",
            uids.iter()
                .map(|(u, n)| (u, n, records_of(&all, u).len()))
                .collect::<Vec<_>>(),
            stats()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn id(seed: &str) -> String {
    // OSMO's uuids are 32 hex digits.
    blake3_bytes(format!("{seed}:{:?}:{}", Instant::now(), std::process::id()).as_bytes())[..32]
        .to_string()
}

/// A finished pod: its object (as the API server has it) and UID.
struct Done {
    pod: Value,
    uid: String,
}

impl Done {
    fn of(pod: Value) -> Self {
        let uid = uid_of(&pod);
        Self { pod, uid }
    }
}

/// The workflow's tasks and pods, once all have finished.
struct Workflow {
    kc: PathBuf,
    ns: String,
    shared: PathBuf,
    workflow_uuid: String,
    produce: OsmoTask,
    consume: OsmoTask,
    fail: OsmoTask,
    typo: OsmoTask,
    flaky0: OsmoTask,
    flaky1: OsmoTask,
    plain_name: String,
    pods: BTreeMap<&'static str, Done>,
    /// blake3 of what `produce` wrote.
    data_hash: String,
    unattributed_before: u64,
}

impl Workflow {
    fn uid(&self, which: &str) -> &str {
        &self.pods[which].uid
    }
}

/// Runs the workflow: 1. produce -> consume (the DAG edge), 2. a task that
/// exits 3, 3. a task without opt-in, 4. a retried task, 5. a malformed
/// opt-in, 6. a plain (non-OSMO) opted-in pod, 7. a container the kubelet
/// restarts; waits until every pod has finished.
fn run_workflow() -> Workflow {
    let kc = kubeconfig();
    let run = &id("run")[..8];
    let ns = format!("roar-e2e-{run}");
    let shared = PathBuf::from(format!("/var/tmp/roar-node-e2e/{run}"));
    create_namespace(&kc, &ns);
    let unattributed_before = stats()["attribution"]["unattributed"].as_u64().unwrap();
    let workflow_uuid = id("workflow");
    let task = |name: &str, retry: u32, input: Option<&str>, script: &str, opt_in: bool| OsmoTask {
        namespace: ns.clone(),
        workflow_name: "e2e".into(),
        workflow_uuid: workflow_uuid.clone(),
        task_name: name.into(),
        task_uuid: id(name),
        retry_id: retry,
        input: input.map(String::from),
        script: script.into(),
        opt_in,
        shared_dir: shared.clone(),
    };
    let mut pods = BTreeMap::new();

    let produce = task(
        "produce",
        0,
        None,
        "head -c 200000 /dev/urandom > /osmo/data/output/data.bin",
        true,
    );
    create(&kc, &produce.pod());
    let produce_pod = wait_pod_done(&kc, &ns, &produce.pod_name(), TIMEOUT);
    assert_eq!(exit_code(&produce_pod, "produce"), Some(0));
    pods.insert("produce", Done::of(produce_pod));
    let data_hash = blake3_file(shared.join("produce/data.bin"));

    let consume = task(
        "consume",
        0,
        Some("produce/data.bin"),
        "wc -c < /osmo/data/input/0/data.bin > /osmo/data/output/size.txt",
        true,
    );
    let fail = task(
        "fail",
        0,
        None,
        "echo partial > /osmo/data/output/partial.txt; exit 3",
        true,
    );
    let quiet = task(
        "quiet",
        0,
        None,
        "echo not traced > /osmo/data/output/q.txt",
        false,
    );
    let flaky_uuid = id("flaky");
    let flaky = |retry: u32, code: i32| OsmoTask {
        task_uuid: flaky_uuid.clone(),
        ..task(
            "flaky",
            retry,
            None,
            &format!("echo attempt {retry} > /osmo/data/output/attempt.txt; exit {code}"),
            true,
        )
    };
    let flaky0 = flaky(0, 1);
    for t in [&consume, &fail, &quiet, &flaky0] {
        create(&kc, &t.pod());
    }
    let typo = task("typo", 0, None, "echo typo > /osmo/data/output/t.txt", true);
    let mut typo_pod = typo.pod();
    typo_pod["metadata"]["annotations"]["roar-node/trace"] = json!("yes");
    create(&kc, &typo_pod);
    // restartPolicy OnFailure: one record per run, restart count in the
    // task id.
    let restart_name = format!("restart-{run}");
    let mut restart_pod = with_volume(
        shell_pod(
            &ns,
            &restart_name,
            "if [ -e /data/ran ]; then echo second > /data/run.txt; exit 0; fi; \
             echo first > /data/run.txt; touch /data/ran; exit 1",
            true,
        ),
        json!({"name": "data", "emptyDir": {}}),
        "/data",
        false,
    );
    restart_pod["spec"]["restartPolicy"] = json!("OnFailure");
    create(&kc, &restart_pod);
    let plain_name = format!("plain-{run}");
    create(
        &kc,
        &shell_pod(
            &ns,
            &plain_name,
            "mkdir -p /work && echo plain > /work/out.txt && cat /work/out.txt",
            true,
        ),
    );
    for (key, name) in [
        ("consume", consume.pod_name()),
        ("fail", fail.pod_name()),
        ("quiet", quiet.pod_name()),
        ("flaky0", flaky0.pod_name()),
        ("typo", typo.pod_name()),
        ("plain", plain_name.clone()),
        ("restart", restart_name),
    ] {
        pods.insert(key, Done::of(wait_pod_done(&kc, &ns, &name, TIMEOUT)));
    }
    assert_eq!(exit_code(&pods["fail"].pod, "fail"), Some(3));
    assert_eq!(exit_code(&pods["flaky0"].pod, "flaky"), Some(1));
    let flaky1 = flaky(1, 0);
    pods.insert("flaky1", retry(&kc, &ns, &flaky0, &flaky1));
    assert_ne!(pods["flaky0"].uid, pods["flaky1"].uid);
    Workflow {
        kc,
        ns,
        shared,
        workflow_uuid,
        produce,
        consume,
        fail,
        typo,
        flaky0,
        flaky1,
        plain_name,
        pods,
        data_hash,
        unattributed_before,
    }
}

/// OSMO's retry: the failed pod deleted (its finalizer off first), a new
/// one with the same name (a new UID) and osmo.retry_id incremented.
fn retry(kc: &Path, ns: &str, failed: &OsmoTask, again: &OsmoTask) -> Done {
    osmo_delete(kc, ns, &failed.pod_name());
    assert_eq!(again.pod_name(), failed.pod_name());
    create(kc, &again.pod());
    Done::of(wait_pod_done(kc, ns, &again.pod_name(), TIMEOUT))
}

/// The records of every traced pod, once all are written.
fn wait_all_records(w: &Workflow) -> BTreeMap<String, Value> {
    let want = [
        ("produce", 2),
        ("consume", 2),
        ("fail", 2),
        ("flaky0", 2),
        ("flaky1", 2),
        ("plain", 1),
        ("restart", 2),
    ];
    let uids: Vec<(&str, usize)> = want.iter().map(|(k, n)| (w.uid(k), *n)).collect();
    wait_records(&uids, Duration::from_secs(60))
}

/// The pods as the API server holds them carry the documented template's
/// annotation as the string "true"; the one without opt-in has none.
fn opted_in_pods_carry_the_template_annotation_as_a_string(w: &Workflow) {
    for key in ["produce", "consume", "fail", "flaky0", "flaky1"] {
        let a = &w.pods[key].pod["metadata"]["annotations"];
        assert_eq!(a["roar-node/trace"], json!("true"), "{key}: {a}");
    }
    let quiet = &w.pods["quiet"].pod["metadata"]["annotations"];
    assert!(quiet.get("roar-node/trace").is_none(), "{quiet}");
}

/// What an unquoted `roar-node/trace: true` in a template would give OSMO
/// to submit: the API server refuses the pod.
fn api_server_refuses_an_unquoted_annotation(w: &Workflow) {
    let mut pod = shell_pod(&w.ns, "unquoted", "true", false);
    pod["metadata"]["annotations"] = json!({"roar-node/trace": true});
    let mut c = kubectl(&w.kc);
    c.args(["create", "-f", "-"]);
    let (ok, _, err) = run_with(c, &pod.to_string());
    assert!(!ok, "the API server took a boolean annotation");
    assert!(err.contains("annotations"), "{err}");
}

/// One record per traced container: the user container and osmo-ctrl,
/// never osmo-init, with roar's k8s task id and OSMO's identity.
fn one_record_per_traced_container(w: &Workflow, all: &BTreeMap<String, Value>) {
    for (t, key, code) in [
        (&w.produce, "produce", 0),
        (&w.consume, "consume", 0),
        (&w.fail, "fail", 3),
        (&w.flaky0, "flaky0", 1),
        (&w.flaky1, "flaky1", 0),
    ] {
        let uid = w.uid(key);
        let recs = records_of(all, uid);
        assert_eq!(recs.len(), 2, "{}: {recs:#?}", t.task_name);
        let user = find(&recs, &t.container_name());
        let ctrl = find(&recs, "osmo-ctrl");
        assert_eq!(user["task_id"], format!("{uid}:{}:0:0", t.container_name()));
        assert_eq!(ctrl["task_id"], format!("{uid}:osmo-ctrl:0:0"));
        assert_eq!(user["task_name"], t.task_name.as_str());
        // roar ingests these bundles as k8s tasks: backend k8s.
        assert_eq!(user["backend"], "k8s");
        assert_eq!(user["exit_code"], code);
        assert_eq!(ctrl["exit_code"], 0);
        let md = &user["backend_metadata"];
        assert_eq!(md["execution_role"], "user");
        assert_eq!(ctrl["backend_metadata"]["execution_role"], "osmo-ctrl");
        assert_eq!(md["exit_code_source"], "container_status");
        assert_eq!(md["pod"]["namespace"], w.ns.as_str());
        assert_eq!(md["pod"]["name"], t.pod_name().as_str());
        assert_eq!(md["pod"]["node"], user["node_id"]);
        assert_eq!(md["container"]["image"], OSMO_IMAGE);
        assert!(
            md["container"]["image_digest"]
                .as_str()
                .is_some_and(|d| d.contains("sha256:")),
            "{md}"
        );
        assert_eq!(md["osmo"]["osmo.task_uuid"], t.task_uuid.as_str());
        assert_eq!(md["osmo"]["osmo.workflow_uuid"], w.workflow_uuid.as_str());
        assert_eq!(md["osmo"]["osmo.retry_id"], t.retry_id.to_string());
        // The user's command, not osmo_exec.
        assert_eq!(md["argv"], json!(["/bin/sh", "-c", t.script]));
        assert_eq!(md["command_parent"], "osmo_exec");
        assert_eq!(md["capture"]["events_lost"], 0);
        assert_eq!(
            md["capture"]["partial"], false,
            "{} inexact: {}",
            md["capture"], md["inexact_paths"]
        );
        assert!(
            !recs
                .iter()
                .any(|(_, f)| f["backend_metadata"]["container"]["name"] == "osmo-init")
        );
    }
}

/// Reads, writes and their hashes, along produce -> osmo-ctrl's upload ->
/// consume, and a failed task's partial output.
fn reads_writes_and_hashes(w: &Workflow, all: &BTreeMap<String, Value>) {
    let data_hash = w.data_hash.as_str();
    let recs = records_of(all, w.uid("produce"));
    let produced = find(&recs, "produce");
    let wr = artifact(&produced["writes"], "/osmo/data/output/data.bin")
        .unwrap_or_else(|| panic!("{}", produced["writes"]));
    assert_eq!(wr["hash"], data_hash);
    assert_eq!(wr["size"], 200_000);
    let upload = find(&recs, "osmo-ctrl");
    assert_eq!(
        artifact(&upload["reads"], "/osmo/data/output/data.bin").unwrap()["hash"],
        data_hash
    );
    assert_eq!(
        artifact(&upload["writes"], "/shared/produce/data.bin").unwrap()["hash"],
        data_hash
    );
    let recs = records_of(all, w.uid("consume"));
    let consumed = find(&recs, "consume");
    assert_eq!(
        artifact(&consumed["reads"], "/osmo/data/input/0/data.bin")
            .unwrap_or_else(|| panic!("{}", consumed["reads"]))["hash"],
        data_hash
    );
    assert_eq!(
        artifact(&consumed["writes"], "/osmo/data/output/size.txt").unwrap()["hash"],
        blake3_bytes(b"200000\n").as_str()
    );
    let recs = records_of(all, w.uid("fail"));
    let failed = find(&recs, "fail");
    assert_eq!(
        artifact(&failed["writes"], "/osmo/data/output/partial.txt").unwrap()["hash"],
        blake3_bytes(b"partial\n").as_str()
    );
}

/// The retry is a record of its own, in a bundle of its own.
fn retry_is_a_record_of_its_own(w: &Workflow, all: &BTreeMap<String, Value>) {
    let r0 = records_of(all, w.uid("flaky0"));
    let r1 = records_of(all, w.uid("flaky1"));
    let b0: Vec<_> = r0.iter().map(|(n, _)| n.clone()).collect();
    assert!(r1.iter().all(|(n, _)| !b0.contains(n)), "{b0:?} {r1:?}");
    assert_eq!(
        artifact(
            &find(&r1, "flaky")["writes"],
            "/osmo/data/output/attempt.txt"
        )
        .unwrap()["hash"],
        blake3_bytes(b"attempt 1\n").as_str()
    );
}

/// Nothing for the pod that did not opt in, nor for the malformed
/// annotation, which the daemon names in a warning.
fn no_record_without_a_valid_opt_in(w: &Workflow, all: &BTreeMap<String, Value>) {
    assert!(records_of(all, w.uid("quiet")).is_empty());
    assert!(records_of(all, w.uid("typo")).is_empty());
    let logs = daemon_logs(&w.kc);
    assert!(
        logs.contains(&format!("pod {}/{}", w.ns, w.typo.pod_name())) && logs.contains("\"yes\""),
        "no warning about the malformed annotation in:\n{logs}"
    );
}

/// The restarted container: two records, restart counts 0 and 1.
fn restarted_container_has_a_record_per_run(w: &Workflow, all: &BTreeMap<String, Value>) {
    let ru = w.uid("restart");
    let mut runs: Vec<(String, i64, String)> = records_of(all, ru)
        .iter()
        .map(|(_, f)| {
            (
                f["task_id"].as_str().unwrap().to_string(),
                f["exit_code"].as_i64().unwrap(),
                artifact(&f["writes"], "/data/run.txt")
                    .map(|a| a["hash"].as_str().unwrap().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        [
            (format!("{ru}:main:0:0"), 1, blake3_bytes(b"first\n")),
            (format!("{ru}:main:0:1"), 0, blake3_bytes(b"second\n")),
        ]
    );
}

/// A plain Kubernetes pod: backend k8s, role task, pod/container name.
fn plain_pod_is_a_k8s_task(w: &Workflow, all: &BTreeMap<String, Value>) {
    let plu = w.uid("plain");
    let plain = records_of(all, plu);
    assert_eq!(plain.len(), 1, "{plain:#?}");
    let f = &plain[0].1;
    assert_eq!(f["backend"], "k8s");
    assert_eq!(f["task_id"], format!("{plu}:main:0:0"));
    assert_eq!(f["task_name"], format!("{}/main", w.plain_name));
    assert_eq!(f["backend_metadata"]["execution_role"], "task");
    assert!(f["backend_metadata"].get("osmo").is_none());
    assert_eq!(
        artifact(&f["writes"], "/work/out.txt").unwrap()["hash"],
        blake3_bytes(b"plain\n").as_str()
    );
}

/// Zero unattributed events during the test.
fn no_event_went_unattributed(w: &Workflow) {
    let s = stats();
    assert_eq!(
        s["attribution"]["unattributed"].as_u64().unwrap(),
        w.unattributed_before,
        "{s}"
    );
}

/// roar-cli 0.4.7 makes a DAG edge produce -> consume.
fn roar_links_produce_to_consume(w: &Workflow, all: &BTreeMap<String, Value>) {
    let roar = Roar::get();
    let work = Work::new("k8s-e2e");
    let dir = work.path("bundles");
    fs::create_dir_all(&dir).unwrap();
    let mut n = 0;
    for key in ["produce", "consume", "fail", "flaky0", "flaky1"] {
        for (name, _) in records_of(all, w.uid(key)) {
            fs::copy(node_state().join("bundles").join(&name), dir.join(&name)).unwrap();
            n += 1;
        }
    }
    roar.init(&work.dir);
    let said = roar.run(&work.dir, &["k8s", "ingest-bundles", dir.to_str().unwrap()]);
    assert!(
        said.contains(&format!("{n} fragment(s) merged")),
        "roar merged fewer fragments than it read:\n{said}"
    );
    let rows = roar.query(
        &work.dir,
        "select o.artifact_id from jobs j1 join job_outputs o on o.job_id = j1.id \
         join job_inputs i on i.artifact_id = o.artifact_id join jobs j2 on i.job_id = j2.id \
         where j1.command = 'k8s_task:produce' and j2.command = 'k8s_task:consume'",
    );
    assert!(!rows.is_empty(), "no edge produce -> consume in roar's DAG");
}

#[test]
fn osmo_shaped_workflow_on_a_real_cluster() {
    if !enabled() {
        return;
    }
    let w = run_workflow();
    opted_in_pods_carry_the_template_annotation_as_a_string(&w);
    api_server_refuses_an_unquoted_annotation(&w);
    let all = wait_all_records(&w);
    one_record_per_traced_container(&w, &all);
    reads_writes_and_hashes(&w, &all);
    retry_is_a_record_of_its_own(&w, &all);
    no_record_without_a_valid_opt_in(&w, &all);
    restarted_container_has_a_record_per_run(&w, &all);
    plain_pod_is_a_k8s_task(&w, &all);
    no_event_went_unattributed(&w);
    roar_links_produce_to_consume(&w, &all);

    delete_namespace(&w.kc, &w.ns);
    let _ = fs::remove_dir_all(&w.shared);
}
