//! `cargo xtask image`: the project's one image builder (no Docker). It
//! writes an OCI image-layout tarball (`oci-archive`) with one gzip layer:
//!
//! - `roar-node`: the release binary with its debug info split off (kept
//!   next to the tarball as `roar-node.debug`, linked by a debuglink) and
//!   the shared libraries it links, as `ldd` lists them; nothing else;
//! - `osmo-demo`: the OSMO-shaped task image of the demo and the cluster
//!   tests (static busybox and a static `osmo_exec` stand-in);
//! - `pause`: the local cluster's pod sandbox process.
//!
//! `--push REPOSITORY` copies it to any registry with Debian's `skopeo`
//! (a maintained client: auth files, TLS, retries, every registry's
//! quirks), tagged with the version and the git commit. The local cluster's
//! registry gets the same push, and containerd pulls from it.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::util::{self, root};

/// The OSMO-shaped task image of the demo and the cluster tests.
pub use roar_node_tests::k8s::OSMO_IMAGE;

/// The compressed size the roar-node image must stay under (issue 11: a
/// newly autoscaled node pulls it before it can trace anything).
const MAX_COMPRESSED: u64 = 25_000_000;

#[derive(clap::Args)]
pub struct Args {
    /// What to build: `roar-node` (the release binary), `osmo-demo`
    /// (busybox + osmo_exec, the demo's task image) or `pause` (the local
    /// cluster's sandbox).
    #[arg(default_value = "roar-node", value_parser = ["roar-node", "osmo-demo", "pause"])]
    pub what: String,
    /// Where to write the tarball (default: target/images/<what>.tar).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Push to this repository (`registry[:port]/path`, no tag), tagged
    /// `VERSION` and `VERSION-g<commit>`, with skopeo. Credentials: skopeo's
    /// (`skopeo login REGISTRY`, or REGISTRY_AUTH_FILE). Loopback
    /// registries are reached over plain HTTP, others over TLS.
    #[arg(long, value_name = "REPOSITORY")]
    pub push: Option<String>,
}

/// A written image.
pub struct Image {
    pub tar: PathBuf,
    /// `sha256:...` of the manifest: what a registry and a pod spec name.
    pub digest: String,
    /// The architecture in the image config (`amd64`, `arm64`).
    pub arch: String,
    pub layer_bytes: u64,
    pub layer_gz_bytes: u64,
}

/// One file of the image: where it comes from, where it goes.
struct Entry {
    src: PathBuf,
    dest: String,
}

/// An entry of the layer, in path order.
enum Node {
    Dir,
    File { src: PathBuf, mode: u32 },
    Symlink(String),
}

