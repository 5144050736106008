use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

use super::*;

fn job(path: &Path, expect: Option<(u64, u64)>) -> (HashJob, Arc<HashSlot>) {
    use std::os::unix::ffi::OsStrExt;
    let slot = HashSlot::new();
    (
        HashJob {
            ns: None,
            path: path.as_os_str().as_bytes().to_vec(),
            expect,
            dev: None,
            slot: slot.clone(),
        },
        slot,
    )
}

fn pool(workers: usize, budget: HashBudget) -> HashPool {
    HashPool::new(workers, 64, 100, budget).unwrap()
}

#[test]
fn hashes_caches_and_reports_problems() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a");
    std::fs::write(&f, b"hello").unwrap();
    let pool = pool(2, HashBudget::default());

    let (j, slot) = job(&f, None);
    pool.submit(j);
    let HashOutcome::Hashed(d) = slot.wait() else {
        panic!()
    };
    assert_eq!(d.blake3, blake3::hash(b"hello").to_hex().to_string());
    assert_eq!(d.size, 5);

    let (j, slot) = job(&f, None);
    pool.submit(j);
    assert!(matches!(slot.wait(), HashOutcome::Hashed(_)));
    assert_eq!(pool.stats.cache_hits.load(Ordering::Relaxed), 1);

    let (j, slot) = job(&dir.path().join("nope"), None);
    pool.submit(j);
    assert_eq!(slot.wait(), HashOutcome::Missing);

    let (j, slot) = job(dir.path(), None);
    pool.submit(j);
    assert_eq!(slot.wait(), HashOutcome::NotRegular);

    let (j, slot) = job(&f, Some((d.dev, d.ino + 1)));
    pool.submit(j);
    assert_eq!(slot.wait(), HashOutcome::Changed);
}

/// A file over the byte budget is not read at all (a 1 TiB sparse file
/// would take minutes), and says why.
#[test]
fn files_over_the_byte_budget_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("sparse");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let budget = HashBudget {
        bytes: 1 << 20,
        ..HashBudget::default()
    };
    let pool = pool(1, budget);
    let (j, slot) = job(&big, None);
    pool.submit(j);
    let HashOutcome::OverBudget(why) = slot.wait() else {
        panic!("{:?}", slot.wait())
    };
    assert!(why.contains("1048576 byte hashing budget"), "{why}");
    assert_eq!(pool.stats.over_budget.load(Ordering::Relaxed), 1);
    assert_eq!(pool.stats.bytes.load(Ordering::Relaxed), 0);
}

/// The FUSE file system of the end-to-end tests (tests/fixtures), in its
/// `hang` mode: a file's second open never gets its reads answered.
struct HungFuse {
    dir: PathBuf,
    server: Child,
}

impl HungFuse {
    fn mount(base: &Path, files: usize) -> Self {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/test_fuse.c");
        let exe = base.join("test_fuse");
        let built = Command::new("gcc")
            .arg("-O2")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .status();
        assert!(built.unwrap().success(), "gcc {}", src.display());
        let dir = base.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Command::new(&exe)
            .arg("hang")
            .arg(&dir)
            .args(["f", &files.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "test_fuse did not mount");
        Self { dir, server }
    }
}

impl Drop for HungFuse {
    /// Killing the server aborts the connection: blocked reads return.
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Task A reads three files of a hung FUSE mount, more than the pool has
/// workers; task B's files are queued behind them. B's hashes still
/// arrive (the settle point: every slot answered), A's files are
/// unhashed with the reason, two workers were abandoned and replaced and
/// the third hung file was not even tried. Before budgets existed, B's
/// slots never got an answer.
#[test]
fn a_hung_file_system_does_not_stall_other_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let fuse = HungFuse::mount(dir.path(), 3);
    let hung: Vec<PathBuf> = (0..3).map(|i| fuse.dir.join(format!("f{i:06}"))).collect();
    // Each file's first open reads normally (that is the task's read).
    for f in &hung {
        std::fs::read(f).unwrap();
    }
    let normal = dir.path().join("b.txt");
    std::fs::write(&normal, b"task b").unwrap();
    let budget = HashBudget {
        stall: Duration::from_millis(500),
        ..HashBudget::default()
    };
    let pool = pool(2, budget);
    let fuse_dev = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&hung[0]).unwrap().dev()
    };
    let a: Vec<Arc<HashSlot>> = hung
        .iter()
        .map(|f| {
            let (mut j, slot) = job(f, None);
            j.dev = Some(fuse_dev);
            pool.submit(j);
            slot
        })
        .collect();
    let (j, b) = job(&normal, None);
    pool.submit(j);
    assert_eq!(
        b.wait(),
        HashOutcome::Hashed(FileDigest {
            blake3: blake3::hash(b"task b").to_hex().to_string(),
            size: 6,
            dev: std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&normal).unwrap()),
            ino: std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&normal).unwrap()),
        })
    );
    for slot in &a {
        let HashOutcome::OverBudget(why) = slot.wait() else {
            panic!("{:?}", slot.wait())
        };
        assert!(
            why.contains("did not answer") || why.contains("stopped answering"),
            "{why}"
        );
    }
    let stats = &pool.stats;
    assert_eq!(stats.workers_abandoned.load(Ordering::Relaxed), 2);
    assert_eq!(stats.hung_skipped.load(Ordering::Relaxed), 1);
    assert_eq!(stats.over_budget.load(Ordering::Relaxed), 3);
    assert_eq!(stats.workers_stuck.load(Ordering::Relaxed), 2);
    // The replacements work.
    let (j, again) = job(&normal, None);
    pool.submit(j);
    assert!(matches!(again.wait(), HashOutcome::Hashed(_)));
    // The connection aborts: the stuck threads return and say so.
    drop(fuse);
    while stats.workers_stuck.load(Ordering::Relaxed) > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
}
