//! Held mount namespaces: a task's files are hashed from the task's own
//! view of the file system (its root, its volumes), even after all its
//! processes have exited, because an open namespace fd keeps the
//! namespace and its mounts alive.

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::Path,
    sync::Arc,
};

#[derive(Debug)]
pub struct MountNs {
    /// The namespace's inode number (what the kernel reports as mnt_ns).
    pub inum: u64,
    file: File,
}

impl MountNs {
    /// The mount namespace of process `pid`, through `proc_root` (`/proc`
    /// or the host's /proc mounted elsewhere).
    pub fn of_pid(proc_root: &Path, pid: u32) -> std::io::Result<Self> {
        Self::open(&proc_root.join(pid.to_string()).join("ns/mnt"))
    }

    /// The namespace this process runs in.
    pub fn current() -> std::io::Result<Self> {
        Self::open(Path::new("/proc/self/ns/mnt"))
    }

    fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let inum = file.metadata()?.ino();
        Ok(Self { inum, file })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The namespaces one task's processes ran in.
#[derive(Debug, Default)]
pub struct Namespaces {
    by_inum: HashMap<u64, Arc<MountNs>>,
    /// The first one seen: used for files whose opener's namespace is
    /// unknown.
    default: Option<Arc<MountNs>>,
    /// Namespaces that could not be opened (process already gone).
    pub missed: u64,
}

impl Namespaces {
    pub fn knows(&self, inum: u64) -> bool {
        self.by_inum.contains_key(&inum)
    }

    pub fn add(&mut self, ns: Arc<MountNs>) {
        if self.default.is_none() {
            self.default = Some(ns.clone());
        }
        self.by_inum.insert(ns.inum, ns);
    }

    /// The namespace to look `inum`'s files up in.
    pub fn resolve(&self, inum: u64) -> Option<Arc<MountNs>> {
        self.by_inum.get(&inum).or(self.default.as_ref()).cloned()
    }
}
