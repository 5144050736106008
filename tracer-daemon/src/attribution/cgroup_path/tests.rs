use super::*;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UID: &str = "5f1e5bd6-6a84-4f0c-9d8e-0b3a1c2d4e5f";
const UID_: &str = "5f1e5bd6_6a84_4f0c_9d8e_0b3a1c2d4e5f";

fn container(path: &str) -> ContainerCgroup {
    match parse(path) {
        CgroupPath::Container(c) => c,
        other => panic!("{path}: expected a container, got {other:?}"),
    }
}

#[test]
fn cgroupfs_driver_all_qos_classes() {
    let c = container(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
    assert_eq!(
        c,
        ContainerCgroup {
            pod_uid: UID.into(),
            container_id: ID.into(),
            runtime: Runtime::Unknown,
            qos: Qos::BestEffort,
            depth_below_container: 0,
        }
    );
    let c = container(&format!("/kubepods/burstable/pod{UID}/{ID}"));
    assert_eq!(c.qos, Qos::Burstable);
    let c = container(&format!("/kubepods/pod{UID}/{ID}"));
    assert_eq!(c.qos, Qos::Guaranteed);
    // Without the leading slash, and with a trailing one.
    let c = container(&format!("kubepods/pod{UID}/{ID}/"));
    assert_eq!(c.container_id, ID);
}

#[test]
fn systemd_driver_runtimes_and_underscored_uids() {
    let base =
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
    for (scope, runtime) in [
        ("cri-containerd", Runtime::Containerd),
        ("crio", Runtime::Crio),
        ("docker", Runtime::Docker),
    ] {
        let c = container(&format!("{base}/{scope}-{ID}.scope"));
        assert_eq!(c.pod_uid, UID, "underscores become dashes");
        assert_eq!(c.container_id, ID);
        assert_eq!(c.runtime, runtime);
        assert_eq!(c.qos, Qos::Burstable);
    }
    let c = container(&format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
    ));
    assert_eq!(c.qos, Qos::BestEffort);
    // Guaranteed pods sit directly under kubepods.slice.
    let c = container(&format!(
        "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
    ));
    assert_eq!(c.qos, Qos::Guaranteed);
    assert_eq!(c.pod_uid, UID);
}

#[test]
fn any_prefix_is_allowed_as_in_kind() {
    // kind: the node is a docker container, its kubelet uses the
    // `kubelet` cgroup root, so slices are named `kubelet-kubepods-...`.
    let p = format!(
        "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{}.scope",
        "f".repeat(64)
    );
    let c = container(&p);
    assert_eq!(c.pod_uid, UID);
    assert_eq!(
        c.container_id,
        "f".repeat(64),
        "the inner container, not kind's node"
    );
    assert_eq!(c.qos, Qos::BestEffort);
    // cgroupfs driver below kind's node container.
    let c = container(&format!(
        "/system.slice/docker-{ID}.scope/kubelet/kubepods/burstable/pod{UID}/{}",
        "a".repeat(64)
    ));
    assert_eq!(c.container_id, "a".repeat(64));
}

#[test]
fn containerd_without_systemd_cgroups_on_a_systemd_host() {
    let c = container(&format!(
        "/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}"
    ));
    assert_eq!(c.pod_uid, UID);
    assert_eq!(c.container_id, ID);
    assert_eq!(c.runtime, Runtime::Containerd);
    assert_eq!(c.qos, Qos::BestEffort);
    let c = container(&format!(
        "/system.slice/containerd.service/kubepods-pod{UID_}.slice:cri-containerd:{ID}"
    ));
    assert_eq!(c.qos, Qos::Guaranteed);
    // A shortened id is not an id.
    assert_eq!(
        parse(format!(
            "/system.slice/containerd.service/kubepods-pod{UID_}.slice:cri-containerd:{}",
            &ID[..12]
        )),
        CgroupPath::Other
    );
}

#[test]
fn sub_cgroups_belong_to_the_nearest_container() {
    let c = container(&format!(
        "/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope/container"
    ));
    assert_eq!((c.container_id.as_str(), c.depth_below_container), (ID, 1));
    let c = container(&format!("/kubepods/pod{UID}/{ID}/user/a/b"));
    assert_eq!(c.depth_below_container, 3);
    // A workload that names its own sub-cgroup like a container id is
    // still inside the outer container: the sub-cgroup has no pod
    // directory above it.
    let c = container(&format!("/kubepods/pod{UID}/{ID}/{}", "b".repeat(64)));
    assert_eq!((c.container_id.as_str(), c.depth_below_container), (ID, 1));
}

