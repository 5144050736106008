//! Which pod and container a cgroup v2 directory belongs to, from its path
//! alone, and the start-up walk of the host's cgroup2 tree.
//!
//! Paths are parsed from the **end**, because the prefix depends on how
//! the node was set up: kind nests the kubelet under
//! `/system.slice/docker-<id>.scope/kubelet.slice/...`, other setups put
//! `kubepods` at the root. What identifies a container is always the last
//! `pod<uid>` directory followed by a container directory. The layouts
//! recognised (`<uid>` is the pod UID, `<id>` a 64-hex container id):
//!
//! - systemd driver: `.../kubepods[-burstable|-besteffort]-pod<uid with _>.slice/<runtime>-<id>.scope`,
//!   runtime `cri-containerd`, `crio` or `docker` (`crio-conmon-<id>.scope`
//!   is CRI-O's monitor process, not a container);
//! - cgroupfs driver: `.../kubepods[/burstable|/besteffort]/pod<uid>/<id>`
//!   (also `crio-<id>`, `docker-<id>`, `cri-containerd-<id>`);
//! - containerd without systemd cgroups on a systemd host:
//!   `.../containerd.service/kubepods-<qos>-pod<uid>.slice:cri-containerd:<id>`;
//! - anything below a container directory (crun's `container` subgroup,
//!   cgroups the workload made) belongs to the nearest container above it.
//!
//! Ids are never shortened: peers that cut container ids or cgroup ids
//! attribute events to the wrong container.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Length of a full container id in hex digits.
pub(crate) const CONTAINER_ID_LEN: usize = 64;

/// The container runtime a cgroup name says made the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
    /// The cgroupfs driver names a container's cgroup by its bare id.
    Unknown,
}

/// The pod's QoS class, as the kubelet encodes it in the cgroup path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a cgroup path says about the cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupPath {
    /// A container's cgroup, or a cgroup below it.
    Container(ContainerCgroup),
    /// The pod's own cgroup (its containers' parent).
    PodLevel { pod_uid: String, qos: Qos },
    /// Anything else: system services, the QoS slices, a CRI-O monitor.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// With `-` separators, as the API server spells it.
    pub pod_uid: String,
    /// The full 64-hex id, as in `status.containerStatuses[].containerID`
    /// after the `<runtime>://` prefix.
    pub container_id: String,
    pub runtime: Runtime,
    pub qos: Qos,
    /// Directories between the container's cgroup and this one: 0 for the
    /// container's own cgroup.
    pub depth_below_container: usize,
}

/// Parses a cgroup v2 path relative to the cgroup2 root (leading `/`
/// optional). Pure: no I/O. Non-UTF-8 bytes are allowed anywhere except in
/// the parts that identify a pod or container.
pub fn parse(path: impl AsRef<[u8]>) -> CgroupPath {
    let parts: Vec<&[u8]> = path
        .as_ref()
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .collect();

    // The nearest container directory, searching up from the leaf.
    for (i, part) in parts.iter().enumerate().rev() {
        let found = match containerd_on_systemd_host(part) {
            Some(found) => Some(found),
            None if i > 0 => pod_dir(&parts[..i]).and_then(|(pod_uid, qos)| {
                container_dir(part).map(|(container_id, runtime)| Found {
                    pod_uid,
                    qos,
                    container_id,
                    runtime,
                })
            }),
            None => None,
        };
        if let Some(f) = found {
            return CgroupPath::Container(ContainerCgroup {
                pod_uid: f.pod_uid,
                container_id: f.container_id,
                runtime: f.runtime,
                qos: f.qos,
                depth_below_container: parts.len() - 1 - i,
            });
        }
    }
    match pod_dir(&parts) {
        Some((pod_uid, qos)) => CgroupPath::PodLevel { pod_uid, qos },
        None => CgroupPath::Other,
    }
}

struct Found {
    pod_uid: String,
    qos: Qos,
    container_id: String,
    runtime: Runtime,
}

/// Whether the last of `parts` is a pod's cgroup; its UID and QoS if so.
fn pod_dir(parts: &[&[u8]]) -> Option<(String, Qos)> {
    let (last, above) = parts.split_last()?;
    systemd_pod_slice(last).or_else(|| cgroupfs_pod_dir(last, above))
}

