//! Harness for the end-to-end tests: runs the real `roar-node` binary as a
//! user would (as root: it loads eBPF programs), reads the bundles it
//! writes, and asks the real roar-cli 0.4.7 what it makes of them.
//!
//! Work directories live under `target/test-work`, not /tmp: roar (and so
//! roar-node) leaves /tmp writes out of records by default.

use std::{
    ffi::OsStr,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

pub mod chart;
pub mod k8s;
pub mod s3;

use serde_json::Value;

/// A test that cannot run here says why and returns; under CI
/// (`CI=true`) that is a failure: a skipped test never passes there.
pub fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and this test cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The roar-node binary: `ROAR_NODE_BIN` (set by `cargo xtask test`), or
/// a release build made on first use.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ROAR_NODE_BIN") {
            return fs::canonicalize(&p).unwrap_or_else(|e| panic!("ROAR_NODE_BIN={p:?}: {e}"));
        }
        let _lock = FileLock::take(&workspace().join("target/.roar-node-build.lock"));
        let status = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args(["build", "--release", "-p", "roar-node"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building roar-node failed");
        workspace().join("target/release/roar-node")
    })
    .clone()
}

/// An exclusive lock on a file, released on drop (test binaries run in
/// parallel processes).
// The field is held for its drop (which releases the lock).
pub struct FileLock(#[allow(dead_code)] fs::File);

impl FileLock {
    pub fn take(path: &Path) -> Self {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: valid fd.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        Self(f)
    }
}

/// A fresh directory for one test, removed afterwards unless the test
/// failed (it is kept for inspection then).
pub struct Work {
    pub dir: PathBuf,
}

impl Work {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = workspace().join("target/test-work").join(format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: impl AsRef<Path>, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, data).unwrap();
        p
    }

    /// Path as the string a record carries.
    pub fn s(&self, rel: impl AsRef<Path>) -> String {
        self.path(rel).to_str().unwrap().to_string()
    }

    /// Traces `cmd` (run in this directory) with `roar-node run`.
    pub fn trace(&self, cmd: &[&str]) -> Traced {
        self.trace_with(&[], cmd)
    }

    /// Traces `cmd` with extra `roar-node run` options.
    pub fn trace_with(&self, opts: &[&str], cmd: &[&str]) -> Traced {
        let args: Vec<&OsStr> = cmd.iter().map(OsStr::new).collect();
        self.trace_os(opts, &args)
    }

    /// Like `trace_with`, for arguments that are not UTF-8.
    pub fn trace_os(&self, opts: &[&str], cmd: &[&OsStr]) -> Traced {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let bundles = self.path(format!("bundles-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
        let out = Command::new(bin())
            .current_dir(&self.dir)
            .arg("run")
            .arg("--bundle-dir")
            .arg(&bundles)
            .args(opts)
            .arg("--")
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("running roar-node");
        Traced::load(out, &bundles)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("ROAR_NODE_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// One `roar-node run` and the record it wrote.
pub struct Traced {
    pub output: Output,
    pub bundle_path: PathBuf,
    pub bundle: Value,
}

impl Traced {
    fn load(output: Output, bundles: &Path) -> Self {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let entries: Vec<PathBuf> = fs::read_dir(bundles)
            .unwrap_or_else(|e| {
                panic!(
                    "no bundle dir {} ({e}); roar-node said:\n{stderr}",
                    bundles.display()
                )
            })
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(
            entries.len(),
            1,
            "expected one bundle in {}: {entries:?}\n{stderr}",
            bundles.display()
        );
        let bundle_path = entries[0].clone();
        let name = bundle_path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("roar-fragments-") && name.ends_with(".json"),
            "{name}"
        );
        let bundle: Value = serde_json::from_slice(&fs::read(&bundle_path).unwrap()).unwrap();
        Self {
            output,
            bundle_path,
            bundle,
        }
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn fragment(&self) -> &Value {
        let f = &self.bundle["fragments"];
        assert_eq!(
            f.as_array().map(Vec::len),
            Some(1),
            "one fragment per bundle"
        );
        &f[0]
    }

    pub fn md(&self) -> &Value {
        &self.fragment()["backend_metadata"]
    }

    fn refs(&self, key: &str) -> Vec<Value> {
        self.fragment()[key].as_array().cloned().unwrap_or_default()
    }

    pub fn reads(&self) -> Vec<Value> {
        self.refs("reads")
    }

    pub fn writes(&self) -> Vec<Value> {
        self.refs("writes")
    }

    pub fn read(&self, path: &str) -> Option<Value> {
        self.reads().into_iter().find(|r| r["path"] == path)
    }

    pub fn write(&self, path: &str) -> Option<Value> {
        self.writes().into_iter().find(|r| r["path"] == path)
    }

    pub fn read_paths(&self) -> Vec<String> {
        self.reads()
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn write_paths(&self) -> Vec<String> {
        self.writes()
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn lost(&self) -> u64 {
        self.md()["capture"]["events_lost"].as_u64().unwrap()
    }

    pub fn events(&self, kind: &str) -> u64 {
        self.md()["capture"]["events_by_kind"][kind]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn processes(&self) -> Vec<Value> {
        self.md()["processes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Asserts roar-node and the command succeeded, with context.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.exit_code(),
            Some(0),
            "roar-node run failed:\n{}",
            self.stderr()
        );
        self
    }
}

pub fn blake3_file(path: impl AsRef<Path>) -> String {
    blake3::hash(&fs::read(path).unwrap()).to_hex().to_string()
}

pub fn blake3_bytes(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

/// The percent encoding roar-node uses for non-UTF-8 paths (README).
pub fn decode_path(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap(),
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

pub fn bytes_of(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

/// A Python venv with `package`: `$env_var` (set by `cargo xtask test`),
/// else `target/<dir>`, made here on first use (one test binary at a
/// time) unless `marker` is already in it.
pub fn venv(env_var: &str, dir: &str, marker: &str, package: &str) -> PathBuf {
    if let Some(v) = std::env::var_os(env_var) {
        return fs::canonicalize(&v).unwrap_or_else(|e| panic!("{env_var}={v:?}: {e}"));
    }
    let venv = workspace().join("target").join(dir);
    let _lock = FileLock::take(&workspace().join(format!("target/.{dir}.lock")));
    if !venv.join(marker).exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap()
            .success()
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", package])
                .status()
                .unwrap()
                .success();
        assert!(ok, "installing {package} from PyPI failed");
    }
    venv
}

/// roar-cli 0.4.7 in a venv (installed from PyPI on first use).
pub struct Roar {
    pub venv: PathBuf,
}

impl Roar {
    pub fn get() -> Self {
        static VENV: OnceLock<PathBuf> = OnceLock::new();
        let venv = VENV
            .get_or_init(|| venv("ROAR_VENV", "roar-venv", "bin/roar", "roar-cli==0.4.7"))
            .clone();
        Self { venv }
    }

    /// How many artifacts task `from` wrote that task `to` read (roar's
    /// DAG edges between them), in the project's roar.db; `path`: only
    /// through that output.
    pub fn edges(&self, dir: &Path, from: &str, to: &str, path: Option<&str>) -> usize {
        let through = path.map_or(String::new(), |p| format!(" and o.path = '{p}'"));
        self.query(
            dir,
            &format!(
                "select o.artifact_id from jobs j1 join job_outputs o on o.job_id = j1.id \
                 join job_inputs i on i.artifact_id = o.artifact_id join jobs j2 on i.job_id = j2.id \
                 where j1.command = 'k8s_task:{from}' and j2.command = 'k8s_task:{to}'{through}"
            ),
        )
        .len()
    }

    /// Runs `roar ARGS` in `dir`; panics with its output if it fails.
    pub fn run(&self, dir: &Path, args: &[&str]) -> String {
        let out = Command::new(self.venv.join("bin/roar"))
            .current_dir(dir)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "roar {args:?} failed:\n{text}");
        text
    }

    /// A roar project (git repo + `roar init`) in `dir`.
    pub fn init(&self, dir: &Path) {
        assert!(
            Command::new("git")
                .current_dir(dir)
                .args(["init", "-q"])
                .status()
                .unwrap()
                .success()
        );
        self.run(dir, &["init"]);
    }

    /// Runs a Python script with roar's own interpreter (roar's modules
    /// importable); its stdout.
    pub fn python(&self, script: &str) -> String {
        let out = Command::new(self.venv.join("bin/python"))
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs SQL against the project's roar.db; rows as JSON arrays.
    pub fn query(&self, dir: &Path, sql: &str) -> Vec<Vec<Value>> {
        let script = "import json,sqlite3,sys\nc=sqlite3.connect('.roar/roar.db')\nprint(json.dumps([list(r) for r in c.execute(sys.argv[1])]))";
        let out = Command::new(self.venv.join("bin/python"))
            .current_dir(dir)
            .args(["-c", script, sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "query failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Vec<Value>>>(&out.stdout).unwrap()
    }
}

/// Compiles a C program for a test (gcc is installed by setup).
pub fn compile_c(work: &Work, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = work.write(format!("{name}.c"), source);
    let exe = work.path(name);
    let out = Command::new("gcc")
        .arg("-O2")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .args(flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// One HTTP/1.1 GET to `addr` (`host:port`): the status code (0 when
/// nothing answers) and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let _ = write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of one series (`name{labels}` as written) in a Prometheus
/// text exposition.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
