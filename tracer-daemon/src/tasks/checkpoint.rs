//! A task's state to and from the spool's `TaskState` (proto/spool.proto),
//! so that a restarted daemon continues a running task from its last
//! checkpoint instead of from nothing: one conversion each way per type.

use roar_node_common::event::EventKind;

use super::{
    Task, TaskLimits, TaskStats, UnreadableFields,
    files::{FileState, FileTable, Input, Output},
    process::{Process, ProcessTree},
};
use crate::{events::FilePath, proto as pb};

impl From<&Task> for pb::TaskState {
    fn from(task: &Task) -> Self {
        Self {
            processes: task.processes.iter().map(pb::Process::from).collect(),
            files: task
                .files
                .iter()
                .map(|(path, f)| pb::FileState::from((path.as_slice(), f)))
                .collect(),
            processes_overflow: task.processes.overflow,
            argv_over_cap: task.processes.argv_over_cap,
            files_overflow: task.files.overflow,
            events_by_kind: task.stats.events.to_vec(),
            input_hash_deferred: task.stats.input_hash_deferred,
            first_ns: task.first_ns,
            last_ns: task.last_ns,
            inexact_events: task.stats.inexact_events,
            unreadable: Some((&task.stats.unreadable).into()),
        }
    }
}

impl From<&UnreadableFields> for pb::UnreadableFields {
    fn from(u: &UnreadableFields) -> Self {
        Self {
            ppid: u.ppid,
            mount_namespace: u.mount_namespace,
            uid: u.uid,
            argv: u.argv,
            open_flags: u.open_flags,
            size: u.size,
        }
    }
}

impl From<&pb::UnreadableFields> for UnreadableFields {
    fn from(u: &pb::UnreadableFields) -> Self {
        Self {
            ppid: u.ppid,
            mount_namespace: u.mount_namespace,
            uid: u.uid,
            argv: u.argv,
            open_flags: u.open_flags,
            size: u.size,
        }
    }
}

impl Task {
    /// The task a checkpoint describes, with today's caps.
    pub(crate) fn from_checkpoint(limits: TaskLimits, s: &pb::TaskState) -> Task {
        let mut events = [0u64; EventKind::COUNT];
        for (slot, v) in events.iter_mut().zip(&s.events_by_kind) {
            *slot = *v;
        }
        Task {
            processes: ProcessTree::restore(
                limits.max_processes,
                limits.max_argv_bytes,
                s.processes.iter().map(Process::from),
                s.processes_overflow,
                s.argv_over_cap,
            ),
            files: FileTable::restore(
                limits.max_files,
                s.files.iter().map(<(Vec<u8>, FileState)>::from),
                s.files_overflow,
            ),
            stats: TaskStats {
                events,
                input_hash_deferred: s.input_hash_deferred,
                inexact_events: s.inexact_events,
                unreadable: s.unreadable.as_ref().map(Into::into).unwrap_or_default(),
            },
            first_ns: s.first_ns,
            last_ns: s.last_ns,
        }
    }
}

impl From<&FilePath> for pb::Path {
    fn from(p: &FilePath) -> Self {
        pb::Path {
            bytes: p.bytes.clone(),
            inexact: p.inexact.into(),
        }
    }
}

impl From<&pb::Path> for FilePath {
    fn from(p: &pb::Path) -> Self {
        FilePath {
            bytes: p.bytes.clone(),
            inexact: p.inexact as u16,
        }
    }
}

impl From<&Process> for pb::Process {
    fn from(p: &Process) -> Self {
        pb::Process {
            tgid: p.tgid,
            ppid: p.ppid,
            argv: p.argv.clone(),
            first_argv: p.first_argv.clone().map(|args| pb::Argv { args }),
            argv_truncated: p.argv_truncated,
            argv_total_len: p.argv_total_len,
            exe: p.exe.as_ref().map(pb::Path::from),
            execs: p.execs,
            threads: p.threads,
            start_ns: p.start_ns,
            end_ns: p.end_ns,
            exit_status: p.exit_status,
            mnt_ns: p.mnt_ns,
            uid: p.uid,
            unknown_fields: p.unknown,
        }
    }
}

