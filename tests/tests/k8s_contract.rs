//! Who a record says a task is, on the real local cluster, checked against
//! OSMO's pod shapes and roar's own code:
//!
//! - roar's k8s contract (roar-cli 0.4.7): a Job's pod with a completion
//!   index, `ROAR_K8S_PARENT_JOB_UID` and a claim volume; its record has
//!   the flat `k8s_*` keys, the index in `task_id`, the parent job uid and
//!   the task identity roar derives; ingested by the real roar-cli, those
//!   fields are read back from roar's database. No env value but the
//!   contract's reaches the record.
//! - OSMO's identity: osmo_exec starts rsync before the command, a pod
//!   template adds a sidecar, and an osmo-ctrl that fails leaves the
//!   command never run.
//!
//! Runs only with `ROAR_NODE_K8S=1` (`cargo xtask e2e-k8s`).

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use roar_node_tests::{k8s::*, *};
use serde_json::{Value, json};

fn wait_records(uid: &str, n: usize) -> Vec<(String, Value)> {
    let t0 = Instant::now();
    loop {
        let recs = records_of(&bundles(), uid);
        if recs.len() >= n {
            return recs;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "records of {uid}: {} of {n}; stats {}",
            recs.len(),
            stats()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn of_container<'a>(recs: &'a [(String, Value)], name: &str) -> &'a Value {
    let m: Vec<_> = recs
        .iter()
        .filter(|(_, f)| f["backend_metadata"]["k8s_container"] == name)
        .collect();
    assert_eq!(m.len(), 1, "records of {name}: {m:#?}");
    &m[0].1
}

fn hex(seed: &str) -> String {
    blake3_bytes(format!("{seed}:{:?}:{}", Instant::now(), std::process::id()).as_bytes())[..32]
        .to_string()
}

/// A batch/v1 Job's pod (Kubernetes 1.20 has no Indexed Jobs: the index
/// annotation the job controller writes on newer clusters is set by the
/// template here), launched the way roar's k8s backend launches one: its
/// parent job uid in a plain env value. A secret, plain and referenced, in
/// the env.
fn job(ns: &str, name: &str, claim: &str) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {
                    "roar-node/trace": "true",
                    "batch.kubernetes.io/job-completion-index": "2",
                }},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "worker",
                        "image": OSMO_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/bin/sh", "-c", "echo shard-2 > /ckpt/out.txt"],
                        "env": [
                            {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                            {"name": "ROAR_K8S_PARENT_JOB_UID", "value": "a1b2c3d4"},
                            {"name": "HF_TOKEN", "value": "hf-plain-secret-must-not-leak"},
                            {"name": "SECRET_REF", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": true}}},
                        ],
                        "volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
                    }],
                    "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": claim}}],
                },
            },
        },
    })
}

/// A hostPath volume and a claim bound to it (no provisioner here).
fn claim(ns: &str, name: &str, dir: &std::path::Path) {
    create(
        &kubeconfig(),
        &json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "", "hostPath": {"path": dir, "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": ns, "name": name},
            },
        }),
    );
    create(
        &kubeconfig(),
        &json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": name,
                "resources": {"requests": {"storage": "1Mi"}},
            },
        }),
    );
}

