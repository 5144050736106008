//! `cargo xtask image`: an OCI image-layout tarball made from local files,
//! with no Docker and no registry: the release `roar-node` binary plus the
//! shared libraries it links (as `ldd` lists them), in one uncompressed
//! layer. `ctr image import` (containerd), `kind load image-archive` and
//! `podman load` accept it.
//!
//! The same writer makes the demo's OSMO-shaped task image (busybox and a
//! static `osmo_exec` stand-in built from deploy/examples/osmo-shaped).

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

/// The image the deploy/ manifests use.
pub const ROAR_NODE_REF: &str = "localhost/roar-node:dev";
/// The OSMO-shaped task image of the demo and the cluster e2e test.
pub use roar_node_tests::k8s::OSMO_IMAGE;

#[derive(clap::Args)]
pub struct Args {
    /// What to build: `roar-node` (the release binary) or `osmo-demo`
    /// (busybox + osmo_exec, for the demo workflow).
    #[arg(default_value = "roar-node")]
    pub what: String,
    /// Image reference (default: localhost/roar-node:dev, or the demo's).
    #[arg(long = "ref")]
    pub reference: Option<String>,
    /// Where to write the tarball (default: target/images/<name>.tar).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also import it into the local cluster's containerd.
    #[arg(long)]
    pub import: bool,
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

/// Writes an OCI image layout tarball of `files` (plus the libraries of
/// those marked for `ldd`) and empty `dirs`; `links` are symlinks.
fn write_image(
    reference: &str,
    files: &[Entry],
    dirs: &[&str],
    links: &[(String, String)],
    cmd: &[&str],
    out: &Path,
) -> anyhow::Result<String> {
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

    // The layer: deterministic (sorted, mtime 0, root-owned).
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

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": cmd,
            "WorkingDir": "/",
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
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
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha256(&layer),
            "size": layer.len(),
        }],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": {
                "org.opencontainers.image.ref.name": reference,
                "io.containerd.image.name": reference,
            },
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
    for blob in [&layer, &config, &manifest] {
        put(
            &format!("blobs/sha256/{}", &sha256(blob)["sha256:".len()..]),
            blob,
        )?;
    }
    t.into_inner()?.flush()?;
    fs::rename(&tmp, out)?;
    Ok(sha256(&manifest))
}

/// The roar-node image: the release binary at /roar-node and its libraries.
pub fn roar_node_image(bin: &Path, reference: &str, out: &Path) -> anyhow::Result<String> {
    let mut files = vec![Entry {
        src: bin.to_path_buf(),
        dest: "/roar-node".into(),
    }];
    for lib in ldd(bin)? {
        files.push(Entry {
            dest: lib.to_string_lossy().into_owned(),
            src: lib,
        });
    }
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
    write_image(
        reference,
        &files,
        &dirs,
        &[],
        &["/roar-node", "daemon"],
        out,
    )
}

/// The OSMO-shaped task image: static busybox (all applets in /bin) and a
/// static /osmo_exec.
pub fn osmo_image(reference: &str, out: &Path) -> anyhow::Result<String> {
    let src = root().join("deploy/examples/osmo-shaped/osmo_exec.c");
    let exe = root().join("target/images/osmo_exec");
    fs::create_dir_all(exe.parent().unwrap())?;
    util::run(
        Command::new("gcc")
            .args(["-O2", "-static", "-o"])
            .arg(&exe)
            .arg(&src),
    )
    .context("building osmo_exec (needs gcc and the static libc: apt-get install gcc libc6-dev)")?;
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
        reference,
        &files,
        &["/tmp", "/proc", "/sys", "/dev", "/etc", "/osmo"],
        &links,
        &["/bin/sh"],
        out,
    )
}

/// `ctr image import` into the local cluster's containerd.
pub fn import(tar: &Path) -> anyhow::Result<()> {
    let sock = crate::cluster::state_dir().join("containerd/containerd.sock");
    if !sock.exists() {
        bail!(
            "no containerd at {}: start the local cluster first (cargo xtask cluster up)",
            sock.display()
        );
    }
    util::run(
        Command::new("ctr")
            .arg("-a")
            .arg(&sock)
            .args(["-n", "k8s.io", "image", "import"])
            .arg(tar),
    )
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let images = root().join("target/images");
    let (reference, out, digest) = match args.what.as_str() {
        "roar-node" => {
            let bin = util::build_release()?;
            let r = args.reference.unwrap_or_else(|| ROAR_NODE_REF.into());
            let out = args.out.unwrap_or_else(|| images.join("roar-node.tar"));
            let d = roar_node_image(&bin, &r, &out)?;
            (r, out, d)
        }
        "osmo-demo" => {
            let r = args.reference.unwrap_or_else(|| OSMO_IMAGE.into());
            let out = args.out.unwrap_or_else(|| images.join("osmo-demo.tar"));
            let d = osmo_image(&r, &out)?;
            (r, out, d)
        }
        other => bail!("unknown image {other:?} (roar-node or osmo-demo)"),
    };
    eprintln!("wrote {} ({reference}, {digest})", out.display());
    if args.import {
        import(&out)?;
    }
    Ok(())
}
