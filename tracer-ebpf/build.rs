//! Rebuild the programs when bpf-linker changes (it is the linker of the
//! bpf target, invisible to cargo's dependency tracking otherwise).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found: run `cargo xtask setup`"),
    }
}
