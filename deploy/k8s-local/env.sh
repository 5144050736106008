# Sourced by the other scripts: where things live, and small helpers.
# Copied from the shared k8s-local harness (/work/shared/k8s-local, see README.md).
K8S_LOCAL_CACHE=${K8S_LOCAL_CACHE:-$HOME/.cache/k8s-local}  # apt lists, built binaries (keep)
K8S_LOCAL_STATE=${K8S_LOCAL_STATE:-/var/tmp/k8s-local}      # one cluster (wiped by up.sh)
K8S_LOCAL_NODE=${K8S_LOCAL_NODE:-localhost}
K8S_VERSION=1.20.2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$K8S_LOCAL_CACHE/bin
S=$K8S_LOCAL_STATE
SOCK=$S/containerd/containerd.sock
# The image registry (Debian's docker-registry, loopback only): images are pushed there and
# containerd pulls them, as a node pulls from any registry.
REGISTRY=${K8S_LOCAL_REGISTRY:-127.0.0.1:5000}
# etcd, apiserver, kubelet, controller-manager, scheduler, registry
PORTS=(2379 2380 6443 10248 10250 10257 10259 "${REGISTRY##*:}")
export KUBECONFIG=$S/kubeconfig
# apt options for the private deb-src list (nothing under /etc/apt is changed)
APT_SRC=(-o "Dir::Etc::SourceList=$K8S_LOCAL_CACHE/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
         -o "Dir::State::Lists=$K8S_LOCAL_CACHE/apt/lists" -o "Dir::Cache::Archives=$K8S_LOCAL_CACHE/apt/archives")
kubectl_() { "$BIN/kubectl" --cache-dir="$S/kubectl-cache" "$@"; }
ctr_() { ctr -a "$SOCK" -n k8s.io "$@"; }
pidof_() { cat "$S/run/$1.pid" 2>/dev/null || true; }
alive() { local p; p=$(pidof_ "$1"); [[ -n $p ]] && grep -q '^State:[^Z]*$' "/proc/$p/status" 2>/dev/null; }
T0=$(date +%s%N)
elapsed() { printf '%5.1fs' "$(( ($(date +%s%N) - T0) / 1000000 ))e-3"; }
