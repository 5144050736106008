use super::*;
use std::time::Duration;

use super::pods::RunState;
use crate::events::Body;

const POD: &str = include_str!("testdata/osmo-pod.json");

fn pod() -> PodInfo {
    PodInfo::from_pod(&serde_json::from_str(POD).unwrap()).unwrap()
}

fn mkdir(id: u64, path: &str, traced: bool) -> CgroupChange {
    CgroupChange {
        created: true,
        id,
        parent_id: 0,
        level: 0,
        path: path.as_bytes().to_vec(),
        path_truncated: false,
        traced_by_kernel: traced,
    }
}

fn exit_ev(task: u64) -> Event {
    Event {
        task,
        tgid: 1,
        pid: 1,
        time_ns: 1,
        body: Body::Exit { status: 0 },
    }
}

fn id_of(p: &PodInfo, name: &str) -> String {
    p.container(name).unwrap().runs[0].container_id.clone()
}

fn resolved(acts: &[Action], cgroup: u64) -> &TaskMeta {
    acts.iter()
        .find_map(|a| match a {
            Action::Resolved(m) if m.cgroup_id == cgroup => Some(m),
            _ => None,
        })
        .unwrap()
}

fn names(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .map(|a| match a {
            Action::TracePod(id) => format!("trace-pod {id}"),
            Action::TraceContainer(id) => format!("trace {id}"),
            Action::Untrace(id) => format!("untrace {id}"),
            Action::Begin { cgroup, .. } => format!("begin {cgroup}"),
            Action::Resolved(m) => {
                format!("resolved {} {} {}", m.cgroup_id, m.role, m.task_id())
            }
            Action::Discard {
                cgroup,
                unattributed,
            } => format!("discard {cgroup} {unattributed}"),
            Action::Warn(_) => "warn".into(),
        })
        .collect()
}

/// The order things happen on a node: pod known (no statuses yet), pod
/// cgroup, sandbox + container cgroups with events, then statuses.
#[test]
fn pod_first_then_cgroups_then_ids() {
    let full = pod();
    let mut early = full.clone();
    early.phase = "Pending".into();
    for c in &mut early.containers {
        c.runs.clear();
    }
    let uid = full.uid.clone();
    let base = format!("/kubepods/besteffort/pod{uid}");
    let mut a = Attributor::new(Policy::default());
    let now = Instant::now();
    assert!(a.on_pod(early).is_empty(), "no cgroup yet");
    let acts = a.on_cgroup(&mkdir(10, &base, false), now);
    assert_eq!(names(&acts), ["trace-pod 10"]);
    // The kernel made these roots because their parent is traced.
    let sandbox = "a".repeat(64);
    for (id, cid) in [
        (11, sandbox.as_str()),
        (12, &id_of(&full, "osmo-init")),
        (13, &id_of(&full, "osmo-ctrl")),
        (14, &id_of(&full, "train")),
    ] {
        let acts = a.on_cgroup(&mkdir(id, &format!("{base}/{cid}"), true), now);
        assert_eq!(names(&acts), [format!("begin {id}")]);
        assert_eq!(a.route(&exit_ev(id)), Route::Task);
    }
    assert_eq!(a.stats.waiting, 4);
    assert_eq!(a.route(&exit_ev(99)), Route::Unattributed);
    let acts = a.on_pod(full);
    assert_eq!(
        names(&acts),
        [
            "untrace 11",
            "discard 11 false",
            "untrace 12",
            "discard 12 false",
            &format!("resolved 13 osmo-ctrl {uid}:osmo-ctrl:0:0"),
            &format!("resolved 14 user {uid}:train:0:0"),
        ]
    );
    assert_eq!(a.route(&exit_ev(14)), Route::Task);
    assert_eq!(a.route(&exit_ev(11)), Route::Ignored);
    assert_eq!(a.stats.before_resolution, 4);
    assert_eq!(a.stats.ignored, 1);
    assert_eq!(a.stats.unattributed, 1);
    assert_eq!(a.stats.waiting, 0);
    assert!(!resolved(&acts, 14).started_before_agent);
}

