//! Many files, and what happens when the ring buffer overflows: nothing
//! is lost silently.

use roar_node_tests::*;

const N: usize = 5000;

#[test]
fn five_thousand_files_written_then_read_lose_nothing() {
    let w = Work::new("many");
    let writer = w
        .trace(&["sh", "-c", "mkdir -p many && i=0; while [ $i -lt 5000 ]; do echo file-$i > many/f$i; i=$((i+1)); done"])
        .ok();
    assert_eq!(writer.lost(), 0, "{}", writer.stderr());
    assert_eq!(writer.md()["capture"]["partial"], false);
    let writes = writer.write_paths();
    assert_eq!(writes.len(), N);
    for i in [0, 1, 2499, 4999] {
        let p = w.s(format!("many/f{i}"));
        assert_eq!(
            writer.write(&p).unwrap()["hash"],
            blake3_bytes(format!("file-{i}\n").as_bytes())
        );
    }

    // A second task reads them all back (one `cat` with 5,000 arguments).
    let reader = w.trace(&["sh", "-c", "cat many/* > /dev/null"]).ok();
    assert_eq!(reader.lost(), 0, "{}", reader.stderr());
    let reads = reader.read_paths();
    assert_eq!(reads.len(), N, "reads missing");
    for r in reader.reads() {
        let p = r["path"].as_str().unwrap();
        assert_eq!(r["hash"], writer.write(p).unwrap()["hash"], "{p}");
    }
}

#[test]
fn writing_and_reading_back_in_one_task_reports_every_open() {
    let w = Work::new("many-one-task");
    let t = w
        .trace(&[
            "sh",
            "-c",
            "mkdir -p m && i=0; while [ $i -lt 5000 ]; do echo $i > m/f$i; i=$((i+1)); done; cat m/* > /dev/null",
        ])
        .ok();
    assert_eq!(t.lost(), 0);
    assert_eq!(t.write_paths().len(), N);
    // One write open and one read open per file reached userspace; reading
    // back its own output does not make a file an input of the task.
    assert!(
        t.events("open") >= 2 * N as u64,
        "opens: {}",
        t.events("open")
    );
    assert!(
        t.read_paths().is_empty(),
        "{:?}",
        &t.read_paths()[..3.min(t.read_paths().len())]
    );
}

#[test]
fn ring_buffer_overflow_is_counted_in_the_record() {
    let w = Work::new("overflow");
    let mut script = String::from(
        "mkdir -p o && i=0; while [ $i -lt 3000 ]; do echo $i > o/f$i; i=$((i+1)); done; ",
    );
    // Read them many times with repeat suppression off: far more events
    // than a one-page ring buffer drained every few milliseconds can hold.
    script.push_str("for k in 1 2 3 4 5; do cat o/* > /dev/null; done");
    let t = w.trace_with(
        &["--ring-buffer-bytes", "4096", "--no-suppress"],
        &["sh", "-c", &script],
    );
    assert_eq!(t.exit_code(), Some(0), "{}", t.stderr());
    let lost = t.lost();
    assert!(
        lost > 0,
        "a 4 KiB ring buffer cannot hold this burst; nothing was counted lost"
    );
    let capture = &t.md()["capture"];
    assert_eq!(capture["lost_by_cause"]["kernel_ring_buffer_full"], lost);
    assert_eq!(capture["lost_by_cause"]["kernel_read_failed"], 0);
    assert_eq!(capture["partial"], true);
    assert!(
        t.md()["kernel_counters"]["lost_ringbuf_full_open"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Everything was either delivered or counted.
    assert!(
        t.events("open") + lost >= 3000 + 5 * 3000,
        "opens {} + lost {lost}",
        t.events("open")
    );
    assert!(t.stderr().contains("lost"), "{}", t.stderr());
}