/// Shared libraries `bin` loads, as absolute paths (`ldd`'s view).
pub fn ldd(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| "running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || !out.status.success() {
        return Ok(Vec::new()); // static
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{}: {}", bin.display(), line.trim());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)".
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// The OCI name of this machine's architecture: images run where they
/// were built (the binary and its libraries are this machine's).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The workspace version (xtask shares it).
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The commit tag: `VERSION-g<12 hex>`, `-dirty` when the work tree has
/// changes (so a tag never claims a commit the image was not built from).
pub fn commit_tag() -> anyhow::Result<String> {
    let sha = util::output(Command::new("git").current_dir(root()).args([
        "rev-parse",
        "--short=12",
        "HEAD",
    ]))
    .context("git rev-parse HEAD (the image is tagged with the commit)")?;
    let dirty = util::output(Command::new("git").current_dir(root()).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_some_and(|s| !s.trim().is_empty());
    Ok(format!(
        "{}-g{}{}",
        version(),
        sha.trim(),
        if dirty { "-dirty" } else { "" }
    ))
}

/// Writes an OCI image layout tarball of `files` and empty `dirs`;
/// `links` are symlinks. `labels` go into the image config.
fn write_image(
    files: &[Entry],
    dirs: &[&str],
    links: &[(String, String)],
    cmd: &[&str],
    labels: &BTreeMap<&str, String>,
    out: &Path,
) -> anyhow::Result<Image> {
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    let add_parents = |tree: &mut BTreeMap<String, Node>, p: &str| {
        let mut acc = String::new();
        let parts: Vec<&str> = p.trim_matches('/').split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            acc.push_str(part);
            acc.push('/');
            tree.entry(acc.clone()).or_insert(Node::Dir);
        }
    };
    for d in dirs {
        let d = format!("{}/", d.trim_matches('/'));
        add_parents(&mut tree, d.trim_end_matches('/'));
        tree.insert(d, Node::Dir);
    }
    for f in files {
        let meta = fs::metadata(&f.src).with_context(|| format!("{}", f.src.display()))?;
        add_parents(&mut tree, &f.dest);
        tree.insert(
            f.dest.trim_start_matches('/').to_string(),
            Node::File {
                src: f.src.clone(),
                mode: meta.permissions().mode() & 0o7777,
            },
        );
    }
    for (at, target) in links {
        add_parents(&mut tree, at);
        tree.entry(at.trim_start_matches('/').to_string())
            .or_insert_with(|| Node::Symlink(target.clone()));
    }

    // The layer: deterministic (sorted, mtime 0, root-owned), so the same
    // inputs give the same digest and a registry push uploads nothing new.
    let mut layer = tar::Builder::new(Vec::new());
    for (path, node) in &tree {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match node {
            Node::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                layer.append_data(&mut h, path, std::io::empty())?;
            }
            Node::File { src, mode } => {
                let data = fs::read(src)?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                layer.append_data(&mut h, path, data.as_slice())?;
            }
            Node::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                layer.append_link(&mut h, path, target)?;
            }
        }
    }
    let layer = layer.into_inner()?;
    // gzip with no name and mtime 0 in its header (flate2 writes both as
    // empty/zero): deterministic too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer)?;
    let layer_gz = gz.finish()?;

    let arch = oci_arch();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Cmd": cmd,
            "WorkingDir": "/",
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(&layer_gz),
            "size": layer_gz.len(),
        }],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }],
    }))?;

    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension("tar.tmp");
    let mut t = tar::Builder::new(fs::File::create(&tmp)?);
    let mut put = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        t.append_data(&mut h, name, data)
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    put("index.json", &index)?;
    for blob in [&layer_gz, &config, &manifest] {
        put(
            &format!("blobs/sha256/{}", &sha256(blob)["sha256:".len()..]),
            blob,
        )?;
    }
    t.into_inner()?.flush()?;
    fs::rename(&tmp, out)?;
    Ok(Image {
        tar: out.to_path_buf(),
        digest: sha256(&manifest),
        arch: arch.to_string(),
        layer_bytes: layer.len() as u64,
        layer_gz_bytes: layer_gz.len() as u64,
    })
}

fn labels(title: &str) -> anyhow::Result<BTreeMap<&'static str, String>> {
    let revision = util::output(
        Command::new("git")
            .current_dir(root())
            .args(["rev-parse", "HEAD"]),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_default();
    Ok(BTreeMap::from([
        ("org.opencontainers.image.title", title.to_string()),
        ("org.opencontainers.image.version", version().to_string()),
        ("org.opencontainers.image.revision", revision),
        (
            "org.opencontainers.image.source",
            env!("CARGO_PKG_REPOSITORY").to_string(),
        ),
        (
            "org.opencontainers.image.licenses",
            "Apache-2.0".to_string(),
        ),
    ]))
}

/// The release binary without its debug info (`objcopy --strip-debug`;
/// the symbol table stays, so backtraces keep their function names), and
/// the debug info in `<out>.debug`, which the binary names in a
/// `.gnu_debuglink` section (gdb and perf find it there).
fn strip(bin: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let debug = out.with_extension("debug");
    if let Some(d) = out.parent() {
        fs::create_dir_all(d)?;
    }
    util::run(
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(bin)
            .arg(&debug),
    )
    .context("objcopy (binutils) splits the debug info off")?;
    util::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(bin)
            .arg(out),
    )?;
    Ok(debug)
}

fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

/// Debian's bundle of the CAs Mozilla trusts (package ca-certificates):
/// the object-store sink speaks HTTPS to S3, GCS and Azure, and rustls
/// looks for the roots at this path.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What the roar-node image holds: the binary, the libraries it links and
/// the CA bundle.
fn roar_node_files(stripped: &Path, libs: &[PathBuf]) -> Vec<Entry> {
    let mut files = vec![
        Entry {
            src: stripped.to_path_buf(),
            dest: "/roar-node".into(),
        },
        Entry {
            src: CA_BUNDLE.into(),
            dest: CA_BUNDLE.into(),
        },
    ];
    for lib in libs {
        files.push(Entry {
            dest: lib.to_string_lossy().into_owned(),
            src: lib.clone(),
        });
    }
    files
}

