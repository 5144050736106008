//! Shared by unit tests.

/// A test that cannot run on this machine (no root, no cgroup v2, no
/// bpffs) says so and returns; under CI (`CI=true`) that is a failure:
/// a skipped test must never pass as a green one there.
pub(crate) fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and this test cannot run here: {why}");
    }
    eprintln!("skipped: {why}");
}

/// An exec event of `argv` (its exe `argv[0]`), as the kernel sends one.
pub(crate) fn exec_event(argv: &[&str]) -> crate::events::Exec {
    crate::events::Exec {
        ppid: 0,
        exe: crate::events::FilePath {
            bytes: argv[0].as_bytes().to_vec(),
            inexact: 0,
        },
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        argv_truncated: false,
        argv_unreadable: false,
        argv_total_len: 0,
        mnt_ns: 1,
        uid: 0,
        own_cgroup: 0,
        unknown: 0,
    }
}
