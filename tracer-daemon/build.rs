//! Builds the eBPF programs (tracer-ebpf) with the nightly toolchain so a
//! plain `cargo build` produces a daemon with its programs embedded.
//! `AYA_BUILD_SKIP=1` skips it (the daemon then embeds an empty object and
//! says so at start-up).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The spool's schema. protoc comes from `cargo xtask setup`
    // (protobuf-compiler).
    println!("cargo:rerun-if-changed=proto/spool.proto");
    // A record's bundle is held by the spool and written to the bundle
    // directory: one refcounted buffer, not copies (a task with 300,000
    // files makes a bundle of tens of MiB).
    prost_build::Config::new()
        .bytes([".roar_node.spool.v1.RecordReady.bundle_json"])
        .compile_protos(&["proto/spool.proto"], &["proto"])
        .context("compiling proto/spool.proto (is protoc installed? `cargo xtask setup`)")?;
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("tracer-ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path to tracer-ebpf")?;
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Keep `include_bytes!` working: an empty object that the loader
        // refuses with a clear message.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("roar-node");
        if !out.exists() {
            std::fs::write(&out, [])?;
        }
    }
    aya_build::build_ebpf(
        [Package {
            name: "roar-node-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
