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
pub(crate) struct MountNs {
    /// The namespace's inode number (what the kernel reports as mnt_ns).
    pub(crate) inum: u64,
    file: File,
}

impl MountNs {
    /// The mount namespace of process `pid`, through `proc_root` (`/proc`
    /// or the host's /proc mounted elsewhere).
    pub(crate) fn of_pid(proc_root: &Path, pid: u32) -> std::io::Result<Self> {
        Self::open(&proc_root.join(pid.to_string()).join("ns/mnt"))
    }

    /// The namespace this process runs in.
    pub(crate) fn current() -> std::io::Result<Self> {
        Self::open(Path::new("/proc/self/ns/mnt"))
    }

    fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let inum = file.metadata()?.ino();
        Ok(Self { inum, file })
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Where a file's path is looked up.
#[derive(Clone, Debug)]
pub(crate) enum NsView {
    /// roar-node's own mount namespace.
    Own,
    /// A namespace held open for the task.
    Held(Arc<MountNs>),
    /// The opener's namespace ended before roar-node could hold it: the
    /// path means nothing anywhere else, so the file cannot be hashed
    /// (and must not be reported as deleted).
    Gone,
}

impl NsView {
    /// For the hash pool: `None` is roar-node's own namespace.
    pub(crate) fn held(&self) -> Option<Arc<MountNs>> {
        match self {
            Self::Held(ns) => Some(ns.clone()),
            _ => None,
        }
    }
}

/// The namespaces one task's processes ran in.
#[derive(Debug, Default)]
pub(crate) struct Namespaces {
    /// roar-node's own namespace (0 when unknown).
    own: u64,
    by_inum: HashMap<u64, Arc<MountNs>>,
    /// The first one seen: used for files whose opener's namespace is
    /// unknown (inum 0).
    default: Option<Arc<MountNs>>,
    /// Namespaces that could not be opened (process already gone).
    pub(crate) missed: u64,
    /// A file whose opener's namespace is unknown, when none was held:
    /// looked up in ours (`run`: the task started in our namespace) or
    /// not at all (a container's files are never in the daemon's view).
    pub(crate) unknown_is_gone: bool,
}

impl Namespaces {
    /// For a task traced by a daemon running in namespace `own`.
    pub(crate) fn new(own: u64) -> Self {
        Self {
            own,
            ..Self::default()
        }
    }

    /// See `unknown_is_gone`.
    pub(crate) fn unknown_is_gone(mut self, gone: bool) -> Self {
        self.unknown_is_gone = gone;
        self
    }

    pub(crate) fn knows(&self, inum: u64) -> bool {
        self.by_inum.contains_key(&inum)
    }

    pub(crate) fn add(&mut self, ns: Arc<MountNs>) {
        if self.default.is_none() {
            self.default = Some(ns.clone());
        }
        self.by_inum.insert(ns.inum, ns);
    }

    /// Where to look up the files of a process in namespace `inum`.
    pub(crate) fn resolve(&self, inum: u64) -> NsView {
        if let Some(ns) = self.by_inum.get(&inum) {
            return NsView::Held(ns.clone());
        }
        if inum == 0 {
            return match &self.default {
                Some(ns) => NsView::Held(ns.clone()),
                None if self.unknown_is_gone => NsView::Gone,
                None => NsView::Own,
            };
        }
        if inum == self.own || self.own == 0 {
            return NsView::Own;
        }
        NsView::Gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_namespaces_are_gone_not_ours() {
        let own = MountNs::current().unwrap();
        let mut nss = Namespaces::new(own.inum);
        assert!(matches!(nss.resolve(own.inum), NsView::Own));
        assert!(matches!(nss.resolve(0), NsView::Own));
        // A namespace we never held: looking its paths up in ours would
        // hash the wrong file or call an existing output deleted.
        assert!(matches!(nss.resolve(own.inum + 12345), NsView::Gone));
        let held = Arc::new(MountNs::current().unwrap());
        nss.add(held.clone());
        assert!(matches!(nss.resolve(held.inum), NsView::Held(_)));
        assert!(matches!(nss.resolve(0), NsView::Held(_)));
        // A container's file whose opener is unknown and no namespace of
        // the container held: not looked up in ours.
        let foreign = Namespaces::new(own.inum).unknown_is_gone(true);
        assert!(matches!(foreign.resolve(0), NsView::Gone));
    }
}
