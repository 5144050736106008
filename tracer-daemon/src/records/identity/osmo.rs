//! The user's command in an OSMO user container. `osmo_exec` stays PID 1
//! and runs the command as a child whose argv is the container's
//! `-commands` then `-args` (see `attribution::osmo`); its other children
//! (`/osmo/usr/bin/rsync`, `osmo workflow exec` shells, checkpoint
//! uploads, re-runs of the command) are listed, never taken for it. If
//! `osmo-ctrl` fails, `osmo_exec` exits 0 without running the command: the
//! record says so, with osmo-ctrl's exit code.

use serde_json::{Value, json};

use super::super::encoding::Encoder;
use crate::{
    attribution::{
        osmo::{CTRL_EXIT_CODE_OFFSET, OSMO_RSYNC},
        pods::{PodInfo, RunState},
        policy::OSMO_CTRL,
    },
    tasks::{Process, ProcessTree},
};

/// What `osmo_exec` ran, as the process tree shows it.
pub(super) struct OsmoCommand {
    pub(super) exec_pid: u32,
    /// The user's command; `None`: it never ran.
    pub(super) command_pid: Option<u32>,
    /// How it was told apart.
    matched_by: &'static str,
    /// osmo_exec's other children: `{pid, argv, kind}`.
    others: Vec<Value>,
}

fn base(b: &[u8]) -> &[u8] {
    b.rsplit(|c| *c == b'/').next().unwrap_or(b)
}

fn is_osmo_exec(p: &Process) -> bool {
    p.argv.first().is_some_and(|a| base(a) == b"osmo_exec")
        || p.exe
            .as_ref()
            .is_some_and(|e| base(&e.bytes) == b"osmo_exec")
}

/// What the process was started as (its first exec).
fn started_as(p: &Process) -> &[Vec<u8>] {
    p.first_argv.as_deref().unwrap_or(&p.argv)
}

/// Whether a child's argv is the expected command (a truncated argv
/// matches when it is a prefix of it).
fn runs(p: &Process, expected: &[String]) -> bool {
    let argv = started_as(p);
    let eq = |a: &Vec<u8>, e: &String| a.as_slice() == e.as_bytes();
    if p.argv_truncated {
        argv.len() <= expected.len() && argv.iter().zip(expected).all(|(a, e)| eq(a, e))
    } else {
        argv.len() == expected.len() && argv.iter().zip(expected).all(|(a, e)| eq(a, e))
    }
}

/// Finds `osmo_exec` and its children. `expected`: the command from the
/// pod spec (`None`: not known, the first child that is not rsync is
/// taken, and the record says so).
pub(super) fn find(
    procs: &ProcessTree,
    expected: Option<&[String]>,
    enc: &mut Encoder,
) -> Option<OsmoCommand> {
    let exec = procs
        .iter()
        .filter(|p| is_osmo_exec(p))
        .min_by_key(|p| (p.start_ns, p.tgid))?;
    let mut children: Vec<&Process> = procs
        .iter()
        .filter(|p| p.ppid == Some(exec.tgid) && p.tgid != exec.tgid)
        .collect();
    children.sort_by_key(|p| (p.start_ns, p.tgid));
    let is_rsync =
        |p: &Process| started_as(p).first().map(Vec::as_slice) == Some(OSMO_RSYNC.as_bytes());
    let (command, matched_by) = match expected {
        Some(e) => (
            children.iter().find(|p| runs(p, e)).map(|p| p.tgid),
            "argv equals the container's -commands and -args",
        ),
        None => (
            children.iter().find(|p| !is_rsync(p)).map(|p| p.tgid),
            "first child that is not rsync (the pod spec named no command)",
        ),
    };
    let others = children
        .iter()
        .filter(|p| Some(p.tgid) != command)
        .map(|p| {
            let kind = if is_rsync(p) {
                "rsync"
            } else if expected.is_some_and(|e| runs(p, e)) {
                "rerun"
            } else {
                "other"
            };
            let argv: Vec<String> = started_as(p).iter().map(|a| enc.encode(a)).collect();
            json!({"pid": p.tgid, "argv": argv, "kind": kind})
        })
        .collect();
    Some(OsmoCommand {
        exec_pid: exec.tgid,
        command_pid: command,
        matched_by,
        others,
    })
}

/// Whether `osmo_exec` started any child besides rsync. If it did not, its
/// command never ran (osmo-ctrl failed): the daemon then waits for
/// osmo-ctrl's exit code before it names the record.
pub(crate) fn osmo_exec_started_a_command(procs: &ProcessTree) -> bool {
    let Some(exec) = procs.iter().find(|p| is_osmo_exec(p)) else {
        return true;
    };
    procs.iter().any(|p| {
        p.ppid == Some(exec.tgid)
            && p.tgid != exec.tgid
            && started_as(p).first().map(Vec::as_slice) != Some(OSMO_RSYNC.as_bytes())
    })
}

/// osmo-ctrl's exit code, once the pod's status says it terminated.
pub(crate) fn ctrl_exit_code(pod: Option<&PodInfo>) -> Option<i32> {
    let ctrl = pod?.container(OSMO_CTRL)?;
    ctrl.runs.iter().find_map(|r| match r.state {
        RunState::Terminated { exit_code } => Some(exit_code),
        _ => None,
    })
}

