//! Ring-buffer bytes -> typed event -> task state. The kernel is trusted
//! but the layout contract between two builds is not: no input may panic,
//! loop, or allocate without bound, and no path that is not exact may end
//! up looking like one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roar_node::fuzzing::{Task, TaskLimits, parse};

fuzz_target!(|data: &[u8]| {
    // Several records back to back, as the consumer sees a batch.
    let mut task = Task::new(TaskLimits {
        max_files: 64,
        max_processes: 64,
        max_argv_bytes: 64 << 10,
        ..TaskLimits::default()
    });
    let mut rest = data;
    while rest.len() >= 8 {
        // EventHeader.size (u32 at offset 4) is the record's length.
        let size = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let take = size.clamp(1, rest.len());
        if let Ok(ev) = parse(&rest[..take]) {
            let _ = task.apply(&ev);
        }
        rest = &rest[take..];
    }
    // Whatever the kernel sent, a path the table keeps as exact is an
    // absolute path, and every other key (an inexact path, a file with no
    // name) can never be mistaken for one.
    for (key, exact) in task.file_keys() {
        assert_eq!(exact, key.first() == Some(&b'/'), "{key:?}");
    }
});
