//! The process tree of one task.

use std::collections::BTreeMap;

use roar_node_common::event::{EXEC_MNT_NS_UNKNOWN, EXEC_PPID_UNKNOWN, EXEC_UID_UNKNOWN};

use crate::events::{Exec, FilePath};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Process {
    pub(crate) tgid: u32,
    /// Parent process, when known (a process that entered the task by
    /// being moved into its cgroup has a parent outside it).
    pub(crate) ppid: Option<u32>,
    /// argv of the last exec (inherited from the parent until it execs).
    pub(crate) argv: Vec<Vec<u8>>,
    /// argv of its first exec: what it was started as (a shell running
    /// `sh -c 'cmd < in > out'` execs `cmd` in the same process).
    pub(crate) first_argv: Option<Vec<Vec<u8>>>,
    pub(crate) argv_truncated: bool,
    pub(crate) argv_total_len: u32,
    pub(crate) exe: Option<FilePath>,
    pub(crate) execs: u32,
    /// Threads started besides the main one.
    pub(crate) threads: u32,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: Option<u64>,
    /// wait(2) status.
    pub(crate) exit_status: Option<u32>,
    pub(crate) mnt_ns: u32,
    pub(crate) uid: Option<u32>,
    /// `events::EXEC_UNKNOWN_FIELDS` bits of its execs: fields the kernel
    /// could not read (their values here are the parent's, or none).
    pub(crate) unknown: u32,
}

impl Process {
    #[cfg(test)]
    pub(crate) fn exited(&self) -> bool {
        self.end_ns.is_some()
    }
}

/// Turns a wait(2) status into a shell-style exit code: the exit status,
/// or 128 + signal.
pub(crate) fn exit_code(status: u32) -> i32 {
    let sig = status & 0x7f;
    if sig == 0 {
        ((status >> 8) & 0xff) as i32
    } else {
        128 + sig as i32
    }
}

/// Signal that killed the process, if any.
pub(crate) fn exit_signal(status: u32) -> Option<u32> {
    let sig = status & 0x7f;
    (sig != 0).then_some(sig)
}

#[derive(Debug, Default)]
pub(crate) struct ProcessTree {
    procs: BTreeMap<u32, Process>,
    max: usize,
    /// Processes not tracked because the cap was reached.
    pub(crate) overflow: u64,
    /// argv bytes held (each exec's, and each fork's inherited copy).
    argv_bytes: u64,
    max_argv_bytes: u64,
    /// Execs and forks whose argv was not kept because the task's argv
    /// bytes reached the cap (the process is kept, its argv is empty and
    /// flagged truncated).
    pub(crate) argv_over_cap: u64,
}

fn argv_len(argv: &[Vec<u8>]) -> u64 {
    argv.iter().map(|a| a.len() as u64 + 1).sum()
}

impl ProcessTree {
    #[cfg(test)]
    pub(crate) fn new(max: usize) -> Self {
        Self::with_argv_cap(max, u64::MAX)
    }

    /// With a cap on the argv bytes the task may hold (a fork bomb with
    /// 1 MiB command lines must not take the daemon's memory).
    pub(crate) fn with_argv_cap(max: usize, max_argv_bytes: u64) -> Self {
        Self {
            procs: BTreeMap::new(),
            max,
            overflow: 0,
            argv_bytes: 0,
            max_argv_bytes,
            argv_over_cap: 0,
        }
    }

    /// Takes `argv` if the cap allows, else counts it and returns nothing.
    fn keep_argv(&mut self, argv: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        let n = argv_len(argv);
        if self.argv_bytes.saturating_add(n) > self.max_argv_bytes {
            self.argv_over_cap += 1;
            return None;
        }
        self.argv_bytes += n;
        Some(argv.to_vec())
    }

    pub(crate) fn get(&self, tgid: u32) -> Option<&Process> {
        self.procs.get(&tgid)
    }