/// The roar-node image: the release binary at /roar-node, stripped, the
/// libraries it links, and the CA bundle (HTTPS to object stores). The stripped binary and its debug info stay in
/// target/images, wherever the tarball goes.
pub fn roar_node_image(bin: &Path, out: &Path) -> anyhow::Result<Image> {
    let stripped = root().join("target/images/roar-node");
    let debug = strip(bin, &stripped)?;
    let libs = ldd(&stripped)?;
    let files = roar_node_files(&stripped, &libs);
    // Mount points the DaemonSet uses (the root file system is read-only).
    let dirs = [
        "/tmp",
        "/proc",
        "/sys",
        "/dev",
        "/etc",
        "/host/proc",
        "/host/sys/fs/cgroup",
        "/var/lib/roar-node",
    ];
    let img = write_image(
        &files,
        &dirs,
        &[],
        &["/roar-node", "daemon"],
        &labels("roar-node")?,
        out,
    )?;
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "roar-node image ({}): binary {} ({} with debug info; debug info kept in {}), \
         links {}; layer {} uncompressed, {} compressed (budget {})",
        img.arch,
        mb(size(&stripped)),
        mb(size(bin)),
        debug.display(),
        libs.iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        mb(img.layer_bytes),
        mb(img.layer_gz_bytes),
        mb(MAX_COMPRESSED),
    );
    if img.layer_gz_bytes > MAX_COMPRESSED {
        bail!(
            "the roar-node image is {} compressed, over its {} budget (a new node pulls it before it can trace)",
            mb(img.layer_gz_bytes),
            mb(MAX_COMPRESSED)
        );
    }
    Ok(img)
}

/// A static C program from this repository, built with gcc.
fn static_c(src: &str, name: &str) -> anyhow::Result<PathBuf> {
    let exe = root().join("target/images").join(name);
    fs::create_dir_all(exe.parent().unwrap())?;
    util::run(
        Command::new("gcc")
            .args(["-O2", "-static", "-o"])
            .arg(&exe)
            .arg(root().join(src)),
    )
    .with_context(|| {
        format!("building {name} (needs gcc and the static libc: apt-get install gcc libc6-dev)")
    })?;
    Ok(exe)
}

/// The OSMO-shaped task image: static busybox (all applets in /bin) and a
/// static /osmo_exec.
pub fn osmo_image(out: &Path) -> anyhow::Result<Image> {
    let exe = static_c("deploy/examples/osmo-shaped/osmo_exec.c", "osmo_exec")?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("no /bin/busybox (apt-get install busybox-static)");
    }
    let applets = util::output(Command::new(busybox).arg("--list")).context("busybox --list")?;
    let links: Vec<(String, String)> = applets
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
        .map(|a| (format!("/bin/{a}"), "busybox".to_string()))
        .collect();
    let files = [
        Entry {
            src: busybox.into(),
            dest: "/bin/busybox".into(),
        },
        Entry {
            src: exe,
            dest: "/osmo_exec".into(),
        },
    ];
    write_image(
        &files,
        &["/tmp", "/proc", "/sys", "/dev", "/etc", "/osmo"],
        &links,
        &["/bin/sh"],
        &labels("roar-node osmo-demo task")?,
        out,
    )
}

/// The local cluster's pod sandbox image: one static process that holds
/// the pod's namespaces and reaps zombies (deploy/k8s-local/pause.c).
pub fn pause_image(out: &Path) -> anyhow::Result<Image> {
    let exe = static_c("deploy/k8s-local/pause.c", "pause")?;
    write_image(
        &[Entry {
            src: exe,
            dest: "/pause".into(),
        }],
        &["/dev", "/proc", "/sys"],
        &[],
        &["/pause"],
        &labels("k8s-local pause")?,
        out,
    )
}