/// `[<prefix>-]kubepods[-burstable|-besteffort]-pod<uid>.slice`. kind's
/// kubelet uses the prefix `kubelet-`.
fn systemd_pod_slice(part: &[u8]) -> Option<(String, Qos)> {
    let stem = part.strip_suffix(b".slice")?;
    let at = find_last(stem, b"-pod")?;
    let (owner, uid) = (&stem[..at], &stem[at + 4..]);
    let qos = if owner.ends_with(b"kubepods-burstable") {
        Qos::Burstable
    } else if owner.ends_with(b"kubepods-besteffort") {
        Qos::BestEffort
    } else if owner.ends_with(b"kubepods") {
        Qos::Guaranteed
    } else {
        return None;
    };
    // `kubepods` must be a whole word: not `mykubepods-pod...`.
    let word_start = owner.len() - qos_suffix_len(qos);
    if word_start > 0 && owner[word_start - 1] != b'-' {
        return None;
    }
    Some((pod_uid(uid)?, qos))
}

fn qos_suffix_len(qos: Qos) -> usize {
    match qos {
        Qos::Guaranteed => "kubepods".len(),
        Qos::Burstable => "kubepods-burstable".len(),
        Qos::BestEffort => "kubepods-besteffort".len(),
    }
}

/// `.../kubepods[/burstable|/besteffort]/pod<uid>`.
fn cgroupfs_pod_dir(part: &[u8], above: &[&[u8]]) -> Option<(String, Qos)> {
    let uid = pod_uid(part.strip_prefix(b"pod")?)?;
    let qos = match above {
        [.., b"kubepods", b"burstable"] => Qos::Burstable,
        [.., b"kubepods", b"besteffort"] => Qos::BestEffort,
        [.., b"kubepods"] => Qos::Guaranteed,
        _ => return None,
    };
    Some((uid, qos))
}

/// A container's directory right below its pod's: the id and runtime.
fn container_dir(part: &[u8]) -> Option<(String, Runtime)> {
    // systemd driver: `<runtime>-<id>.scope`.
    if let Some(stem) = part.strip_suffix(b".scope") {
        return prefixed_container_id(stem);
    }
    // cgroupfs driver: a bare id (containerd, docker) or `<runtime>-<id>`.
    if let Some(id) = container_id(part) {
        return Some((id, Runtime::Unknown));
    }
    prefixed_container_id(part)
}

/// `cri-containerd-<id>`, `crio-<id>`, `docker-<id>`. `crio-conmon-<id>`
/// does not match: its id part is not 64 hex digits.
fn prefixed_container_id(stem: &[u8]) -> Option<(String, Runtime)> {
    const PREFIXES: [(&[u8], Runtime); 3] = [
        (b"cri-containerd-", Runtime::Containerd),
        (b"crio-", Runtime::Crio),
        (b"docker-", Runtime::Docker),
    ];
    PREFIXES.iter().find_map(|(prefix, runtime)| {
        let id = container_id(stem.strip_prefix(*prefix)?)?;
        Some((id, *runtime))
    })
}

/// containerd with `SystemdCgroup = false` on a host where the kubelet
/// uses the systemd driver: `kubepods-<qos>-pod<uid>.slice:cri-containerd:<id>`
/// in one directory name.
fn containerd_on_systemd_host(part: &[u8]) -> Option<Found> {
    let mut fields = part.split(|&b| b == b':');
    let (slice, runtime, id) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let runtime = match runtime {
        b"cri-containerd" => Runtime::Containerd,
        b"crio" => Runtime::Crio,
        b"docker" => Runtime::Docker,
        _ => return None,
    };
    let (pod_uid, qos) = systemd_pod_slice(slice)?;
    Some(Found {
        pod_uid,
        qos,
        container_id: container_id(id)?,
        runtime,
    })
}

/// Exactly 64 lowercase hex digits.
fn container_id(s: &[u8]) -> Option<String> {
    (s.len() == CONTAINER_ID_LEN && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| String::from_utf8_lossy(s).into_owned())
}

/// A pod UID as a cgroup name spells it: `8-4-4-4-12` hex groups joined by
/// `-` (cgroupfs) or `_` (systemd), or 32 hex digits (static pods, whose
/// UID is a hash of their manifest). Returned with `-`.
fn pod_uid(s: &[u8]) -> Option<String> {
    let hex = |b: &u8| b.is_ascii_hexdigit();
    let ok = match s.len() {
        32 => s.iter().all(hex),
        36 => s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-' || *b == b'_',
            _ => hex(b),
        }),
        _ => false,
    };
    ok.then(|| {
        s.iter()
            .map(|&b| if b == b'_' { '-' } else { b as char })
            .collect()
    })
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

