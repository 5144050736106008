//! End to end on a real Kubernetes cluster: the roar-node DaemonSet traces
//! OSMO-shaped task pods (osmo-init, osmo-ctrl, a user container, osmo.*
//! labels) and a plain opted-in pod, and writes one roar record per traced
//! container run; pods without (or with a malformed) opt-in get none.
//!
//! Runs only with `ROAR_NODE_K8S=1`, against the local single-node cluster
//! with roar-node deployed: `cargo xtask e2e-k8s` starts the cluster if
//! needed, deploys, imports the task image and runs this test. Skipped
//! (and says so) otherwise.

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use roar_node_tests::{k8s::*, *};
use serde_json::{Value, json};

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

#[test]
fn osmo_shaped_workflow_on_a_real_cluster() {
    if !enabled() {
        return;
    }
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
    let timeout = Duration::from_secs(120);

    // 1. produce -> consume: the DAG edge.
    let produce = task(
        "produce",
        0,
        None,
        "head -c 200000 /dev/urandom > /osmo/data/output/data.bin",
        true,
    );
    create(&kc, &produce.pod());
    let produce_pod = wait_pod_done(&kc, &ns, &produce.pod_name(), timeout);
    assert_eq!(exit_code(&produce_pod, "produce"), Some(0));
    let data = shared.join("produce/data.bin");
    let data_hash = blake3_file(&data);

    let consume = task(
        "consume",
        0,
        Some("produce/data.bin"),
        "wc -c < /osmo/data/input/0/data.bin > /osmo/data/output/size.txt",
        true,
    );
    // 2. a task that exits 3, 3. a pod without opt-in, 4. a retried task.
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
    // 5. a malformed opt-in annotation: a warning, no record.
    let typo = task("typo", 0, None, "echo typo > /osmo/data/output/t.txt", true);
    let mut typo_pod = typo.pod();
    typo_pod["metadata"]["annotations"]["roar-node/trace"] = json!("yes");
    create(&kc, &typo_pod);
    // 7. a container restarted by the kubelet (restartPolicy OnFailure):
    // one record per run, restart count in the task id.
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
    // 6. a plain (non-OSMO) pod that opted in: backend k8s, role task.
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
    let consume_pod = wait_pod_done(&kc, &ns, &consume.pod_name(), timeout);
    let fail_pod = wait_pod_done(&kc, &ns, &fail.pod_name(), timeout);
    let quiet_pod = wait_pod_done(&kc, &ns, &quiet.pod_name(), timeout);
    let flaky0_pod = wait_pod_done(&kc, &ns, &flaky0.pod_name(), timeout);
    let typo_pod = wait_pod_done(&kc, &ns, &typo.pod_name(), timeout);
    let plain_pod = wait_pod_done(&kc, &ns, &plain_name, timeout);
    let restart_pod = wait_pod_done(&kc, &ns, &restart_name, timeout);
    assert_eq!(exit_code(&fail_pod, "fail"), Some(3));
    assert_eq!(exit_code(&flaky0_pod, "flaky"), Some(1));
    // The retry: OSMO deletes the failed pod (its finalizer off first) and
    // creates a new one with the same name (a new UID) and osmo.retry_id
    // incremented.
    osmo_delete(&kc, &ns, &flaky0.pod_name());
    let flaky1 = flaky(1, 0);
    assert_eq!(flaky1.pod_name(), flaky0.pod_name());
    create(&kc, &flaky1.pod());
    let flaky1_pod = wait_pod_done(&kc, &ns, &flaky1.pod_name(), timeout);
    assert_ne!(uid_of(&flaky0_pod), uid_of(&flaky1_pod));

    let (pu, cu, fu, qu, f0u, f1u) = (
        uid_of(&produce_pod),
        uid_of(&consume_pod),
        uid_of(&fail_pod),
        uid_of(&quiet_pod),
        uid_of(&flaky0_pod),
        uid_of(&flaky1_pod),
    );
    let (tu, plu, ru) = (uid_of(&typo_pod), uid_of(&plain_pod), uid_of(&restart_pod));
    let all = wait_records(
        &[
            (&pu, 2),
            (&cu, 2),
            (&fu, 2),
            (&f0u, 2),
            (&f1u, 2),
            (&plu, 1),
            (&ru, 2),
        ],
        Duration::from_secs(60),
    );

    // One record per traced container: the user container and osmo-ctrl,
    // never osmo-init, with roar's k8s task id and OSMO's identity.
    for (t, uid, code) in [
        (&produce, &pu, 0),
        (&consume, &cu, 0),
        (&fail, &fu, 3),
        (&flaky0, &f0u, 1),
        (&flaky1, &f1u, 0),
    ] {
        let recs = records_of(&all, uid);
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
        assert_eq!(md["pod"]["namespace"], ns.as_str());
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
        assert_eq!(md["osmo"]["osmo.workflow_uuid"], workflow_uuid.as_str());
        assert_eq!(md["osmo"]["osmo.retry_id"], t.retry_id.to_string());
        // The user's command, not osmo_exec.
        assert_eq!(md["argv"], json!(["/bin/sh", "-c", t.script]));
        assert_eq!(md["command_parent"], "osmo_exec");
        assert_eq!(md["capture"]["events_lost"], 0);
        assert_eq!(md["capture"]["partial"], false, "{}", md["capture"]);
        assert!(
            !recs
                .iter()
                .any(|(_, f)| f["backend_metadata"]["container"]["name"] == "osmo-init")
        );
    }

    // Reads, writes and hashes.
    let recs = records_of(&all, &pu);
    let produced = find(&recs, "produce");
    let w = artifact(&produced["writes"], "/osmo/data/output/data.bin")
        .unwrap_or_else(|| panic!("{}", produced["writes"]));
    assert_eq!(w["hash"], data_hash.as_str());
    assert_eq!(w["size"], 200_000);
    let upload = find(&recs, "osmo-ctrl");
    assert_eq!(
        artifact(&upload["reads"], "/osmo/data/output/data.bin").unwrap()["hash"],
        data_hash.as_str()
    );
    assert_eq!(
        artifact(&upload["writes"], "/shared/produce/data.bin").unwrap()["hash"],
        data_hash.as_str()
    );
    let recs = records_of(&all, &cu);
    let consumed = find(&recs, "consume");
    assert_eq!(
        artifact(&consumed["reads"], "/osmo/data/input/0/data.bin")
            .unwrap_or_else(|| panic!("{}", consumed["reads"]))["hash"],
        data_hash.as_str()
    );
    assert_eq!(
        artifact(&consumed["writes"], "/osmo/data/output/size.txt").unwrap()["hash"],
        blake3_bytes(b"200000\n").as_str()
    );
    let recs = records_of(&all, &fu);
    let failed = find(&recs, "fail");
    assert_eq!(
        artifact(&failed["writes"], "/osmo/data/output/partial.txt").unwrap()["hash"],
        blake3_bytes(b"partial\n").as_str()
    );

    // The retry is a record of its own, in a bundle of its own.
    let r0 = records_of(&all, &f0u);
    let r1 = records_of(&all, &f1u);
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

    // Nothing for the pod that did not opt in, nor for the malformed
    // annotation, which the daemon names in a warning.
    assert!(records_of(&all, &qu).is_empty());
    assert!(records_of(&all, &tu).is_empty());
    let logs = daemon_logs(&kc);
    assert!(
        logs.contains(&format!("pod {ns}/{}", typo.pod_name())) && logs.contains("\"yes\""),
        "no warning about the malformed annotation in:\n{logs}"
    );

    // The restarted container: two records, restart counts 0 and 1.
    let mut runs: Vec<(String, i64, String)> = records_of(&all, &ru)
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

    // A plain Kubernetes pod: backend k8s, role task, pod/container name.
    let plain = records_of(&all, &plu);
    assert_eq!(plain.len(), 1, "{plain:#?}");
    let f = &plain[0].1;
    assert_eq!(f["backend"], "k8s");
    assert_eq!(f["task_id"], format!("{plu}:main:0:0"));
    assert_eq!(f["task_name"], format!("{plain_name}/main"));
    assert_eq!(f["backend_metadata"]["execution_role"], "task");
    assert!(f["backend_metadata"].get("osmo").is_none());
    assert_eq!(
        artifact(&f["writes"], "/work/out.txt").unwrap()["hash"],
        blake3_bytes(b"plain\n").as_str()
    );

    // Zero unattributed events during the test.
    let s = stats();
    assert_eq!(
        s["attribution"]["unattributed"].as_u64().unwrap(),
        unattributed_before,
        "{s}"
    );

    // roar-cli 0.4.7 makes a DAG edge produce -> consume.
    let roar = Roar::get();
    let w = Work::new("k8s-e2e");
    let dir = w.path("bundles");
    fs::create_dir_all(&dir).unwrap();
    let mut n = 0;
    for uid in [&pu, &cu, &fu, &f0u, &f1u] {
        for (name, _) in records_of(&all, uid) {
            fs::copy(node_state().join("bundles").join(&name), dir.join(&name)).unwrap();
            n += 1;
        }
    }
    roar.init(&w.dir);
    let said = roar.run(&w.dir, &["k8s", "ingest-bundles", dir.to_str().unwrap()]);
    assert!(
        said.contains(&format!("{n} fragment(s) merged")),
        "roar merged fewer fragments than it read:\n{said}"
    );
    let rows = roar.query(
        &w.dir,
        "select o.artifact_id from jobs j1 join job_outputs o on o.job_id = j1.id \
         join job_inputs i on i.artifact_id = o.artifact_id join jobs j2 on i.job_id = j2.id \
         where j1.command = 'k8s_task:produce' and j2.command = 'k8s_task:consume'",
    );
    assert!(!rows.is_empty(), "no edge produce -> consume in roar's DAG");

    delete_namespace(&kc, &ns);
    let _ = fs::remove_dir_all(&shared);
}