#[test]
fn pod_level_and_other_cgroups() {
    assert_eq!(
        parse(format!("/kubepods/burstable/pod{UID}")),
        CgroupPath::PodLevel {
            pod_uid: UID.into(),
            qos: Qos::Burstable
        }
    );
    assert_eq!(
        parse(format!("/kubepods.slice/kubepods-pod{UID_}.slice")),
        CgroupPath::PodLevel {
            pod_uid: UID.into(),
            qos: Qos::Guaranteed
        }
    );
    for other in [
        "/".to_string(),
        String::new(),
        "/kubepods".into(),
        "/kubepods/burstable".into(),
        "/kubepods.slice/kubepods-burstable.slice".into(),
        "/system.slice/containerd.service".into(),
        "/user.slice/user-0.slice/session-1.scope".into(),
        // CRI-O's monitor process is not a container.
        format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
        // Not under kubepods.
        format!("/pod{UID}/{ID}"),
        format!("/mykubepods/pod{UID}/{ID}"),
        format!("/x.slice/mykubepods-pod{UID_}.slice/crio-{ID}.scope"),
        // Unknown runtime prefix, shortened or upper-case ids.
        format!("/kubepods/pod{UID}/runc-{ID}"),
        format!("/kubepods/pod{UID}/{}", &ID[..63]),
        format!("/kubepods/pod{UID}/{ID}0"),
        format!("/kubepods/pod{UID}/{}", ID.to_uppercase()),
        // Malformed UIDs.
        format!("/kubepods/pod{}/{ID}", &UID[..35]),
        format!("/kubepods/pod{}/{ID}", UID.replace('-', "x")),
    ] {
        let got = parse(&other);
        // A malformed pod dir under a valid one could still be a
        // container; none of these are.
        assert!(!matches!(got, CgroupPath::Container(_)), "{other}: {got:?}");
    }
    assert_eq!(
        parse(format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"
        )),
        CgroupPath::Other
    );
}

#[test]
fn static_pods_have_32_hex_uids() {
    let uid = "0b8d3d22c46d0ac61ab2cc4f2a4a48e9";
    let c = container(&format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
    ));
    assert_eq!(c.pod_uid, uid);
    let c = container(&format!("/kubepods/burstable/pod{uid}/{ID}"));
    assert_eq!(c.pod_uid, uid);
}

#[test]
fn non_utf8_bytes_elsewhere_in_the_path_are_fine() {
    let mut p = b"/odd\xff\xfe/".to_vec();
    p.extend_from_slice(format!("kubepods/pod{UID}/{ID}/sub").as_bytes());
    p.extend_from_slice(b"\xc3\xff");
    let CgroupPath::Container(c) = parse(&p) else {
        panic!("not a container")
    };
    assert_eq!((c.pod_uid.as_str(), c.container_id.as_str()), (UID, ID));
    assert_eq!(parse(b"/\xff/\xfe"), CgroupPath::Other);
}

#[test]
fn walk_yields_every_directory_with_its_inode() {
    // A plain directory tree stands in for cgroupfs: walk() only reads
    // directories and inodes.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("kubepods/besteffort/pod1/c1/container")).unwrap();
    fs::create_dir_all(root.join("system.slice")).unwrap();
    fs::write(root.join("kubepods/cgroup.procs"), "").unwrap();
    let dirs = walk(root).unwrap();
    let paths: Vec<&str> = dirs.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/",
            "/kubepods",
            "/system.slice",
            "/kubepods/besteffort",
            "/kubepods/besteffort/pod1",
            "/kubepods/besteffort/pod1/c1",
            "/kubepods/besteffort/pod1/c1/container",
        ]
    );
    for d in &dirs {
        let on_disk = fs::metadata(root.join(d.path.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(d.id, on_disk, "{}", d.path);
    }
    assert!(matches!(
        walk(&root.join("missing")),
        Err(CgroupRootError::Io { .. })
    ));
}

#[test]
fn a_non_cgroup_directory_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = resolve_host_cgroup2_root(tmp.path()).unwrap_err();
    assert!(matches!(err, CgroupRootError::NotCgroup2 { .. }), "{err}");
    assert!(err.to_string().contains("not a cgroup v2 file system"));
    let err = check_host_root(tmp.path()).unwrap_err();
    assert!(matches!(err, CgroupRootError::NotCgroup2 { .. }), "{err}");
}

/// Runs against this host's cgroup2 mount (skipped where there is none).
#[test]
fn the_host_root_is_found_and_a_sub_cgroup_is_refused() {
    let Ok(mount) = crate::attribution::cgroupfs::find_cgroup2() else {
        crate::test_support::skip("no cgroup2 mount here");
        return;
    };
    // The cgroup2 mount of this process may be a container's view.
    let Ok(root) = resolve_host_cgroup2_root(&mount) else {
        crate::test_support::skip(&format!("{} is not the host's root", mount.display()));
        return;
    };
    assert_eq!(fs::metadata(&root).unwrap().ino(), 1);
    // Hybrid hosts: /sys/fs/cgroup (tmpfs) resolves to its unified/.
    if root.ends_with("unified") {
        let parent = root.parent().unwrap();
        assert_eq!(resolve_host_cgroup2_root(parent).unwrap(), root);
    }
    let dirs = walk(&root).unwrap();
    assert_eq!(
        dirs[0],
        CgroupDir {
            id: 1,
            path: "/".into()
        }
    );
    if let Some(sub) = dirs.iter().find(|d| d.path != "/") {
        let err = check_host_root(&root.join(&sub.path[1..])).unwrap_err();
        assert!(matches!(err, CgroupRootError::NotHostRoot { .. }), "{err}");
        assert!(err.to_string().contains("not the host's cgroup root"));
    }
}
