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