/// The exit code OSMO reports for a task whose osmo-ctrl failed before
/// the command ran.
#[derive(Clone, Copy, Debug)]
pub(super) struct NeverRan {
    pub(super) exit_code: i32,
}

impl OsmoCommand {
    /// The record's `osmo_command`; with the exit code OSMO gives the task
    /// when osmo-ctrl failed and the command never ran.
    pub(super) fn describe(
        &self,
        expected: Option<&[String]>,
        pod: Option<&PodInfo>,
    ) -> (Value, Option<NeverRan>) {
        let ran = self.command_pid.is_some();
        let ctrl = ctrl_exit_code(pod);
        let mut v = json!({
            "ran": ran,
            "exec_pid": self.exec_pid,
            "command_pid": self.command_pid,
            "matched_by": self.matched_by,
            "expected_argv": expected,
            "other_children": self.others,
        });
        let mut never = None;
        if !ran {
            v["why"] = json!(match ctrl {
                Some(c) if c != 0 =>
                    "osmo-ctrl failed: osmo_exec returned without running the command",
                Some(_) => "osmo_exec ended without running the command",
                None =>
                    "osmo_exec ended without running the command (osmo-ctrl's exit code was not known in time)",
            });
            v["osmo_ctrl_exit_code"] = json!(ctrl);
            never = ctrl.filter(|c| *c != 0).map(|c| NeverRan {
                exit_code: CTRL_EXIT_CODE_OFFSET.saturating_add(c),
            });
        }
        (v, never)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::exec_event as exec;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// osmo_exec with rsync enabled: rsync starts first, then the command,
    /// then an `osmo workflow exec` shell and a re-run. Only the child
    /// whose argv is the command is "the command"; the first re-run of it
    /// is a re-run.
    #[test]
    fn the_command_is_the_child_running_commands_and_args() {
        let mut p = ProcessTree::new(100);
        p.fork(5, 10, false, 1);
        p.exec(10, &exec(&["/osmo/bin/osmo_exec", "-socketPath", "/s"]), 2);
        p.fork(10, 11, false, 3);
        p.exec(11, &exec(&["/osmo/usr/bin/rsync", "--daemon"]), 4);
        p.fork(10, 12, false, 5);
        p.exec(12, &exec(&["python3", "train.py"]), 6);
        p.fork(10, 13, false, 7);
        p.exec(13, &exec(&["bash"]), 8);
        p.fork(10, 14, false, 9);
        p.exec(14, &exec(&["python3", "train.py"]), 10);
        let expected = s(&["python3", "train.py"]);
        let mut enc = Encoder::default();
        let c = find(&p, Some(&expected), &mut enc).unwrap();
        assert_eq!((c.exec_pid, c.command_pid), (10, Some(12)));
        let kinds: Vec<(u64, String)> = c
            .others
            .iter()
            .map(|o| {
                (
                    o["pid"].as_u64().unwrap(),
                    o["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (11, "rsync".into()),
                (13, "other".into()),
                (14, "rerun".into())
            ]
        );
        // Without the spec: the first child that is not rsync, said so.
        let c = find(&p, None, &mut enc).unwrap();
        assert_eq!(c.command_pid, Some(12));
        assert!(c.matched_by.contains("spec named no command"));
    }

    fn ctrl_pod(code: Option<i32>) -> PodInfo {
        let mut pod: PodInfo = PodInfo::from_pod(
            &serde_json::from_str(crate::attribution::pods::tests::OSMO_POD).unwrap(),
        )
        .unwrap();
        let ctrl = pod
            .containers
            .iter_mut()
            .find(|c| c.name == OSMO_CTRL)
            .unwrap();
        ctrl.runs[0].state = match code {
            Some(exit_code) => RunState::Terminated { exit_code },
            None => RunState::Running,
        };
        pod
    }

    /// osmo-ctrl failed: osmo_exec exited 0 with no child. The record says
    /// the command never ran, with osmo-ctrl's code, and the task's exit
    /// code is OSMO's (2000 + osmo-ctrl's).
    #[test]
    fn a_command_that_never_ran_is_flagged_with_osmo_ctrls_exit_code() {
        let mut p = ProcessTree::new(100);
        p.fork(5, 10, false, 1);
        p.exec(10, &exec(&["/osmo/bin/osmo_exec", "-commands", "x"]), 2);
        let expected = s(&["x"]);
        let c = find(&p, Some(&expected), &mut Encoder::default()).unwrap();
        assert_eq!(c.command_pid, None);
        let (v, never) = c.describe(Some(&expected), Some(&ctrl_pod(Some(3))));
        assert_eq!(v["ran"], false);
        assert_eq!(v["osmo_ctrl_exit_code"], 3);
        assert!(v["why"].as_str().unwrap().contains("osmo-ctrl failed"));
        assert_eq!(never.map(|n| n.exit_code), Some(2003));
        let (v, never) = c.describe(Some(&expected), Some(&ctrl_pod(None)));
        assert_eq!(
            (v["ran"].clone(), v["osmo_ctrl_exit_code"].clone()),
            (json!(false), Value::Null)
        );
        assert!(never.is_none());
    }
}