impl From<&pb::Process> for Process {
    fn from(p: &pb::Process) -> Self {
        Process {
            tgid: p.tgid,
            ppid: p.ppid,
            argv: p.argv.clone(),
            first_argv: p.first_argv.clone().map(|a| a.args),
            argv_truncated: p.argv_truncated,
            argv_total_len: p.argv_total_len,
            exe: p.exe.as_ref().map(FilePath::from),
            execs: p.execs,
            threads: p.threads,
            start_ns: p.start_ns,
            end_ns: p.end_ns,
            exit_status: p.exit_status,
            mnt_ns: p.mnt_ns,
            uid: p.uid,
            unknown: p.unknown_fields,
        }
    }
}

impl From<(&[u8], &FileState)> for pb::FileState {
    fn from((path, f): (&[u8], &FileState)) -> Self {
        pb::FileState {
            path: path.to_vec(),
            input: f.input.as_ref().map(|i| pb::FileInput {
                time_ns: i.time_ns,
                dev: i.dev,
                ino: i.ino,
                size: i.size,
            }),
            output: f.output.as_ref().map(|o| pb::FileOutput {
                time_ns: o.time_ns,
                created: o.created,
                truncated: o.truncated,
                renamed_from: o.renamed_from.clone(),
                dev: o.dev,
            }),
            removed: f.removed,
            inexact: f.inexact.into(),
            mnt_ns: f.mnt_ns,
            input_unknown: f.input_unknown,
        }
    }
}

impl From<&pb::FileState> for (Vec<u8>, FileState) {
    fn from(f: &pb::FileState) -> Self {
        (
            f.path.clone(),
            FileState {
                input: f.input.as_ref().map(|i| Input {
                    time_ns: i.time_ns,
                    dev: i.dev,
                    ino: i.ino,
                    size: i.size,
                }),
                output: f.output.as_ref().map(|o| Output {
                    time_ns: o.time_ns,
                    created: o.created,
                    truncated: o.truncated,
                    renamed_from: o.renamed_from.clone(),
                    dev: o.dev,
                }),
                removed: f.removed,
                inexact: f.inexact as u16,
                mnt_ns: f.mnt_ns,
                input_unknown: f.input_unknown,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::events::{Body, Event, Exec, Open};

    fn ev(time_ns: u64, tgid: u32, body: Body) -> Event {
        Event {
            task: 1,
            time_ns,
            tgid,
            pid: tgid,
            body,
        }
    }

    /// A task through the spool's bytes and back is the same task, and
    /// goes on taking events.
    #[test]
    fn round_trip_through_protobuf() {
        let mut t = Task::new(TaskLimits::default());
        t.processes.fork(1, 10, false, 1);
        t.apply(&ev(
            2,
            10,
            Body::Exec(Exec {
                ppid: 1,
                exe: FilePath {
                    bytes: b"/bin/sh".to_vec(),
                    inexact: 0,
                },
                argv: vec![b"sh".to_vec(), b"-c".to_vec(), vec![0xff, b'x']],
                argv_truncated: true,
                argv_unreadable: false,
                argv_total_len: 1 << 20,
                mnt_ns: 4026531841,
                uid: 0,
                own_cgroup: 0,
                unknown: 0,
            }),
        ));
        for (i, (path, write)) in [(b"/in".as_slice(), false), (b"/out\xfe", true)]
            .into_iter()
            .enumerate()
        {
            t.apply(&ev(
                3 + i as u64,
                10,
                Body::Open(Open {
                    path: FilePath {
                        bytes: path.to_vec(),
                        inexact: 0,
                    },
                    read: !write,
                    write,
                    created: write,
                    truncated: false,
                    flags_unknown: !write,
                    size_unknown: false,
                    tmpfile: false,
                    dev: 8,
                    ino: 100 + i as u64,
                    generation: 0,
                    size: 42,
                    syscall: 257,
                }),
            ));
        }
        let bytes = pb::TaskState::from(&t).encode_to_vec();
        let back = Task::from_checkpoint(
            TaskLimits::default(),
            &pb::TaskState::decode(&*bytes).unwrap(),
        );
        assert_eq!(
            back.processes.iter().collect::<Vec<_>>(),
            t.processes.iter().collect::<Vec<_>>()
        );
        assert_eq!(
            back.files.iter().collect::<Vec<_>>(),
            t.files.iter().collect::<Vec<_>>()
        );
        assert_eq!(back.stats, t.stats);
        assert_eq!((back.first_ns, back.last_ns), (t.first_ns, t.last_ns));
        assert_eq!(back.files.len(), 2);
    }
}
