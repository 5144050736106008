//! Small helpers for running commands.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs a command, echoing it; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", show(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None if it failed to run or
/// exited non-zero.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// `cargo build --release -p roar-node`, returning the binary's path.
pub fn build_release() -> anyhow::Result<PathBuf> {
    run(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "roar-node",
    ]))?;
    Ok(root().join("target/release/roar-node"))
}

/// A venv with roar-cli 0.4.7 (the reference client), made on first use.
pub fn roar_venv() -> anyhow::Result<PathBuf> {
    if let Some(v) = std::env::var_os("ROAR_VENV").map(PathBuf::from)
        && v.join("bin/roar").exists()
    {
        return Ok(v);
    }
    let venv = root().join("target/roar-venv");
    let roar = venv.join("bin/roar");
    if !roar.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "roar-cli==0.4.7"]))?;
    }
    Ok(venv)
}

/// The version of PyPI's helm-python-sdk: Helm v4 as a library (no helm
/// binary is packaged for Debian, and no other registry is reachable here).
pub const HELM_SDK: &str = "helm-python-sdk==0.2.2";

/// A venv with helm-python-sdk, made on first use (~75 MB download).
pub fn helm_venv() -> anyhow::Result<PathBuf> {
    if let Some(v) = std::env::var_os("HELM_VENV").map(PathBuf::from)
        && v.join("bin/python").exists()
    {
        return Ok(v);
    }
    let venv = root().join("target/helm-venv");
    let ready = venv.join(".helm-python-sdk");
    if !ready.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", HELM_SDK]))?;
        // Loads libhelm_c: a wheel that installs but cannot load fails here.
        run(Command::new(venv.join("bin/python")).args([
            "-c",
            "import helm_python; print('helm', helm_python.helm_sdk_version())",
        ]))?;
        std::fs::write(&ready, HELM_SDK)?;
    }
    Ok(venv)
}

/// moto's S3 server (and boto3) in a venv, for the object-store sink
/// tests: a real S3 protocol server the tests start themselves.
pub const MOTO: &str = "moto[server]==5.2.5";

pub fn s3_venv() -> anyhow::Result<PathBuf> {
    let venv = root().join("target/s3-venv");
    if !venv.join("bin/moto_server").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", MOTO]))?;
    }
    Ok(venv)
}

/// `python xtask/helm.py ARGS` from the helm venv: render, lint, install.
pub fn helm() -> anyhow::Result<Command> {
    let mut c = Command::new(helm_venv()?.join("bin/python"));
    c.arg(root().join("xtask/helm.py"));
    Ok(c)
}

/// Makes `dir` a roar project (git and `roar init`), ingests the bundles
/// in `bundles` with `roar k8s ingest-bundles`, and prints `roar dag`.
pub fn roar_graph(dir: &Path, bundles: &Path) -> anyhow::Result<()> {
    let roar = roar_venv()?.join("bin/roar");
    run(Command::new("git").current_dir(dir).args(["init", "-q"]))?;
    run(Command::new(&roar)
        .current_dir(dir)
        .arg("init")
        .env("ROAR_NO_HINTS", "1"))?;
    run(Command::new(&roar)
        .current_dir(dir)
        .args(["k8s", "ingest-bundles"])
        .arg(bundles))?;
    run(Command::new(&roar)
        .current_dir(dir)
        .args(["dag", "--no-color"]))
}
