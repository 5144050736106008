#!/usr/bin/env bash
# Copied from the shared k8s-local harness (/work/shared/k8s-local, see README.md).
# Stop the cluster up.sh started, by the PIDs it recorded. The kubelet stops the pods first;
# what is left over (containers, shims, processes, mounts, network namespaces, pod cgroups) is
# removed after. Pod logs move from /var/log/pods to $K8S_LOCAL_STATE/logs/pods.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[[ -d $S/run ]] || { echo "no cluster state in $S"; exit 0; }
ours() { # PID: a live process whose command line names the state dir
  [[ -n $1 && -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$S/"
}
stop() { # NAME...: SIGTERM the recorded PIDs, SIGKILL what is left after 5 s
  local n p
  for n; do p=$(pidof_ "$n"); if ours "$p"; then kill "$p" || true; fi; done
  for n; do p=$(pidof_ "$n")
    for _ in {1..50}; do ours "$p" || break; sleep 0.1; done
    if ours "$p"; then kill -9 "$p" || true; fi
    rm -f "$S/run/$n.pid"
  done
}
uids=$(ls "$S/kubelet/root/pods" 2>/dev/null || true)
if alive kubelet && alive apiserver; then  # the normal path: let the kubelet stop every pod
  uids+=" $(kubectl_ get pods -A -o jsonpath='{.items[*].metadata.uid}' 2>/dev/null || true)"
  kubectl_ delete ds,deploy,rs,sts,job,cronjob --all -A --wait=false >/dev/null 2>&1 || true
  kubectl_ delete pods --all -A --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  for _ in {1..300}; do [[ -z $(ctr_ task ls -q 2>/dev/null) ]] && break; sleep 0.1; done
fi
stop kubelet scheduler controller-manager apiserver etcd
if alive containerd; then  # containers the kubelet did not stop
  for t in $(ctr_ task ls -q 2>/dev/null); do ctr_ task kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  for t in $(ctr_ task ls -q 2>/dev/null); do ctr_ task rm -f "$t" >/dev/null 2>&1 || true; done
  for c in $(ctr_ container ls -q 2>/dev/null); do ctr_ container rm "$c" >/dev/null 2>&1 || true; done
fi
stop containerd registry
# Any daemon or containerd shim of this cluster still alive (should be none).
for p in $(ls /proc | grep -E '^[0-9]+$'); do
  case $(readlink "/proc/$p/exe" 2>/dev/null) in
    */containerd|*/containerd-shim*|*/etcd|*/docker-registry|"$BIN"/*)
      if ours "$p"; then echo "killing leftover $p: $(tr '\0' ' ' <"/proc/$p/cmdline")" >&2; kill -9 "$p" || true; fi ;;
  esac
done
# Pod cgroups, in every v1 hierarchy and the v2 tree: kill what still runs in this cluster's
# pods, then remove the empty tree (the kubelet leaves a deleted pod's v2 directory behind).
for uid in $uids; do
  for p in $(find /sys/fs/cgroup/*/kubepods -path "*/pod$uid*" -name cgroup.procs -exec cat {} + 2>/dev/null); do
    kill -9 "$p" 2>/dev/null || true
  done
done
for _ in {1..20}; do
  find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} + 2>/dev/null || true
  compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null || break; sleep 0.1
done
# Mounts under the state dir (secrets, shm, container rootfs), deepest first.
awk -v s="$S/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r |
  while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
# Network namespaces the CNI plugin saw and containerd did not remove.
for ns in $(sort -u "$S/cni/netns.list" 2>/dev/null); do
  if [[ -e $ns ]]; then umount "$ns" 2>/dev/null || true; rm -f "$ns"; fi
done
# libcni's result cache for this cluster's sandboxes
for f in /var/lib/cni/results/k8s-local-isolated-*; do
  [[ -f $f ]] || continue; id=${f#*/k8s-local-isolated-}; id=${id%-*}
  rm -f "$f" /var/lib/cni/results/cni-loopback-"$id"-lo
done
# Pod logs: keep them with the state, off the host.
mkdir -p "$S/logs/pods"
for uid in $uids; do
  for d in /var/log/pods/*_"$uid"; do if [[ -d $d ]]; then mv "$d" "$S/logs/pods/"; fi; done
  find /var/log/containers -maxdepth 1 -type l -lname "/var/log/pods/*_$uid/*" -delete 2>/dev/null || true
done
# The kubelet's hard-coded device-plugin socket (kept when something else is in that dir).
rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/DEPRECATION
rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
echo "[$(elapsed)] down"