fn job_pod(ns: &str, job: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let out = kubectl_ok(
            &kubeconfig(),
            &[
                "-n",
                ns,
                "get",
                "pods",
                "-l",
                &format!("job-name={job}"),
                "-o",
                "json",
            ],
            None,
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        if let Some(p) = v["items"].as_array().and_then(|a| a.first()) {
            let name = p["metadata"]["name"].as_str().unwrap().to_string();
            return wait_pod_done(&kubeconfig(), ns, &name, Duration::from_secs(120));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no pod of job {job}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn roars_k8s_contract_and_osmo_identity_on_a_real_cluster() {
    if !enabled() {
        return;
    }
    let kc = kubeconfig();
    let run = &hex("run")[..8];
    let ns = format!("roar-contract-{run}");
    let shared = PathBuf::from(format!("/var/tmp/roar-node-e2e/contract-{run}"));
    create_namespace(&kc, &ns);

    // 1. The Job's pod.
    let pv = format!("ckpt-{run}");
    claim(&ns, &pv, &shared.join("ckpt"));
    create(&kc, &job(&ns, "shard", &pv));
    let pod = job_pod(&ns, "shard");
    let uid = uid_of(&pod);

    // 2. OSMO tasks: one whose osmo-ctrl fails (its input is not there),
    // one with a sidecar a pod template added.
    let wf = hex("wf");
    let task = |name: &str, input: Option<&str>| OsmoTask {
        namespace: ns.clone(),
        workflow_name: "contract".into(),
        workflow_uuid: wf.clone(),
        task_name: name.into(),
        task_uuid: hex(name),
        retry_id: 0,
        input: input.map(String::from),
        script: "echo ran > /osmo/data/output/ran.txt".into(),
        opt_in: true,
        shared_dir: shared.clone(),
    };
    let broken = task("broken", Some("nowhere/data.bin"));
    create(&kc, &broken.pod());
    let sidecar = task("with_sidecar", None);
    let mut p = sidecar.pod();
    p["spec"]["containers"].as_array_mut().unwrap().push(json!({
        "name": "log-shipper", "image": OSMO_IMAGE, "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", "echo shipped > /tmp/shipped"],
    }));
    create(&kc, &p);
    let broken_pod = wait_pod_done(&kc, &ns, &broken.pod_name(), Duration::from_secs(120));
    let sidecar_pod = wait_pod_done(&kc, &ns, &sidecar.pod_name(), Duration::from_secs(120));
    assert_eq!(
        exit_code(&broken_pod, "broken"),
        Some(0),
        "osmo_exec exits 0"
    );
    assert_eq!(exit_code(&broken_pod, "osmo-ctrl"), Some(1));

    // The Job's record: roar's contract.
    let recs = wait_records(&uid, 1);
    let (bundle_name, f) = &recs[0];
    let md = &f["backend_metadata"];
    assert_eq!(f["backend"], "k8s");
    assert_eq!(f["task_id"], format!("{uid}:worker:2:0"));
    assert_eq!(f["parent_job_uid"], "a1b2c3d4");
    for (k, v) in [
        ("k8s_namespace", json!(ns)),
        ("k8s_pod_name", pod["metadata"]["name"].clone()),
        ("k8s_pod_uid", json!(uid)),
        ("k8s_node_name", pod["spec"]["nodeName"].clone()),
        ("k8s_container", json!("worker")),
        ("k8s_job_name", json!("shard")),
        ("k8s_completion_index", json!("2")),
        ("k8s_restart_attempt", json!("0")),
    ] {
        assert_eq!(md[k], v, "{k}: {md}");
    }
    assert_eq!(
        md["k8s_mount_map"],
        json!([{"mount_path": "/ckpt", "volume": format!("pvc://{pv}")}])
    );
    assert_eq!(
        md["pod"]["uid"],
        uid.as_str(),
        "roar-node's own keys beside"
    );
    let text = fs::read_to_string(node_state().join("bundles").join(bundle_name)).unwrap();
    assert!(!text.contains("hf-plain-secret"), "an env value leaked");

    // OSMO: the command that never ran, with osmo-ctrl's exit code.
    let recs = wait_records(&uid_of(&broken_pod), 2);
    let user = of_container(&recs, "broken");
    let oc = &user["backend_metadata"]["osmo_command"];
    assert_eq!(oc["ran"], false, "{oc}");
    assert_eq!(oc["osmo_ctrl_exit_code"], 1, "{oc}");
    assert_eq!(user["exit_code"], 2001);
    assert_eq!(
        user["backend_metadata"]["osmo_data"]["inputs"][0],
        json!({"path": "/osmo/data/input/0", "from": "task",
               "url": "file:///shared/nowhere", "regex": ".*"})
    );
    // The sidecar is not the user container; the user's command is the
    // child of osmo_exec that runs -commands/-args, not rsync.
    let recs = wait_records(&uid_of(&sidecar_pod), 3);
    let user = of_container(&recs, "with-sidecar");
    let md = &user["backend_metadata"];
    assert_eq!(md["execution_role"], "user");
    assert_eq!(md["argv"], json!(sidecar.command()));
    let oc = &md["osmo_command"];
    assert_eq!(oc["ran"], true, "{oc}");
    assert!(
        oc["other_children"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x["kind"] == "rsync")),
        "{oc}"
    );
    assert_eq!(
        md["osmo_data"]["outputs"][0],
        json!({"path": "/osmo/data/output", "to": "task",
               "url": "file:///shared/with_sidecar"})
    );
    let shipper = of_container(&recs, "log-shipper");
    assert_eq!(shipper["backend_metadata"]["execution_role"], "sidecar");
    assert_eq!(shipper["task_name"], "with_sidecar/log-shipper");

    // roar-cli 0.4.7 reads the same back from its database.
    let roar = Roar::get();
    let w = Work::new("k8s-contract");
    let dir = w.path("bundles");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(
        node_state().join("bundles").join(bundle_name),
        dir.join(bundle_name),
    )
    .unwrap();
    roar.init(&w.dir);
    let said = roar.run(&w.dir, &["k8s", "ingest-bundles", dir.to_str().unwrap()]);
    assert!(said.contains("1 fragment(s) merged"), "{said}");
    let rows = roar.query(
        &w.dir,
        "select job_uid, parent_job_uid, execution_backend, metadata from jobs \
         where job_type = 'k8s_task'",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (job_uid, parent, backend) = (&rows[0][0], &rows[0][1], &rows[0][2]);
    let meta: Value = serde_json::from_str(rows[0][3].as_str().unwrap()).unwrap();
    assert_eq!(job_uid, &f["job_uid"]);
    assert_eq!(parent, "a1b2c3d4");
    assert_eq!(backend, "k8s");
    for k in [
        "k8s_namespace",
        "k8s_pod_name",
        "k8s_pod_uid",
        "k8s_node_name",
        "k8s_container",
        "k8s_job_name",
        "k8s_completion_index",
        "k8s_restart_attempt",
        "k8s_mount_map",
    ] {
        assert_eq!(meta[k], f["backend_metadata"][k], "{k}");
    }
    assert_eq!(meta["task_id"], f["task_id"]);
    // The task identity is the one roar derives for this fragment.
    let derived = roar.python(&format!(
        "from roar.execution.fragments.models import derive_fragment_identity as d\n\
         print(d('k8s', 'a1b2c3d4', {:?}, {:?}))",
        f["task_id"].as_str().unwrap(),
        f["job_uid"].as_str().unwrap()
    ));
    assert_eq!(meta["task_identity"], derived.trim());
    assert_eq!(f["task_identity"], derived.trim());

    delete_namespace(&kc, &ns);
    let _ = kubectl(&kc)
        .args(["delete", "pv", &pv, "--wait=false"])
        .output();
    let _ = fs::remove_dir_all(&shared);
}
