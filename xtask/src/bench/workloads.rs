//! The benchmark workloads: small C programs (xtask/bench/*.c, built with
//! gcc -O2) and a Python "training" job, with their input data.

use std::{
    ffi::OsString,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::util;

/// One workload: a command, and a directory emptied before every run
/// (outside the timed region) so each run does the same work.
pub struct Workload {
    pub name: &'static str,
    pub what: &'static str,
    pub argv: Vec<OsString>,
    pub reset: Option<PathBuf>,
}

impl Workload {
    pub fn reset(&self) -> anyhow::Result<()> {
        if let Some(dir) = &self.reset {
            let _ = fs::remove_dir_all(dir);
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }
}

/// Sizes; `quick` shrinks them for a smoke run, never for reported figures.
pub struct Sizes {
    pub open_close: u64,
    pub small_files: u64,
    pub big_read_mib: u64,
    pub fork_exec: u64,
    pub dataset_files: u64,
    pub epochs: u64,
}

impl Sizes {
    pub fn full() -> Self {
        Self {
            open_close: 200_000,
            small_files: 5_000,
            big_read_mib: 500,
            fork_exec: 1_000,
            dataset_files: 200,
            epochs: 10,
        }
    }

    pub fn quick() -> Self {
        Self {
            open_close: 20_000,
            small_files: 500,
            big_read_mib: 50,
            fork_exec: 100,
            dataset_files: 20,
            epochs: 2,
        }
    }
}

/// Paths of the compiled helpers.
pub struct Tools {
    pub benchtime: PathBuf,
    pub openclose: PathBuf,
    pub smallfiles: PathBuf,
    pub bigread: PathBuf,
    pub forkexec: PathBuf,
    pub openrate: PathBuf,
}

pub fn build_tools(out: &Path) -> anyhow::Result<Tools> {
    let src = util::root().join("xtask/bench");
    fs::create_dir_all(out)?;
    let build = |name: &str| -> anyhow::Result<PathBuf> {
        let exe = out.join(name);
        util::run(
            Command::new("gcc")
                .args(["-O2", "-Wall", "-o"])
                .arg(&exe)
                .arg(src.join(format!("{name}.c"))),
        )?;
        Ok(exe)
    };
    Ok(Tools {
        benchtime: build("benchtime")?,
        openclose: build("openclose")?,
        smallfiles: build("smallfiles")?,
        bigread: build("bigread")?,
        forkexec: build("forkexec")?,
        openrate: build("openrate")?,
    })
}

/// Writes `path` with `size` bytes of a repeating pattern unless it is
/// already that size.
fn ensure_file(path: &Path, size: u64) -> anyhow::Result<()> {
    if fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn python() -> anyhow::Result<PathBuf> {
    let out =
        util::output(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
            .context("python3 is needed for the training workload")?;
    Ok(PathBuf::from(out.trim()))
}

/// Makes the input data under `data` and returns the workloads, which
/// write under `work`.
pub fn prepare(
    tools: &Tools,
    data: &Path,
    work: &Path,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Workload>> {
    fs::create_dir_all(data)?;
    fs::create_dir_all(work)?;
    let one = data.join("open.dat");
    ensure_file(&one, 4096)?;
    let big = data.join("big.dat");
    ensure_file(&big, sizes.big_read_mib << 20)?;
    let dataset = data.join(format!("dataset-{}", sizes.dataset_files));
    fs::create_dir_all(&dataset)?;
    for i in 0..sizes.dataset_files {
        ensure_file(&dataset.join(format!("shard-{i:04}.bin")), 64 << 10)?;
    }
    let small = work.join("small");
    let ckpt = work.join("ckpt");
    let os = |s: &Path| s.as_os_str().to_owned();
    let n = |v: u64| OsString::from(v.to_string());
    Ok(vec![
        Workload {
            name: "open_close",
            what: "C loop: open+close one file",
            argv: vec![os(&tools.openclose), os(&one), n(sizes.open_close)],
            reset: None,
        },
        Workload {
            name: "small_files",
            what: "C: write N 1 KiB files, then read them all",
            argv: vec![
                os(&tools.smallfiles),
                os(&small),
                n(sizes.small_files),
                n(1024),
            ],
            reset: Some(small),
        },
        Workload {
            name: "big_read",
            what: "C: read one file (page cache) in 64 KiB chunks",
            argv: vec![os(&tools.bigread), os(&big), n(64 << 10)],
            reset: None,
        },
        Workload {
            name: "fork_exec",
            what: "C: fork+exec /bin/true and wait, N times",
            argv: vec![os(&tools.forkexec), n(sizes.fork_exec), "/bin/true".into()],
            reset: None,
        },
        Workload {
            name: "python_training",
            what: "Python: epochs over a 64 KiB-shard dataset, checkpoint via temp file + rename",
            argv: vec![
                os(&python()?),
                os(&util::root().join("xtask/bench/train.py")),
                os(&dataset),
                os(&ckpt),
                n(sizes.epochs),
            ],
            reset: Some(ckpt),
        },
    ])
}
