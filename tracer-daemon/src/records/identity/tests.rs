use super::*;

use crate::test_support::exec_event as exec;

/// The shape of an OSMO user container: runc init (no exec), then
/// osmo_exec as the entrypoint, the user command as its child.
fn osmo_tree(command: &[&str]) -> ProcessTree {
    let mut p = ProcessTree::new(100);
    p.fork(5, 10, false, 1);
    p.fork(10, 11, false, 2);
    p.exec(11, &exec(&["/osmo/bin/osmo_exec", "-commands", "x"]), 3);
    p.fork(11, 12, false, 4);
    p.exec(12, &exec(command), 5);
    p.fork(12, 13, false, 6);
    p.exec(13, &exec(&["x"]), 7);
    p
}

#[test]
fn the_entrypoint_is_the_first_process_that_execd() {
    assert_eq!(entrypoint_pid(&osmo_tree(&["/bin/sh"])), Some(11));
    let mut plain = ProcessTree::new(100);
    plain.fork(5, 10, false, 1);
    plain.exec(10, &exec(&["/bin/sh", "-c", "x"]), 2);
    assert_eq!(entrypoint_pid(&plain), Some(10));
}

fn unnamed(processes: ProcessTree) -> UnnamedRecord {
    let mut md = Map::new();
    md.insert("capture".into(), json!({"partial": false}));
    UnnamedRecord {
        reads: Vec::new(),
        writes: Vec::new(),
        metadata: md,
        encoder: Encoder::default(),
        processes,
        first_ns: Some(1),
        last_ns: Some(2),
        lost: false,
        inexact: false,
        summary: Summary::default(),
        clock: Clock::new(),
    }
}

/// The fixture pod (OSMO's shapes), its user container resolved.
fn osmo_task(pod: &PodInfo, container: &str) -> PodTask {
    let c = pod.container(container).unwrap();
    let meta = TaskMeta {
        cgroup_id: 14,
        cgroup_path: "/kubepods/x".into(),
        pod_uid: pod.uid.clone(),
        container: container.into(),
        container_id: c.runs[0].container_id.clone(),
        restart_count: 0,
        completion_index: pod.completion_index(container).value,
        role: crate::attribution::policy::container_role(pod, container).unwrap(),
        reason: crate::attribution::TraceReason::Annotation,
        started_before_agent: false,
    };
    PodTask {
        meta,
        pod: Some(pod.clone()),
        exit_code: Some(0),
        node: "node-a".into(),
        kernel_counters: KernelStats::default(),
        gaps: Vec::new(),
        ended_while_down: false,
    }
}

fn fixture() -> PodInfo {
    from_json(crate::attribution::pods::tests::OSMO_POD)
}

fn from_json(json: &str) -> PodInfo {
    PodInfo::from_pod(&serde_json::from_str(json).unwrap()).unwrap()
}

/// roar's k8s contract for a pod of an Indexed Job launched by roar:
/// backend k8s, flat `k8s_*` keys, the completion index in task_id and
/// its key, the parent job uid from the spec, the task identity roar
/// derives, the mount map; roar-node's own keys beside them.
#[test]
fn a_job_pod_record_follows_roars_k8s_contract() {
    let pod = from_json(crate::attribution::pods::tests::INDEXED_JOB_POD);
    let mut p = ProcessTree::new(100);
    p.fork(5, 10, false, 1);
    p.exec(10, &exec(&["python3", "shard.py"]), 2);
    let rec = unnamed(p).name(TaskIdentity::Pod(Box::new(osmo_task(&pod, "worker"))));
    let f = &rec.fragment;
    let md = &f.backend_metadata;
    assert_eq!(f.backend, "k8s");
    assert_eq!(f.task_id, format!("{}:worker:2:0", pod.uid));
    assert_eq!(f.parent_job_uid, "a1b2c3d4");
    assert_eq!(
        f.task_identity,
        k8s::task_identity("k8s", "a1b2c3d4", &f.task_id, &f.job_uid)
    );
    for (k, v) in [
        ("k8s_namespace", json!("ml")),
        ("k8s_pod_name", json!(pod.name)),
        ("k8s_pod_uid", json!(pod.uid)),
        ("k8s_node_name", json!("localhost")),
        ("k8s_container", json!("worker")),
        ("k8s_job_name", json!("shard")),
        ("k8s_completion_index", json!("2")),
        ("k8s_restart_attempt", json!("0")),
    ] {
        assert_eq!(md[k], v, "{k}");
    }
    assert_eq!(
        md["k8s_mount_map"],
        json!([
            {"mount_path": "/data", "uri": "gs://training-data"},
            {"mount_path": "/ckpt", "volume": "pvc://ckpt-claim"},
        ])
    );
    assert_eq!(
        md["pod"]["uid"],
        json!(pod.uid),
        "roar-node's own keys stay"
    );
    assert_eq!(md["container"]["completion_index"]["from"], "annotation");
    assert_eq!(md["argv"], json!(["python3", "shard.py"]));
    assert!(md.get("osmo_command").is_none());
    let text = serde_json::to_string(f).unwrap();
    assert!(!text.contains("hf_not_a_real_token"), "{text}");
}

