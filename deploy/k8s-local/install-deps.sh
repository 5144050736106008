#!/usr/bin/env bash
# Copied from the shared k8s-local harness (/work/shared/k8s-local, see README.md).
# Install the Debian packages the toolkit needs (apt runs only when one is missing) and
# set up a private deb-src list under $K8S_LOCAL_CACHE/apt for build.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
pkgs=(golang-go golang-github-modern-go-reflect2-dev make gcc libc6-dev dpkg-dev rsync jq
      etcd-server etcd-client containerd runc containernetworking-plugins busybox-static
      iproute2 util-linux openssl curl python3 ca-certificates docker-registry skopeo)
need=(); for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# containerd from apt also enables a system service; the toolkit runs its own instance.
mkdir -p "$K8S_LOCAL_CACHE/apt/lists/partial" "$K8S_LOCAL_CACHE/apt/archives/partial"
cat >"$K8S_LOCAL_CACHE/apt/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
SRC
if ! ls "$K8S_LOCAL_CACHE"/apt/lists/*Sources* >/dev/null 2>&1; then
  apt-get "${APT_SRC[@]}" update -qq
fi
echo "deps ok"
