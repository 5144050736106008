#!/usr/bin/env python3
# Copied from the shared k8s-local harness (/work/shared/k8s-local, see README.md).
"""Write an OCI image-layout tarball (one layer) from a root filesystem directory; no registry.

usage: mkoci.py ROOTFS OUT.tar NAME:TAG [CMD...]
The tarball loads with `ctr image import`, `podman load` or `kind load image-archive`.
Files are stored as owned by root; CMD defaults to /bin/sh."""
import gzip, hashlib, io, json, platform, sys, tarfile

rootfs, out, ref = sys.argv[1:4]
cmd = sys.argv[4:] or ["/bin/sh"]
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def as_root(info):
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    t.add(rootfs, arcname=".", filter=as_root)
layer = raw.getvalue()
layer_gz = gzip.compress(layer, mtime=0)
config = json.dumps({"architecture": arch, "os": "linux",
                     "config": {"Cmd": cmd, "WorkingDir": "/",
                                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
                     "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": digest(config), "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                   "digest": digest(layer_gz), "size": len(layer_gz)}]}).encode()
index = json.dumps({"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest),
    "size": len(manifest),
    "annotations": {"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref}}]}).encode()


def add(t, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


with tarfile.open(out, "w") as t:
    add(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add(t, "index.json", index)
    for blob in (layer_gz, config, manifest):
        add(t, "blobs/sha256/" + digest(blob)[7:], blob)
print(f"{out}: {ref} {digest(manifest)}")