/// An OSMO task: backend k8s too, no parent, index 0; the user's
/// command is osmo_exec's child that runs -commands/-args; the data's
/// sources and destinations are in the record.
#[test]
fn an_osmo_user_record_names_the_users_command() {
    let pod = fixture();
    let expected = crate::attribution::osmo::user_command(pod.container("train").unwrap()).unwrap();
    let argv: Vec<&str> = expected.iter().map(String::as_str).collect();
    let rec = unnamed(osmo_tree(&argv)).name(TaskIdentity::Pod(Box::new(osmo_task(&pod, "train"))));
    let f = &rec.fragment;
    let md = &f.backend_metadata;
    assert_eq!(f.backend, "k8s");
    assert_eq!(f.task_id, format!("{}:train:0:0", pod.uid));
    assert_eq!(f.parent_job_uid, "");
    assert_eq!(
        f.task_identity,
        k8s::task_identity("k8s", "", &f.task_id, &f.job_uid)
    );
    assert_eq!(md["k8s_namespace"], "osmo-workflows");
    assert_eq!(md["k8s_job_name"], Value::Null);
    assert_eq!(md["k8s_completion_index"], "0");
    assert_eq!(md["osmo"]["osmo.task_name"], "train");
    assert_eq!(md["argv"], json!(expected));
    assert_eq!(md["osmo_command"]["ran"], true);
    assert_eq!(md["osmo_command"]["command_pid"], 12);
    assert_eq!(md["command_parent"], "osmo_exec");
    assert_eq!(
        md["osmo_data"]["inputs"][0],
        json!({"path": "/osmo/data/input/0", "from": "task",
               "url": "s3://osmo-bucket/workflows/capture-1/prepare", "regex": ".*"})
    );
    assert_eq!(
        md["osmo_data"]["outputs"][0]["url"],
        "s3://osmo-bucket/workflows/capture-1/train"
    );
    assert_eq!(md["osmo_data"]["checkpoints"][0]["every_seconds"], 300);
    assert_eq!(f.exit_code, 0);
}

/// osmo-ctrl failed (exit 1) and osmo_exec exited 0 without a child:
/// not a success.
#[test]
fn an_osmo_command_that_never_ran_is_not_a_success() {
    let mut pod = fixture();
    let ctrl = pod
        .containers
        .iter_mut()
        .find(|c| c.name == crate::attribution::policy::OSMO_CTRL)
        .unwrap();
    ctrl.runs[0].state = crate::attribution::pods::RunState::Terminated { exit_code: 1 };
    let mut p = ProcessTree::new(100);
    p.fork(5, 10, false, 1);
    p.exec(10, &exec(&["/osmo/bin/osmo_exec", "-commands", "x"]), 2);
    let rec = unnamed(p).name(TaskIdentity::Pod(Box::new(osmo_task(&pod, "train"))));
    let md = &rec.fragment.backend_metadata;
    assert_eq!(rec.fragment.exit_code, 2001);
    assert_eq!(md["osmo_command"]["ran"], false);
    assert_eq!(md["osmo_command"]["osmo_ctrl_exit_code"], 1);
    assert_eq!(
        md["exit_code_source"],
        ExitCodeSource::OsmoCtrlFailed.as_str()
    );
}

#[test]
fn kernel_counters_name_kernel_read_failures() {
    let mut counters = vec![0; roar_node_common::loss::STATS_LEN as usize];
    counters[roar_node_common::loss::KERNEL_READ_FAILED as usize] = 2;
    let v = kernel_counters(&KernelStats { counters });
    assert_eq!(v, json!({"lost_kernel_read_failed": 2}));
}

#[test]
fn job_uids_are_stable_and_short() {
    let a = job_uid("t", "n", 1);
    assert_eq!(a.len(), 8);
    assert_eq!(a, job_uid("t", "n", 1));
    assert_ne!(a, job_uid("t", "n", 2));
}
