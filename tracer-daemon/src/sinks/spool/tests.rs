//! The spool's unit tests: replay after a crash, damage, checkpoints,
//! compaction.

use super::*;

fn task(id: &str) -> pb::TaskOpened {
    pb::TaskOpened {
        task_id: id.into(),
        cgroup_id: 7,
        cgroup_path: "/kubepods/x".into(),
        traced_since_ns: 1,
        ..Default::default()
    }
}

fn ready(id: &str, file: &str) -> pb::RecordReady {
    pb::RecordReady {
        task_id: id.into(),
        bundle_file: file.into(),
        bundle_json: b"{\"fragments\":[]}\n".to_vec().into(),
        owner: None,
    }
}

/// What a previous run left comes back: open tasks with a gap that
/// starts at its last heartbeat, undelivered records; delivered ones
/// and closed tasks do not.
#[test]
fn replay_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("spool");
    {
        let (mut s, rec) = Spool::open(&d, "n1").unwrap();
        assert!(rec.open_tasks.is_empty() && rec.undelivered.is_empty());
        s.task_opened(task("a")).unwrap();
        s.task_opened(task("b")).unwrap();
        s.task_opened(task("c")).unwrap();
        s.record_ready(ready("b", "rb.json")).unwrap();
        s.record_ready(ready("x", "rx.json")).unwrap();
        s.delivered("rx.json").unwrap();
        s.task_closed("c").unwrap();
        s.heartbeat().unwrap();
        // Dropped without any shutdown: as after kill -9.
    }
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d), 0o700);
    assert_eq!(mode(&d.join(FILE_NAME)), 0o600);
    let (s, rec) = Spool::open(&d, "n1").unwrap();
    let ids: Vec<_> = rec.open_tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, ["a"]);
    let gap = &rec.open_tasks[0].gaps[0];
    assert_eq!(gap.from_ns, 1, "from the start of the capture");
    assert!(gap.to_ns >= rec.last_alive_ns.unwrap());
    let files: Vec<_> = rec
        .undelivered
        .iter()
        .map(|r| r.bundle_file.as_str())
        .collect();
    assert_eq!(files, ["rb.json"]);
    assert_eq!(
        (rec.corrupt_entries, rec.torn_bytes, rec.rebooted),
        (0, 0, false)
    );
    // Compacted: header, one task, one record, a heartbeat.
    let (entries, _, _) = decode_journal(&fs::read(s.path()).unwrap());
    assert_eq!(entries.len(), 4);
    // A second restart adds a second gap to the same task.
    drop(s);
    let (_, rec2) = Spool::open(&d, "n1").unwrap();
    let gaps = &rec2.open_tasks[0].gaps;
    assert_eq!(gaps.len(), 2);
    assert_eq!(gaps[1].from_ns, gaps[0].to_ns, "contiguous");
}

/// A crash mid-write leaves a torn last entry: cut off, the rest kept.
/// A flipped byte inside an entry: that entry skipped and counted.
#[test]
fn torn_and_corrupt_entries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("spool");
    let path = d.join(FILE_NAME);
    {
        let (mut s, _) = Spool::open(&d, "n1").unwrap();
        s.record_ready(ready("a", "ra.json")).unwrap();
        s.record_ready(ready("b", "rb.json")).unwrap();
    }
    let mut bytes = fs::read(&path).unwrap();
    let whole = bytes.len();
    // Flip a byte in the last record's payload (the last 10 bytes are
    // its JSON), then append half of another entry.
    bytes[whole - 5] ^= 0x55;
    let extra = frame(Kind::RecordReady(ready("c", "rc.json")));
    bytes.extend_from_slice(&extra[..extra.len() / 2]);
    fs::write(&path, &bytes).unwrap();
    let (_, rec) = Spool::open(&d, "n1").unwrap();
    let files: Vec<_> = rec
        .undelivered
        .iter()
        .map(|r| r.bundle_file.as_str())
        .collect();
    assert_eq!(files, ["ra.json"]);
    assert_eq!(rec.corrupt_entries, 1);
    assert_eq!(rec.torn_bytes, (extra.len() / 2) as u64);
    // What was cut off is gone from the rewritten journal.
    let (_, corrupt, valid) = decode_journal(&fs::read(&path).unwrap());
    assert_eq!((corrupt, valid), (0, fs::read(&path).unwrap().len()));
}