/// Whether `repo`'s registry is this machine (plain HTTP is then fine:
/// the traffic never leaves it; containerd makes the same exception).
fn loopback(repo: &str) -> bool {
    let host = repo.split('/').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a `--push` repository: `registry[:port]/path`, lowercase, no tag,
/// no digest (the tags are the version and the commit).
pub fn check_repository(repo: &str) -> anyhow::Result<()> {
    let (host, path) = repo.split_once('/').unwrap_or(("", repo));
    let bad = |why: &str| -> anyhow::Result<()> {
        bail!(
            "--push {repo:?}: {why}; give a repository like registry.example.com/team/roar-node \
             (it is tagged VERSION and VERSION-g<commit>)"
        )
    };
    if host.is_empty() || path.is_empty() {
        return bad("no registry host");
    }
    if repo.contains('@') {
        return bad("a digest is not a repository");
    }
    if path.contains(':') {
        return bad("a tag is not a repository");
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
    if !path.chars().all(ok) || path.split('/').any(|p| p.is_empty()) {
        return bad("repository paths are lowercase letters, digits, '.', '_', '-' and '/'");
    }
    Ok(())
}

/// Copies `img` to `repo:tag` for each tag with skopeo; returns the
/// manifest digest the registry stored (skopeo's `--digestfile`).
pub fn push(img: &Image, repo: &str, tags: &[String]) -> anyhow::Result<String> {
    check_repository(repo)?;
    let digest_file = img.tar.with_extension("pushed-digest");
    let mut digest = String::new();
    for tag in tags {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--retry-times", "3"]);
        if loopback(repo) {
            c.arg("--dest-tls-verify=false");
        }
        c.arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci-archive:{}", img.tar.display()))
            .arg(format!("docker://{repo}:{tag}"));
        util::run(&mut c).context("skopeo copy (apt-get install skopeo, or cargo xtask setup)")?;
        let d = fs::read_to_string(&digest_file)?.trim().to_string();
        if !digest.is_empty() && d != digest {
            bail!("{repo}: tag {tag} got digest {d}, the first tag {digest}");
        }
        digest = d;
        eprintln!("pushed {repo}:{tag} ({digest})");
    }
    Ok(digest)
}

/// The tags an image is pushed with: the version and the commit.
pub fn tags() -> anyhow::Result<Vec<String>> {
    Ok(vec![version().to_string(), commit_tag()?])
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(repo) = &args.push {
        check_repository(repo)?; // before a build of minutes
    }
    let images = root().join("target/images");
    let out = args
        .out
        .unwrap_or_else(|| images.join(format!("{}.tar", args.what)));
    let img = match args.what.as_str() {
        "roar-node" => roar_node_image(&util::build_release()?, &out)?,
        "osmo-demo" => osmo_image(&out)?,
        "pause" => pause_image(&out)?,
        other => bail!("unknown image {other:?} (roar-node, osmo-demo or pause)"),
    };
    eprintln!("wrote {} ({}, {})", img.tar.display(), img.arch, img.digest);
    if let Some(repo) = &args.push {
        let digest = push(&img, repo, &tags()?)?;
        // What the chart's image.digest takes: the exact image, whatever
        // later happens to the tags.
        println!("{repo}@{digest}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the CA bundle the daemon cannot verify an object store's
    /// HTTPS certificate: records would wait in the spool forever.
    #[test]
    fn the_image_carries_the_ca_bundle() {
        let files = roar_node_files(Path::new("/x/roar-node"), &[]);
        let ca = files
            .iter()
            .find(|e| e.dest == CA_BUNDLE)
            .expect("CA bundle in the image");
        assert!(
            ca.src.is_file(),
            "{} (setup installs ca-certificates)",
            ca.src.display()
        );
    }

    #[test]
    fn repositories() {
        for ok in [
            "127.0.0.1:5000/roar-node",
            "registry.example.com/team/roar-node",
            "localhost:5000/a/b-c_d.e",
        ] {
            check_repository(ok).unwrap();
        }
        for bad in [
            "roar-node",
            "127.0.0.1:5000/roar-node:1.0",
            "r.example.com/roar-node@sha256:00",
            "r.example.com/Roar-Node",
            "r.example.com//x",
            "/x",
        ] {
            let e = check_repository(bad).unwrap_err().to_string();
            assert!(e.starts_with("--push"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(loopback("127.0.0.1:5000/x"));
        assert!(loopback("localhost/x"));
        assert!(loopback("[::1]:5000/x"));
        assert!(!loopback("registry.example.com/x"));
        assert!(!loopback("127.example.com/x"));
    }
}
