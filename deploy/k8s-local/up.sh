#!/usr/bin/env bash
# Copied from the shared k8s-local harness (/work/shared/k8s-local, see README.md).
# Start a single-node cluster on 127.0.0.1: an image registry, containerd, etcd, kube-apiserver,
# kube-scheduler, kube-controller-manager, kubelet. Waits until the node is Ready and the default
# service account has its token, then prints KUBECONFIG. $K8S_LOCAL_STATE is wiped first.
# $K8S_LOCAL_PAUSE_IMAGE: the pod sandbox image, an OCI archive (`cargo xtask image pause`);
# it is pushed to the registry and containerd pulls it from there like every other image.
set -euo pipefail
source "$(dirname "$0")/env.sh"
for b in kube-apiserver kubelet kube-scheduler kube-controller-manager kubectl; do
  [[ -x $BIN/$b ]] || { echo "missing $BIN/$b: run build.sh" >&2; exit 1; }; done
pause_image=${K8S_LOCAL_PAUSE_IMAGE:-}
[[ -f $pause_image ]] || { echo "K8S_LOCAL_PAUSE_IMAGE=$pause_image: no such OCI archive (cargo xtask image pause)" >&2; exit 1; }
for b in docker-registry skopeo; do
  command -v "$b" >/dev/null || { echo "missing $b: run install-deps.sh" >&2; exit 1; }; done
[[ $S == /?*/?* ]] || { echo "K8S_LOCAL_STATE=$S: use a dedicated directory" >&2; exit 1; }
if [[ -d $S/run ]]; then "$HERE/down.sh" >/dev/null; fi  # an earlier cluster or failed start
for p in "${PORTS[@]}"; do  # one cluster per host: ports, /kubepods and /var/log/pods are shared
  [[ -z $(ss -Hltn "sport = :$p") ]] || { echo "127.0.0.1:$p is in use (another cluster?)" >&2; exit 1; }
done
trap 'echo "up.sh failed (line $LINENO); logs in $S/logs; stopping" >&2; "$HERE/down.sh" >/dev/null 2>&1' ERR
rm -rf --one-file-system "$S"
mkdir -p "$S"/{pki,run,logs,containerd,kubelet,cni/bin,cni/net.d,registry}

start() { # NAME CMD...: run detached (setsid), log to logs/NAME.log, PID to run/NAME.pid
  local name=$1; shift
  setsid "$@" </dev/null >"$S/logs/$name.log" 2>&1 &
  echo $! >"$S/run/$name.pid"
}
wait_for() { # NAME SECONDS CMD...: poll CMD; fail if NAME exits or time runs out
  local name=$1 n=$(( $2 * 10 )); shift 2
  until "$@" >/dev/null 2>&1; do
    alive "$name" || { echo "$name exited:" >&2; tail -5 "$S/logs/$name.log" >&2; return 1; }
    ((n-- > 0)) || { echo "timed out waiting for $name" >&2; return 1; }
    sleep 0.1
  done
}

# PKI: a CA, the apiserver's serving cert, the service-account key, static bearer tokens.
(cd "$S/pki"
 openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=k8s-local-ca
 openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver
 printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,IP:10.0.0.1\n' >ext.cnf
 openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
   -extfile ext.cnf -out apiserver.crt
 openssl genrsa -out sa.key 2048; openssl rsa -in sa.key -pubout -out sa.pub
 echo "admin-token,admin,admin,system:masters" >tokens.csv
 echo "node-token,system:node:$K8S_LOCAL_NODE,node,system:nodes" >>tokens.csv) >/dev/null 2>&1
kubeconfig() { # FILE TOKEN
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters: [{name: k8s-local, cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$S/pki/ca.crt"}}]
users: [{name: user, user: {token: $2}}]
contexts: [{name: k8s-local, context: {cluster: k8s-local, user: user}}]
current-context: k8s-local
KC
}
kubeconfig "$S/kubeconfig" admin-token; kubeconfig "$S/kubelet/kubeconfig" node-token

# The registry: Debian's docker-registry (the CNCF distribution registry), on the loopback
# address only, storage in the state dir (so it starts empty, like the cluster).
cat >"$S/registry/config.yml" <<EOR
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $S/registry/data}, delete: {enabled: true}}
http: {addr: $REGISTRY}
EOR
start registry docker-registry serve "$S/registry/config.yml"
wait_for registry 20 curl -sf "http://$REGISTRY/v2/"
skopeo copy --quiet --dest-tls-verify=false "oci-archive:$pause_image" "docker://$REGISTRY/k8s-local/pause:1"
echo "[$(elapsed)] registry up on $REGISTRY, pause image pushed"