/// With a checkpoint, the gap starts at the checkpoint, and the state
/// comes back; a task's record drops its checkpoint.
#[test]
fn checkpoint_bounds_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = Spool::open(dir.path(), "n1").unwrap();
        s.task_opened(task("a")).unwrap();
        s.task_opened(task("b")).unwrap();
        for at_ns in [5, 9] {
            for id in ["a", "b"] {
                s.checkpoint(pb::TaskCheckpoint {
                    task_id: id.into(),
                    cgroup_id: 7,
                    at_ns,
                    state: Some(pb::TaskState {
                        files_overflow: at_ns,
                        ..Default::default()
                    }),
                })
                .unwrap();
            }
        }
        s.record_ready(ready("b", "rb.json")).unwrap();
        // Not open: ignored.
        s.checkpoint(pb::TaskCheckpoint {
            task_id: "zzz".into(),
            ..Default::default()
        })
        .unwrap();
    }
    let (_, rec) = Spool::open(dir.path(), "n1").unwrap();
    assert_eq!(rec.open_tasks.len(), 1);
    assert_eq!(rec.open_tasks[0].gaps[0].from_ns, 9);
    let ids: Vec<_> = rec.checkpoints.keys().map(String::as_str).collect();
    assert_eq!(ids, ["a"]);
    assert_eq!(
        rec.checkpoints["a"].state.as_ref().unwrap().files_overflow,
        9
    );
}

/// With the programs pinned across the crash, the gap ends at the last
/// heartbeat; a task checkpointed after it has no gap at all.
#[test]
fn capture_continued_shrinks_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = Spool::open(dir.path(), "n1").unwrap();
        s.task_opened(task("a")).unwrap();
        s.heartbeat().unwrap();
    }
    let (mut s, rec) = Spool::open(dir.path(), "n1").unwrap();
    let alive = rec.last_alive_ns.unwrap();
    assert!(s.open_task("a").unwrap().gaps[0].to_ns > alive);
    s.capture_continued(alive);
    let g = &s.open_task("a").unwrap().gaps[0];
    assert_eq!((g.from_ns, g.to_ns), (1, alive));
    assert!(g.why.contains("pinned"));
    s.capture_continued(alive + 10);
    assert_eq!(s.open_task("a").unwrap().gaps.len(), 1, "older gaps kept");
}

#[test]
fn refuses_another_nodes_spool() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path(), "n1").unwrap());
    let err = Spool::open(dir.path(), "n2").err().unwrap().to_string();
    assert!(err.contains("\"n1\"") && err.contains("\"n2\""), "{err}");
}

#[test]
fn grows_then_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(dir.path(), "n1").unwrap();
    let big = pb::RecordReady {
        bundle_json: vec![b'x'; 1 << 20].into(),
        ..ready("t", "r.json")
    };
    for i in 0..20 {
        s.record_ready(pb::RecordReady {
            task_id: format!("t{i}"),
            bundle_file: format!("r{i}.json"),
            ..big.clone()
        })
        .unwrap();
        s.delivered(&format!("r{i}.json")).unwrap();
    }
    assert!(s.bytes() < COMPACT_SLACK + (2 << 20), "{}", s.bytes());
    assert_eq!(
        fs::metadata(s.path()).unwrap().len(),
        s.bytes(),
        "size tracked"
    );
}

/// The bytes waiting are what the budget is checked against: counted once
/// per record, back to zero when delivered, and the same after a replay;
/// the oldest wait is known.
#[test]
fn waiting_bytes_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let one = ready("a", "ra.json").bundle_json.len() as u64;
    {
        let (mut s, _) = Spool::open(dir.path(), "n1").unwrap();
        assert_eq!((s.undelivered_bytes(), s.oldest_waiting()), (0, None));
        s.record_ready(ready("a", "ra.json")).unwrap();
        s.record_ready(ready("a", "ra.json")).unwrap();
        s.record_ready(ready("b", "rb.json")).unwrap();
        assert_eq!(s.undelivered_bytes(), 2 * one);
        assert!(s.oldest_waiting().is_some());
        s.delivered("rb.json").unwrap();
        assert_eq!(s.undelivered_bytes(), one);
    }
    let (s, rec) = Spool::open(dir.path(), "n1").unwrap();
    assert_eq!(rec.undelivered.len(), 1);
    assert_eq!(s.undelivered_bytes(), one);
    assert!(
        s.oldest_waiting().is_some(),
        "a previous daemon's record waits too"
    );
}