/// Start-up: cgroups walked before the pods are listed; running
/// containers go into the trace set directly.
#[test]
fn startup_walk_then_list() {
    let full = pod();
    let uid = full.uid.clone();
    let base = format!("/kubepods/besteffort/pod{uid}");
    let mut a = Attributor::new(Policy::default());
    let now = Instant::now();
    a.on_cgroup(&mkdir(10, &base, false), now);
    a.on_cgroup(
        &mkdir(14, &format!("{base}/{}", id_of(&full, "train")), false),
        now,
    );
    let acts = a.on_pod(full);
    assert_eq!(
        names(&acts),
        [
            "trace-pod 10".to_string(),
            "trace 14".into(),
            "begin 14".into(),
            format!("resolved 14 user {uid}:train:0:0")
        ]
    );
    assert!(resolved(&acts, 14).started_before_agent);
}

/// A restarted container's new cgroup appears before the status shows
/// its id (the previous run's id is there): it is not the sandbox.
#[test]
fn restarted_container_is_not_the_sandbox() {
    let full = pod();
    let uid = full.uid.clone();
    let base = format!("/kubepods/besteffort/pod{uid}");
    let mut a = Attributor::new(Policy::default());
    let t0 = Instant::now();
    let mut running = full.clone();
    running.phase = "Running".into();
    a.on_pod(running.clone());
    a.on_cgroup(&mkdir(10, &base, false), t0);
    a.on_cgroup(&mkdir(11, &format!("{base}/{}", "a".repeat(64)), true), t0);
    let first = id_of(&full, "train");
    a.on_cgroup(&mkdir(14, &format!("{base}/{first}"), true), t0);
    let second = "b".repeat(64);
    let acts = a.on_cgroup(&mkdir(15, &format!("{base}/{second}"), true), t0);
    assert_eq!(names(&acts), ["begin 15"], "waits for its id");
    assert_eq!(a.stats.waiting, 1);
    // The status now shows the new run, the old one in lastState.
    let c = running
        .containers
        .iter_mut()
        .find(|c| c.name == "train")
        .unwrap();
    c.runs.insert(
        0,
        pods::ContainerRun {
            container_id: second.clone(),
            restart_count: 1,
            state: RunState::Running,
        },
    );
    c.runs[1].restart_count = 0;
    let acts = a.on_pod(running);
    assert!(
        names(&acts).contains(&format!("resolved 15 user {uid}:train:0:1")),
        "{:?}",
        names(&acts)
    );
}

