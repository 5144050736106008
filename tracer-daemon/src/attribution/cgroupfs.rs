//! cgroup v2 on the host: finding its mount, making and removing the
//! cgroup a local run is traced in, and what the daemon reads of a
//! container's cgroup (whether it is populated, a process in it).

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Decodes mountinfo's octal escapes (`\040` is a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points of `cgroup2` file systems in a mountinfo text.
pub(crate) fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mountpoint = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape(mountpoint)))
        })
        .collect()
}

/// This process's cgroup v2 mount (never assumed to be /sys/fs/cgroup:
/// hybrid hosts mount it at /sys/fs/cgroup/unified).
pub(crate) fn find_cgroup2() -> std::io::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    cgroup2_mounts(&info).into_iter().next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no cgroup v2 file system is mounted (cgroup2 in /proc/self/mountinfo): roar-node needs cgroup v2",
        )
    })
}

/// The cgroup id the kernel reports for a cgroup directory: its inode.
pub(crate) fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(fs::metadata(dir)?.ino())
}

/// A cgroup made for one local run; removed on drop if still there.
pub(crate) struct LocalCgroup {
    pub(crate) path: PathBuf,
    /// Path below the cgroup2 root, as the kernel names it.
    pub(crate) rel: String,
    pub(crate) id: u64,
    procs: File,
}

impl LocalCgroup {
    /// Makes `<cgroup2>/roar-node/<name>`.
    pub(crate) fn create(root: &Path, name: &str) -> std::io::Result<Self> {
        let parent = root.join("roar-node");
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", parent.display()),
                ));
            }
        }
        let path = parent.join(name);
        fs::create_dir(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let id = cgroup_id(&path)?;
        let procs = OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))?;
        Ok(Self {
            rel: format!("/roar-node/{name}"),
            path,
            id,
            procs,
        })
    }

    /// An fd a child writes "0" to (in `pre_exec`) to move itself here.
    pub(crate) fn procs_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.procs.as_raw_fd()
    }

    /// Moves process `pid` into this cgroup.
    #[cfg(test)]
    pub(crate) fn add(&self, pid: u32) -> std::io::Result<()> {
        use std::io::Write;
        (&self.procs).write_all(pid.to_string().as_bytes())
    }

    /// Whether any process is still in it (or in a descendant).
    pub(crate) fn populated(&self) -> std::io::Result<bool> {
        let events = fs::read_to_string(self.path.join("cgroup.events"))?;
        Ok(events.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Removes it (and empty descendants the command may have made).
    pub(crate) fn remove(&self) -> std::io::Result<()> {
        remove_tree(&self.path)
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Drop for LocalCgroup {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// A process in the cgroup at `rel`, as a host PID. cgroup.procs shows
/// PIDs in the reader's PID namespace (0 for processes outside it, which
/// all are when the daemon runs without hostPID), so the host's /proc is
/// searched instead: the process whose cgroup v2 line (`0::<path>`) names
/// this cgroup or one below it.
pub(crate) fn pid_in_cgroup(host_proc: &Path, rel: &str) -> Option<u32> {
    let below = format!("{rel}/");
    std::fs::read_dir(host_proc)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(host_proc.join(pid.to_string()).join("cgroup"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
                })
                .is_some_and(|p| p == rel || p.starts_with(&below))
        })
}

/// Whether any process is in the cgroup (false when it is gone).
pub(crate) fn populated(cgroot: &Path, rel: &str) -> bool {
    std::fs::read_to_string(
        cgroot
            .join(rel.trim_start_matches('/'))
            .join("cgroup.events"),
    )
    .map(|s| s.lines().any(|l| l.trim() == "populated 1"))
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(
            cgroup2_mounts(hybrid),
            vec![PathBuf::from("/sys/fs/cgroup/unified")]
        );
        let escaped = "30 1 0:26 / /host/sys/fs/my\\040cg rw - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mounts(escaped),
            vec![PathBuf::from("/host/sys/fs/my cg")]
        );
        assert!(cgroup2_mounts("25 24 0:22 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw").is_empty());
    }

    /// Finds a process put in a real cgroup through /proc (needs root).
    #[test]
    fn finds_a_process_of_a_cgroup_through_proc() {
        let Ok(root) = find_cgroup2() else {
            crate::test_support::skip("no cgroup2 mount");
            return;
        };
        let name = format!("pid-in-cgroup-{}", std::process::id());
        let cg = match LocalCgroup::create(&root, &name) {
            Ok(cg) => cg,
            Err(e) => {
                crate::test_support::skip(&format!("cannot make a cgroup ({e}); run as root"));
                return;
            }
        };
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        cg.add(child.id()).unwrap();
        let found = pid_in_cgroup(Path::new("/proc"), &cg.rel);
        let empty = pid_in_cgroup(Path::new("/proc"), &format!("{}-none", cg.rel));
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = cg.remove();
        assert_eq!(found, Some(child.id()));
        assert_eq!(empty, None);
    }
}
