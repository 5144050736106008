#!/usr/bin/env bash
# Copied from the shared k8s-local harness (/work/shared/k8s-local, see README.md).
# Make a one-layer OCI image from local files and import it into the cluster's containerd.
#   image.sh NAME[:TAG] --rootfs DIR [--out FILE] [-- CMD...]
#   image.sh NAME[:TAG] --binary PATH [--binary PATH...] [--busybox] [--out FILE] [-- CMD...]
# --binary copies the first program to /<basename>, further ones to their own path, each with
#   the shared libraries `ldd` lists (libraries loaded with dlopen() are not seen: add them
#   with --binary too).
# --busybox adds a static /bin/busybox with all its applets (sh, ls, cat, sleep, ...).
# CMD defaults to the first --binary, else /bin/sh. --out FILE writes the tarball to FILE
# instead of importing it. Pods must use imagePullPolicy: Never (or IfNotPresent with a tag).
set -euo pipefail
source "$(dirname "$0")/env.sh"
(($#)) || { sed -n '2,10s/^# \?//p' "$0" >&2; exit 2; }
ref=$1; shift; root=""; bins=(); bb=0; out=""; cmd=()
while (($#)); do case $1 in
  --rootfs) root=$2; shift 2 ;;
  --binary) bins+=("$2"); shift 2 ;;
  --busybox) bb=1; shift ;;
  --out) out=$2; shift 2 ;;
  --) shift; cmd=("$@"); break ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
esac; done
[[ $ref == *:* || $ref == *@* ]] || ref=$ref:latest
# The name the kubelet will ask for: docker.io/library/x:1 for x:1, docker.io/a/x:1 for a/x:1.
first=${ref%%/*}
if [[ $ref != */* ]]; then ref=docker.io/library/$ref
elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then ref=docker.io/$ref; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
if [[ -z $root ]]; then
  ((${#bins[@]} || bb)) || { echo "need --rootfs, --binary or --busybox" >&2; exit 2; }
  root=$work/rootfs; mkdir -p "$root"/{bin,dev,etc,proc,sys,tmp}
  for i in "${!bins[@]}"; do
    b=${bins[i]}; [[ -f $b ]] || { echo "no such file: $b" >&2; exit 2; }
    if ((i == 0)); then cp -L "$b" "$root/${b##*/}"; else mkdir -p "$root${b%/*}"; cp -L "$b" "$root$b"; fi
    if ldd "$b" 2>/dev/null | grep 'not found' >&2; then echo "$b: libraries not found" >&2; exit 1; fi
    for lib in $(ldd "$b" 2>/dev/null | grep -o '/[^ ]*' || true); do
      mkdir -p "$root${lib%/*}"; cp -L "$lib" "$root$lib"; done
  done
  ((${#cmd[@]})) || [[ ${#bins[@]} -eq 0 ]] || cmd=("/${bins[0]##*/}")
  if ((bb)); then
    cp /bin/busybox "$root/bin/busybox"
    for a in $(/bin/busybox --list); do [[ -e $root/bin/$a ]] || ln -s busybox "$root/bin/$a"; done
  fi
fi
[[ -d $root ]] || { echo "no such directory: $root" >&2; exit 2; }
tar=${out:-$work/image.tar}
python3 "$HERE/mkoci.py" "$root" "$tar" "$ref" "${cmd[@]}" >/dev/null
if [[ -n $out ]]; then echo "wrote $out ($ref)"; exit 0; fi
[[ -S $SOCK ]] || { echo "no containerd at $SOCK: run up.sh first (or use --out)" >&2; exit 1; }
ctr_ image import "$tar" >/dev/null
echo "imported $ref"