/// A container a previous daemon traced, found by the start-up walk:
/// into the trace set at once, before its pod is known; it resolves as a
/// task that was traced all along (the spool says what is missing).
#[test]
fn resumed_after_the_walk() {
    let p = pod();
    let base = format!("/kubepods/besteffort/pod{}", p.uid);
    let mut a = Attributor::new(Policy::default());
    let now = Instant::now();
    a.on_cgroup(&mkdir(1, &base, false), now);
    let sandbox = "a".repeat(64);
    a.on_cgroup(&mkdir(2, &format!("{base}/{sandbox}"), false), now);
    let train = mkdir(3, &format!("{base}/{}", id_of(&p, "train")), false);
    assert!(a.on_cgroup(&train, now).is_empty());
    assert_eq!(names(&a.resume(3)), ["trace 3", "begin 3"]);
    assert!(a.resume(3).is_empty(), "once");
    assert!(a.resume(99).is_empty(), "unknown cgroup");
    let acts = a.on_pod(p.clone());
    let resolved: Vec<_> = acts
        .iter()
        .filter_map(|x| match x {
            Action::Resolved(m) if m.cgroup_id == 3 => Some(m.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(resolved.len(), 1, "{:?}", names(&acts));
    assert!(!resolved[0].started_before_agent);
}

/// With the programs pinned, a container that ended while no daemon
/// ran is a task again (its last events are in the ring buffer), known
/// as removed; it resolves when its pod is known.
#[test]
fn resumed_after_it_ended() {
    let p = pod();
    let base = format!("/kubepods/besteffort/pod{}", p.uid);
    let mut a = Attributor::new(Policy::default());
    let now = Instant::now();
    a.on_cgroup(&mkdir(1, &base, false), now);
    a.on_cgroup(&mkdir(2, &format!("{base}/{}", "a".repeat(64)), false), now);
    let path = format!("{base}/{}", id_of(&p, "train"));
    assert_eq!(names(&a.resume_gone(3, &path, now)), ["begin 3"]);
    assert!(a.cgroup_removed(3));
    assert!(a.resume_gone(4, "/not/a/container", now).is_empty());
    let acts = a.on_pod(p.clone());
    assert!(
        acts.iter()
            .any(|x| matches!(x, Action::Resolved(m) if m.cgroup_id == 3)),
        "{:?}",
        names(&acts)
    );
}

#[test]
fn never_resolved_is_unattributed() {
    let full = pod();
    let uid = full.uid.clone();
    let base = format!("/kubepods/besteffort/pod{uid}");
    let mut a = Attributor::new(Policy::default());
    let t0 = Instant::now();
    let mut early = full.clone();
    early.phase = "Pending".into();
    for c in &mut early.containers {
        c.runs.clear();
    }
    a.on_pod(early);
    a.on_cgroup(&mkdir(10, &base, false), t0);
    let id = id_of(&full, "train");
    a.on_cgroup(&mkdir(14, &format!("{base}/{id}"), true), t0);
    let mut rm = mkdir(14, &format!("{base}/{id}"), false);
    rm.created = false;
    a.on_cgroup(&rm, t0);
    assert!(
        a.sweep(t0 + Duration::from_secs(5), Duration::from_secs(60))
            .is_empty()
    );
    let acts = a.sweep(t0 + Duration::from_secs(61), Duration::from_secs(60));
    assert_eq!(names(&acts), ["untrace 14", "discard 14 true"]);
    assert_eq!(a.stats.waiting, 0);
}

#[test]
fn opted_out_and_malformed() {
    let mut p = pod();
    p.annotations
        .insert(policy::ANNOTATION.into(), "yes please".into());
    let uid = p.uid.clone();
    let mut a = Attributor::new(Policy {
        osmo: true,
        ..Default::default()
    });
    let acts = a.on_pod(p.clone());
    assert!(matches!(&acts[..], [Action::Warn(m)] if m.contains("yes please")));
    assert!(a.on_pod(p.clone()).is_empty(), "warned once");
    let acts = a.on_cgroup(
        &mkdir(10, &format!("/kubepods/besteffort/pod{uid}"), false),
        Instant::now(),
    );
    assert!(acts.is_empty());
    p.annotations
        .insert(policy::ANNOTATION.into(), "false".into());
    a.on_pod(p);
    let cid = id_of(&pod(), "train");
    let acts = a.on_cgroup(
        &mkdir(14, &format!("/kubepods/besteffort/pod{uid}/{cid}"), false),
        Instant::now(),
    );
    assert!(acts.is_empty());
    assert_eq!(a.route(&exit_ev(14)), Route::Unattributed);
}

/// The pod watch lags behind the kubelet: the container's cgroup exists
/// before its pod is known (outside the trace set: its pod's cgroup was not
/// traced). The moment the pod is known to be traced, with no container
/// id in its status yet, the container goes into the trace set, as a task
/// traced late.
#[test]
fn a_container_made_before_its_pod_is_known_is_traced_when_the_pod_is() {
    let full = pod();
    let mut a = Attributor::new(Policy::default());
    let now = Instant::now();
    let (made, _) = train_cgroup_before_its_pod(&mut a, &full, now);
    assert!(made.is_empty());
    assert_eq!(a.route(&exit_ev(14)), Route::Unattributed, "not traced yet");
    let acts = a.on_pod(pod_without_ids());
    assert_eq!(names(&acts), ["trace-pod 10", "trace 14", "begin 14"]);
    assert!(acts.iter().any(|x| matches!(
        x,
        Action::Begin {
            cgroup: 14,
            late: true,
            ..
        }
    )));
    assert_eq!(a.route(&exit_ev(14)), Route::Task);
    let acts = a.on_pod(full);
    assert!(resolved(&acts, 14).started_before_agent, "traced late");
    assert!(!names(&acts).contains(&"trace 14".to_string()), "once");
}

/// A short container that ran and ended while its pod was not known, and
/// the pod deleted: the watch's Delete event carries the final pod, whose
/// status names the container; its record is made from it rather than
/// the container being dropped.
#[test]
fn the_final_object_of_a_delete_resolves_what_waits() {
    let full = pod();
    let uid = full.uid.clone();
    let mut a = Attributor::new(Policy::default());
    let now = Instant::now();
    let (_, train) = train_cgroup_before_its_pod(&mut a, &full, now);
    let mut rm = mkdir(14, &train, false);
    rm.created = false;
    a.on_cgroup(&rm, now);
    let acts = a.on_pod_deleted(&uid, Some(full), now);
    let n = names(&acts);
    assert!(n.contains(&"begin 14".to_string()), "{n:?}");
    assert!(resolved(&acts, 14).started_before_agent);
    // Without the final object, nothing can name it: dropped, counted.
    let mut b = Attributor::new(Policy::default());
    train_cgroup_before_its_pod(&mut b, &pod(), now);
    b.on_pod(pod_without_ids());
    let acts = b.on_pod_deleted(&uid, None, now);
    assert_eq!(
        names(&acts),
        ["untrace 10", "untrace 14", "discard 14 true"]
    );
}

/// The kubelet makes the pod's cgroup (10) and its `train` container's
/// (14), untraced, before the pod is known: the actions, and the
/// container's cgroup path.
fn train_cgroup_before_its_pod(
    a: &mut Attributor,
    full: &PodInfo,
    now: Instant,
) -> (Vec<Action>, String) {
    let base = format!("/kubepods/besteffort/pod{}", full.uid);
    let train = format!("{base}/{}", id_of(full, "train"));
    let mut acts = a.on_cgroup(&mkdir(10, &base, false), now);
    acts.extend(a.on_cgroup(&mkdir(14, &train, false), now));
    (acts, train)
}

/// The pod as first listed: pending, no container ids in its status.
fn pod_without_ids() -> PodInfo {
    let mut p = pod();
    p.phase = "Pending".into();
    for c in &mut p.containers {
        c.runs.clear();
    }
    p
}

/// A cgroup waiting for its pod is not dropped while the pod watch
/// delivers nothing (held, failing, never listed): only once it has
/// delivered for the whole grace.
#[test]
fn waiting_cgroups_outlive_a_watch_that_delivers_nothing() {
    let mut a = Attributor::new(Policy::default());
    let t0 = Instant::now();
    let (_, train) = train_cgroup_before_its_pod(&mut a, &pod(), t0);
    let mut rm = mkdir(14, &train, false);
    rm.created = false;
    a.on_cgroup(&rm, t0);
    a.set_watch_delivers(false, t0);
    let grace = Duration::from_secs(60);
    let t1 = t0 + Duration::from_secs(600);
    assert!(a.sweep(t1, grace).is_empty());
    a.set_watch_delivers(true, t1);
    assert!(a.sweep(t1 + Duration::from_secs(30), grace).is_empty());
    assert_eq!(a.pending().len(), 1);
    // Delivered for the whole grace and its pod never came: dropped.
    a.sweep(t1 + Duration::from_secs(61), grace);
    assert!(a.pending().is_empty());
}