// ---------------------------------------------------------------------------
// The host's cgroup2 tree.

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupRootError {
    #[error("cgroup root {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a cgroup v2 file system{hint}; roar-node needs the host's cgroup v2 tree"
    )]
    NotCgroup2 { path: PathBuf, hint: String },
    #[error(
        "{path} is a cgroup v2 file system but its root inode is {inode}, not 1: this is not the host's cgroup root (a container's cgroup namespace, or a sub-directory); mount the host's at {path} (hostPath /sys/fs/cgroup)"
    )]
    NotHostRoot { path: PathBuf, inode: u64 },
}

/// One directory of the cgroup2 tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupDir {
    /// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the
    /// directory's inode number.
    pub(crate) id: u64,
    /// Below the cgroup2 root, starting with `/`; the root is `/`.
    pub(crate) path: String,
}

fn statfs_magic(path: &Path) -> Result<i64, CgroupRootError> {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0)
        .map_err(|e| CgroupRootError::Io {
            path: path.to_owned(),
            source: e.into(),
        })
}

/// The host's cgroup2 root at or below `given`: `given` itself, or
/// `given/unified` on a hybrid (v1 + v2) host, where `/sys/fs/cgroup` is a
/// tmpfs holding the v1 hierarchies. Checks that it is the **host's** root
/// (inode 1), not a container's cgroup namespace view.
pub(crate) fn resolve_host_cgroup2_root(given: &Path) -> Result<PathBuf, CgroupRootError> {
    let root = if statfs_magic(given)? == CGROUP2_SUPER_MAGIC {
        given.to_owned()
    } else {
        let unified = given.join("unified");
        if unified.is_dir() && statfs_magic(&unified)? == CGROUP2_SUPER_MAGIC {
            unified
        } else {
            let hint = if given.join("cpu").exists() || given.join("memory").exists() {
                " (it holds cgroup v1 hierarchies and no cgroup2 mount at unified/: a v1-only node)"
            } else {
                ""
            };
            return Err(CgroupRootError::NotCgroup2 {
                path: given.to_owned(),
                hint: hint.into(),
            });
        }
    };
    check_host_root(&root)?;
    Ok(root)
}

/// Fails unless `root` is a cgroup2 mount of the whole hierarchy.
pub(crate) fn check_host_root(root: &Path) -> Result<(), CgroupRootError> {
    if statfs_magic(root)? != CGROUP2_SUPER_MAGIC {
        return Err(CgroupRootError::NotCgroup2 {
            path: root.to_owned(),
            hint: String::new(),
        });
    }
    let inode = fs::metadata(root)
        .map_err(|source| CgroupRootError::Io {
            path: root.to_owned(),
            source,
        })?
        .ino();
    if inode != 1 {
        return Err(CgroupRootError::NotHostRoot {
            path: root.to_owned(),
            inode,
        });
    }
    Ok(())
}

/// Every directory of the cgroup2 tree at `root` (root first, parents
/// before children), with its cgroup id. Cgroups removed while walking are
/// skipped, not errors: containers come and go. Does not check that `root`
/// is the host's (see [`resolve_host_cgroup2_root`]).
pub(crate) fn walk(root: &Path) -> Result<Vec<CgroupDir>, CgroupRootError> {
    let meta = fs::metadata(root).map_err(|source| CgroupRootError::Io {
        path: root.to_owned(),
        source,
    })?;
    let mut out = vec![CgroupDir {
        id: meta.ino(),
        path: "/".into(),
    }];
    let mut next = 0;
    while next < out.len() {
        let rel = out[next].path.clone();
        next += 1;
        let dir = root.join(rel.trim_start_matches('/'));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue; // removed meanwhile
        };
        let mut children: Vec<CgroupDir> = entries
            .flatten()
            .filter_map(|e| {
                // DirEntry::metadata does not follow symlinks; cgroupfs has
                // none, and a stray one must not lead the walk elsewhere.
                let m = e.metadata().ok()?;
                // Same device: never walk into something mounted below.
                (m.is_dir() && m.dev() == meta.dev()).then(|| CgroupDir {
                    id: m.ino(),
                    path: join_rel(&rel, &e.file_name().to_string_lossy()),
                })
            })
            .collect();
        children.sort_by(|a, b| a.path.cmp(&b.path));
        out.extend(children);
    }
    Ok(out)
}

fn join_rel(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests;