# containerd: private socket and state; CNI = the isolated test plugin + Debian's loopback.
cp "$HERE/cni/isolated" "$S/cni/bin/"; ln -s /usr/lib/cni/loopback "$S/cni/bin/loopback"
echo '{"cniVersion":"0.4.0","name":"k8s-local-isolated","plugins":[{"type":"isolated"}]}' \
  >"$S/cni/net.d/10-isolated.conflist"
cat >"$S/containerd/config.toml" <<EOC
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "$REGISTRY/k8s-local/pause:1"
  # Root in this VM cannot lower oom_score_adj (no CAP_SYS_RESOURCE); without this, runc
  # fails to start containers that get a lower score than containerd's.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$S/cni/bin"
    conf_dir = "$S/cni/net.d"
  # The local registry speaks plain HTTP (loopback only); every other registry TLS.
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REGISTRY"]
    endpoint = ["http://$REGISTRY"]
EOC
start containerd containerd --config "$S/containerd/config.toml"
wait_for containerd 20 test -S "$SOCK"
echo "[$(elapsed)] containerd up"

start etcd etcd --name k8s-local --data-dir "$S/etcd" --unsafe-no-fsync \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster k8s-local=http://127.0.0.1:2380
wait_for etcd 30 env ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health
echo "[$(elapsed)] etcd healthy"
start apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=6443 --insecure-port=0 \
  --tls-cert-file="$S/pki/apiserver.crt" --tls-private-key-file="$S/pki/apiserver.key" \
  --client-ca-file="$S/pki/ca.crt" --token-auth-file="$S/pki/tokens.csv" \
  --authorization-mode=AlwaysAllow --allow-privileged=true --kubelet-preferred-address-types=Hostname \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$S/pki/sa.pub" \
  --service-account-signing-key-file="$S/pki/sa.key" --service-cluster-ip-range=10.0.0.0/24 \
  --cert-dir="$S/pki/apiserver"
wait_for apiserver 60 curl -sf --cacert "$S/pki/ca.crt" -H "Authorization: Bearer admin-token" \
  https://127.0.0.1:6443/readyz
echo "[$(elapsed)] kube-apiserver ready"

common=(--kubeconfig="$S/kubeconfig" --authentication-kubeconfig="$S/kubeconfig"
        --authorization-kubeconfig="$S/kubeconfig" --bind-address=127.0.0.1 --port=0 --leader-elect=false)
start scheduler "$BIN/kube-scheduler" "${common[@]}" --secure-port=10259
start controller-manager "$BIN/kube-controller-manager" "${common[@]}" --secure-port=10257 \
  --service-account-private-key-file="$S/pki/sa.key" --root-ca-file="$S/pki/ca.crt" \
  --controllers='*,-nodeipam,-cloud-node-lifecycle,-service,-route'

cat >"$S/kubelet/config.yaml" <<EOK
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
nodeStatusUpdateFrequency: 2s  # Ready is reported 2 s after the runtime is, not 10 s
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: /
failSwapOn: false
makeIPTablesUtilChains: false
hairpinMode: none
resolvConf: ""
volumePluginDir: $S/kubelet/volume-plugins
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOK
# The apiserver reaches the kubelet (kubectl logs/exec) by the node's name, so it has to resolve
# to 127.0.0.1, as localhost does. Without --node-ip the node reports the host's default-route
# address as its InternalIP; nothing listens there. ~5 s of the start is cAdvisor looking for
# a Docker daemon (five 1 s retries, hard-coded in 1.20).
start kubelet "$BIN/kubelet" --config="$S/kubelet/config.yaml" --kubeconfig="$S/kubelet/kubeconfig" \
  --root-dir="$S/kubelet/root" --cert-dir="$S/kubelet/pki" --container-runtime=remote \
  --container-runtime-endpoint="unix://$SOCK" --image-service-endpoint="unix://$SOCK" \
  --hostname-override="$K8S_LOCAL_NODE" \
  --pod-infra-container-image="$REGISTRY/k8s-local/pause:1"
wait_for kubelet 60 kubectl_ get node "$K8S_LOCAL_NODE"
echo "[$(elapsed)] node registered"
node_ready() { [[ $(kubectl_ get node "$K8S_LOCAL_NODE" \
  -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
wait_for kubelet 90 node_ready
echo "[$(elapsed)] node Ready"
sa_token() { [[ -n $(kubectl_ get sa default -o jsonpath='{.secrets}') ]]; }
wait_for controller-manager 60 sa_token
echo "[$(elapsed)] default service account token ready"
echo "export KUBECONFIG=$S/kubeconfig; kubectl is $BIN/kubectl; images: $REGISTRY"
