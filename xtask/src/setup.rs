//! Idempotent machine setup. Each step checks before it acts, so a second
//! run takes a second.

use std::process::Command;

use anyhow::{Context, bail};

use crate::util::{self, is_root, output};

#[derive(clap::Args)]
pub struct Args {}

/// Debian packages: LLVM 22 for bpf-linker, busybox-static (a static
/// binary the tests trace), gcc for the benchmark workloads, capsh and
/// util-linux (unshare, mount) for the privilege and namespace tests,
/// protoc for the spool's schema (tracer-daemon/proto), binutils (objcopy
/// splits the image binary's debug info off), skopeo (pushes images to a
/// registry), docker-registry (the local cluster's registry) and
/// ca-certificates (the image's CA bundle: the object-store sink's HTTPS).
const APT: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "busybox-static",
    "gcc",
    "libc6-dev",
    "python3-venv",
    "libcap2-bin",
    "util-linux",
    "protobuf-compiler",
    "binutils",
    "skopeo",
    "docker-registry",
    "ca-certificates",
];
const BPF_LINKER: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";

pub fn run(_: Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("setup installs packages and mounts file systems: run it as root");
    }
    apt()?;
    nightly()?;
    bpf_linker()?;
    mounts()?;
    // The Python tools, each in its own venv: roar-cli (the reference
    // client the tests check records with), Helm (helm-python-sdk) and
    // moto's S3 server (the object-store sink tests).
    util::roar_venv()?;
    util::helm_venv()?;
    util::s3_venv()?;
    eprintln!("setup: ok");
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn nightly() -> anyhow::Result<()> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"])).context(
        "no nightly toolchain: the eBPF programs build with nightly 1.97 (2026-05-19); install it with rustup",
    )?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("?");
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "nightly rustc uses LLVM {llvm}, but bpf-linker {BPF_LINKER} is built against LLVM {LLVM_MAJOR}: \
             install a nightly whose `rustc +nightly -vV` says LLVM {LLVM_MAJOR} (nightly-2026-05-19 does)"
        );
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let have = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if have.split_whitespace().any(|w| w == BPF_LINKER) {
        return Ok(());
    }
    util::run(
        Command::new(env!("CARGO"))
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
            .args(["install", "--locked", "--force"])
            .arg(format!("bpf-linker@{BPF_LINKER}"))
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{LLVM_MAJOR}")),
    )
}

fn mounted(path: &str) -> bool {
    Command::new("mountpoint")
        .args(["-q", path])
        .status()
        .is_ok_and(|s| s.success())
}

fn mounts() -> anyhow::Result<()> {
    for (fs, path) in [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")] {
        if !mounted(path) {
            util::run(Command::new("mount").args(["-t", fs, fs, path]))?;
        }
    }
    Ok(())
}
