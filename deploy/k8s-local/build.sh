#!/usr/bin/env bash
# Copied from the shared k8s-local harness (/work/shared/k8s-local, see README.md).
# Build kube-apiserver, kubelet, kube-scheduler, kube-controller-manager and a matching kubectl
# (v1.20.2) into $K8S_LOCAL_CACHE/bin from Debian bookworm's `kubernetes` source package.
# Every Go dependency is vendored: no Go proxy. ~6-7 min on 2 cores; skipped when already built.
set -euo pipefail
source "$(dirname "$0")/env.sh"
want=(kube-apiserver kubelet kube-scheduler kube-controller-manager kubectl)
built() {
  local b; for b in "${want[@]}"; do [[ -x $BIN/$b ]] || return 1; done
  for b in kube-apiserver kubelet kube-scheduler kube-controller-manager; do
    "$BIN/$b" --version 2>/dev/null | grep -qx "Kubernetes v$K8S_VERSION" || return 1; done
}
if built; then echo "kubernetes v$K8S_VERSION binaries present in $BIN"; exit 0; fi
"$HERE/install-deps.sh" >/dev/null
src=$K8S_LOCAL_CACHE/src; rm -rf "$src"; mkdir -p "$src" "$BIN"; cd "$src"
apt-get "${APT_SRC[@]}" source -qq kubernetes >/dev/null 2>&1 ||
  apt-get "${APT_SRC[@]}" source kubernetes  # show the error
cd kubernetes-*+really"$K8S_VERSION"/
# The vendored reflect2 1.0.1 breaks under Go >= 1.18 (the apiserver then answers 500 to
# DaemonSet/Deployment writes); Debian's reflect2 1.0.2 has the same API.
v=vendor/github.com/modern-go/reflect2; r=/usr/share/gocode/src/github.com/modern-go/reflect2
rm -f "$v"/*.go "$v"/*.s; cp "$r"/*.go "$r"/*.s "$v"/
echo "[$(elapsed)] sources ready, building (log: $K8S_LOCAL_CACHE/build.log)"
GOPROXY=off make WHAT="${want[*]/#/cmd/}" >"$K8S_LOCAL_CACHE/build.log" 2>&1 ||
  { tail -30 "$K8S_LOCAL_CACHE/build.log"; exit 1; }
for b in "${want[@]}"; do install -m 0755 "_output/bin/$b" "$BIN/$b"; done
cd "$K8S_LOCAL_CACHE"; rm -rf "$src"  # 3.5 GB of sources and Go build cache
built || { echo "built binaries do not report v$K8S_VERSION" >&2; exit 1; }
echo "[$(elapsed)] built ${want[*]} into $BIN"