    /// A tree as a checkpoint had it.
    pub(crate) fn restore(
        max: usize,
        max_argv_bytes: u64,
        procs: impl IntoIterator<Item = Process>,
        overflow: u64,
        argv_over_cap: u64,
    ) -> Self {
        let procs: BTreeMap<u32, Process> = procs.into_iter().map(|p| (p.tgid, p)).collect();
        let argv_bytes = procs
            .values()
            .map(|p| argv_len(&p.argv) + p.first_argv.as_deref().map_or(0, argv_len))
            .sum();
        Self {
            procs,
            max,
            overflow,
            argv_bytes,
            max_argv_bytes,
            argv_over_cap,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Process> {
        self.procs.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.procs.len()
    }

    /// Mount namespace of a process, if known.
    pub(crate) fn mnt_ns(&self, tgid: u32) -> u32 {
        self.procs.get(&tgid).map(|p| p.mnt_ns).unwrap_or(0)
    }

    fn ensure(&mut self, tgid: u32, time_ns: u64) -> Option<&mut Process> {
        if !self.procs.contains_key(&tgid) {
            if self.procs.len() >= self.max {
                self.overflow += 1;
                return None;
            }
            self.procs.insert(
                tgid,
                Process {
                    tgid,
                    start_ns: time_ns,
                    ..Process::default()
                },
            );
        }
        self.procs.get_mut(&tgid)
    }

    pub(crate) fn fork(&mut self, parent: u32, child_tgid: u32, thread: bool, time_ns: u64) {
        if thread {
            if let Some(p) = self.ensure(parent, time_ns) {
                p.threads += 1;
            }
            return;
        }
        let inherited = self.procs.get(&parent).cloned();
        // A pid can be reused within one task only after its earlier owner
        // exited; the new process replaces it.
        if let Some(old) = self.procs.remove(&child_tgid) {
            self.release(&old);
        }
        let argv = inherited.as_ref().map(|p| self.keep_argv(&p.argv));
        if let Some(c) = self.ensure(child_tgid, time_ns) {
            c.ppid = Some(parent);
            if let (Some(p), Some(argv)) = (inherited, argv) {
                c.argv_truncated = p.argv_truncated || argv.is_none();
                c.argv = argv.unwrap_or_default();
                c.argv_total_len = p.argv_total_len;
                c.exe = p.exe;
                c.mnt_ns = p.mnt_ns;
                c.uid = p.uid;
            }
        }
    }

    /// Gives back the argv bytes a replaced process held.
    fn release(&mut self, p: &Process) {
        let n = argv_len(&p.argv) + p.first_argv.as_deref().map_or(0, argv_len);
        self.argv_bytes = self.argv_bytes.saturating_sub(n);
    }

    pub(crate) fn exec(&mut self, tgid: u32, e: &Exec, time_ns: u64) {
        let Some(p) = self.ensure(tgid, time_ns) else {
            return;
        };
        let old = std::mem::take(&mut p.argv);
        let first = p.first_argv.is_none();
        self.argv_bytes = self.argv_bytes.saturating_sub(argv_len(&old));
        let kept = self.keep_argv(&e.argv);
        let first_kept = if first { self.keep_argv(&e.argv) } else { None };
        let Some(p) = self.procs.get_mut(&tgid) else {
            return;
        };
        if p.ppid.is_none() && e.ppid != 0 && e.unknown & EXEC_PPID_UNKNOWN == 0 {
            p.ppid = Some(e.ppid);
        }
        let over = kept.is_none();
        p.argv = kept.unwrap_or_default();
        if first {
            p.first_argv = first_kept;
        }
        {
            p.argv_truncated = e.argv_truncated || e.argv_unreadable || over;
            p.argv_total_len = e.argv_total_len;
            p.exe = Some(e.exe.clone());
            p.execs += 1;
            p.unknown |= e.unknown;
            // What could not be read stays what was known (a fork copied
            // the parent's), never 0 or a made-up uid.
            if e.unknown & EXEC_MNT_NS_UNKNOWN == 0 {
                p.mnt_ns = e.mnt_ns;
            }
            if e.unknown & EXEC_UID_UNKNOWN == 0 {
                p.uid = Some(e.uid);
            }
        }
    }

    pub(crate) fn exit(&mut self, tgid: u32, status: u32, time_ns: u64) {
        if let Some(p) = self.ensure(tgid, time_ns) {
            p.end_ns = Some(time_ns);
            p.exit_status = Some(status);
        }
    }

    #[cfg(test)]
    /// Processes seen that have not exited.
    pub(crate) fn running(&self) -> usize {
        self.procs.values().filter(|p| !p.exited()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(argv: &[&str]) -> Exec {
        Exec {
            ppid: 1,
            exe: FilePath {
                bytes: b"/bin/x".to_vec(),
                inexact: 0,
            },
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            argv_truncated: false,
            argv_unreadable: false,
            argv_total_len: 0,
            mnt_ns: 9,
            uid: 0,
            own_cgroup: 0,
            unknown: 0,
        }
    }

    /// 1,000 processes with 1 KiB command lines against a 64 KiB cap: the
    /// tree keeps every process, argv until the cap, then counts; bytes
    /// given back when a pid is reused are kept again.
    #[test]
    fn argv_bytes_are_capped_and_counted() {
        let big = "x".repeat(1023);
        let mut t = ProcessTree::with_argv_cap(10_000, 64 << 10);
        t.exec(1, &exec(&[&big]), 1);
        for pid in 2..1002 {
            t.fork(1, pid, false, 2);
            t.exec(pid, &exec(&[&big]), 3);
        }
        assert_eq!(t.len(), 1001);
        assert!(t.argv_bytes <= 64 << 10, "{}", t.argv_bytes);
        assert!(t.argv_over_cap > 900, "{}", t.argv_over_cap);
        let last = t.get(1001).unwrap();
        assert!(last.argv.is_empty() && last.argv_truncated);
        assert_eq!(t.get(1).unwrap().argv[0].len(), 1023);
        // Uncapped: all kept.
        let mut u = ProcessTree::new(10_000);
        u.exec(1, &exec(&[&big]), 1);
        u.fork(1, 2, false, 2);
        assert_eq!(u.get(2).unwrap().argv[0].len(), 1023);
        assert_eq!(u.argv_over_cap, 0);
    }

    #[test]
    fn fork_exec_exit_builds_tree() {
        let mut t = ProcessTree::new(10);
        t.exec(100, &exec(&["sh", "-c", "x"]), 1);
        t.fork(100, 101, false, 2);
        t.fork(100, 100, true, 2);
        assert_eq!(t.get(101).unwrap().argv[0], b"sh");
        t.exec(101, &exec(&["cat"]), 3);
        t.exit(101, 0, 4);
        t.exit(100, 3 << 8, 5);
        let child = t.get(101).unwrap();
        assert_eq!(
            (child.ppid, child.argv[0].as_slice()),
            (Some(100), &b"cat"[..])
        );
        assert_eq!(t.get(100).unwrap().threads, 1);
        assert_eq!(t.get(100).unwrap().ppid, Some(1));
        assert_eq!(t.running(), 0);
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(9), 137);
        assert_eq!(exit_signal(9), Some(9));
    }

    /// Fields the kernel could not read are not taken as values: no
    /// parent 0, no uid, the mount namespace stays the one inherited.
    #[test]
    fn unreadable_exec_fields_are_unknown_not_zero() {
        let mut t = ProcessTree::new(10);
        t.exec(100, &exec(&["sh"]), 1);
        t.fork(100, 101, false, 2);
        let blind = Exec {
            ppid: 0,
            mnt_ns: 0,
            uid: u32::MAX,
            unknown: EXEC_PPID_UNKNOWN | EXEC_MNT_NS_UNKNOWN | EXEC_UID_UNKNOWN,
            ..exec(&["cat"])
        };
        t.exec(101, &blind, 3);
        t.exec(102, &blind, 3);
        let child = t.get(101).unwrap();
        assert_eq!(
            (child.ppid, child.mnt_ns, child.uid),
            (Some(100), 9, Some(0))
        );
        let orphan = t.get(102).unwrap();
        assert_eq!((orphan.ppid, orphan.mnt_ns, orphan.uid), (None, 0, None));
        assert_eq!(orphan.unknown, blind.unknown);
    }

    #[test]
    fn first_exec_is_kept() {
        let mut t = ProcessTree::new(10);
        t.fork(1, 200, false, 1);
        assert_eq!(t.get(200).unwrap().first_argv, None);
        t.exec(200, &exec(&["sh", "-c", "wc -c < in > out"]), 2);
        t.exec(200, &exec(&["wc", "-c"]), 3);
        let p = t.get(200).unwrap();
        assert_eq!(p.argv[0], b"wc");
        assert_eq!(p.first_argv.as_ref().unwrap()[0], b"sh");
    }
}
