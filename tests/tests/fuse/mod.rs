//! The test FUSE file system (tests/fixtures/test_fuse.c), mounted for one
//! test: `hang` (a file's second open never gets its reads answered) or
//! `slow` (every name lookup takes 20 ms).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use roar_node_tests::{Work, compile_c};

pub struct TestFuse {
    pub dir: PathBuf,
    server: Child,
}

impl TestFuse {
    /// Mounts it on `<work>/fuse`, with `files` files named
    /// `<prefix>000000`... (each holding `old-000000\n`...).
    pub fn mount(w: &Work, mode: &str, prefix: &str, files: usize) -> Self {
        let exe = compile_c(
            w,
            "test_fuse",
            include_str!("../../fixtures/test_fuse.c"),
            &[],
        );
        let dir = w.path("fuse");
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Command::new(exe)
            .arg(mode)
            .arg(&dir)
            .args([prefix, &files.to_string()])
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

    pub fn s(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// Kills the server, which aborts the connection: every call blocked
    /// on it returns.
    pub fn abort(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

impl Drop for TestFuse {
    fn drop(&mut self) {
        self.abort();
    }
}
