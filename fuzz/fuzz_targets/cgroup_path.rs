//! Any cgroup path (they come from the kernel, but pod names and
//! container runtimes choose parts of them): no panic, and what is
//! recognised is consistent with the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roar_node::fuzzing::{CgroupPath, parse_cgroup_path as parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        CgroupPath::Container(c) => {
            assert_eq!(c.container_id.len(), 64, "{c:?}");
            assert!(c.container_id.bytes().all(|b| b.is_ascii_hexdigit()));
            let input = String::from_utf8_lossy(data);
            assert!(input.contains(&c.container_id), "{c:?}");
            assert!(valid_uid(&c.pod_uid), "{c:?}");
        }
        CgroupPath::PodLevel { pod_uid, .. } => assert!(valid_uid(&pod_uid), "{pod_uid}"),
        CgroupPath::Other => {}
    }
});

/// `8-4-4-4-12` hex groups, or 32 hex digits (static pods).
fn valid_uid(uid: &str) -> bool {
    let b = uid.as_bytes();
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}
