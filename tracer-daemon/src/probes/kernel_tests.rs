//! The kernel side's counters, forced for real: the programs loaded as
//! the daemon loads them, a real cgroup traced, real processes in it. Each
//! counter the daemon exports moves here because the test makes it move.
//! Needs root (skipped otherwise, a failure under CI).

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
};

use roar_node_common::{
    event::EventHeader,
    loss,
    traced::{TRACE_NO_SUPPRESS, TracedCgroup},
};

use super::{LossCause, PROGRAMS, ProbeOptions, Probes};
use crate::attribution::cgroupfs::{LocalCgroup, find_cgroup2};

/// Programs loaded with a ring buffer of `ring` bytes, and a fresh cgroup;
/// `None` (said) where that cannot be done.
fn setup(ring: u32, name: &str) -> Option<(Probes, LocalCgroup)> {
    if PROGRAMS.is_empty() || !nix::unistd::Uid::effective().is_root() {
        crate::test_support::skip("needs root and the eBPF programs");
        return None;
    }
    let probes = Probes::load(ProbeOptions {
        ring_buffer_bytes: ring,
        ..ProbeOptions::default()
    })
    .unwrap();
    let root = find_cgroup2().unwrap();
    let cg = LocalCgroup::create(&root, &format!("{name}-{}", std::process::id())).unwrap();
    Some((probes, cg))
}

/// Runs `sh -c script` in `cg` (the child moves itself in before exec).
fn run_in(cg: &LocalCgroup, script: &str) {
    let fd = cg.procs_fd();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]).stdout(Stdio::null());
    // SAFETY: only write(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    assert!(cmd.status().unwrap().success());
}

/// The ring buffer's unread bytes are the records waiting in it: at least
/// the task's own records before they are read, fewer once they are.
#[test]
fn ring_buffer_unread_bytes_are_the_records_not_read_yet() {
    let Some((mut probes, cg)) = setup(1 << 20, "kt-fill") else {
        return;
    };
    let mut ring = probes.take_events().unwrap();
    let fill = probes.ring_fill.take().expect("the position pages map");
    while ring.next().is_some() {}
    probes.traced.trace(cg.id, TRACE_NO_SUPPRESS).unwrap();
    run_in(&cg, "for i in 1 2 3 4 5 6 7 8; do cat /etc/hostname; done");
    let unread = fill.unread_bytes();
    let mut ours = 0u64;
    while let Some(r) = ring.next() {
        let task = u64::from_ne_bytes(
            r[std::mem::offset_of!(EventHeader, cgroup_id)..][..8]
                .try_into()
                .unwrap(),
        );
        if task == cg.id {
            // Each record: an 8-byte header, its length rounded up to 8.
            ours += 8 + (r.len() as u64).next_multiple_of(8);
        }
    }
    assert!(ours > 0, "no record of the traced task");
    assert!(
        unread >= ours,
        "unread {unread} < the task's records {ours}"
    );
    assert!(fill.unread_bytes() < ours, "still unread after reading");
    probes.traced.untrace(cg.id);
}

/// A ring buffer too small for what the task does: the kernel counts the
/// events it could not send, by kind and on the task's entry, and they
/// add up under one cause.
#[test]
fn a_full_ring_buffer_is_counted_by_cause_and_on_the_task() {
    let Some((mut probes, cg)) = setup(4096, "kt-full") else {
        return;
    };
    let _ring = probes.take_events().unwrap();
    let before = probes.stats.read();
    probes.traced.trace(cg.id, TRACE_NO_SUPPRESS).unwrap();
    run_in(
        &cg,
        "i=0; while [ $i -lt 300 ]; do cat /etc/hostname; i=$((i+1)); done",
    );
    let entry = probes.traced.untrace(cg.id).unwrap();
    let after = probes.stats.read();
    let cause = |s: &super::KernelStats, c| {
        s.lost_by_cause()
            .into_iter()
            .find(|(x, _)| *x == c)
            .map_or(0, |(_, n)| n)
    };
    let lost = cause(&after, LossCause::KernelRingBufferFull)
        - cause(&before, LossCause::KernelRingBufferFull);
    assert!(entry.lost > 0, "{entry:?}");
    assert!(
        lost >= entry.lost,
        "node-wide {lost} < the task's {}",
        entry.lost
    );
}

/// The trace set full: a new cgroup below a traced one cannot enter it.
/// Counted as `trace_set_full` and as a loss on the task it belongs to.
#[test]
fn a_full_trace_set_is_counted_and_charged_to_its_task() {
    let Some((mut probes, cg)) = setup(1 << 16, "kt-set") else {
        return;
    };
    probes.traced.trace(cg.id, 0).unwrap();
    // Fill the map with entries no cgroup has.
    let mut fake = u64::MAX;
    while probes
        .traced
        .insert_raw(
            fake,
            TracedCgroup {
                root: fake,
                ..TracedCgroup::default()
            },
        )
        .is_ok()
    {
        fake -= 1;
    }
    let before = probes.stats.read().counters[loss::TRACE_SET_FULL as usize];
    std::fs::create_dir(cg.path.join("child")).unwrap();
    let after = probes.stats.read().counters[loss::TRACE_SET_FULL as usize];
    let _ = std::fs::remove_dir(cg.path.join("child"));
    assert_eq!(after - before, 1);
    assert_eq!(probes.traced.get(cg.id).unwrap().lost, 1);
    let named = probes.stats.read().lost_by_cause();
    assert!(
        named.contains(&(LossCause::TraceSetFull, after)),
        "{named:?}"
    );
}

/// A task's losses survive the daemon's death: counted on its pinned
/// entry while no daemon ran, they are still there when the next daemon
/// adopts the pins and traces the task again (with other flags).
#[test]
fn losses_survive_a_crash_and_a_retrace() {
    let Some((_, cg)) = setup(4096, "kt-adopt") else {
        return;
    };
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/roar-node-kt-{}", std::process::id()));
    let opts = ProbeOptions {
        ring_buffer_bytes: 4096,
        pin_dir: Some(pins.clone()),
        ..ProbeOptions::default()
    };
    let mut first = Probes::load(opts.clone()).unwrap();
    let _ring = first.take_events().unwrap();
    first.traced.trace(cg.id, TRACE_NO_SUPPRESS).unwrap();
    drop(_ring);
    drop(first);
    run_in(
        &cg,
        "i=0; while [ $i -lt 300 ]; do cat /etc/hostname; i=$((i+1)); done",
    );
    let mut second = Probes::load(opts).unwrap();
    assert!(second.adopted, "{:?}", second.pin_error);
    let lost = second.traced.get(cg.id).unwrap().lost;
    assert!(lost > 0);
    second.traced.trace(cg.id, 0).unwrap();
    assert_eq!(second.traced.get(cg.id).unwrap().lost, lost);
    second.unpin();
    assert!(!pins.exists());
}
