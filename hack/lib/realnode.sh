# shellcheck shell=bash
# One real node beside the kwok ones: Debian's containerd + runc, the kubelet and kube-proxy of
# the pinned Kubernetes, a bridge CNI on a bridge of our own, and CoreDNS for the cluster domain.
#
# Sourced by hack/cluster.sh, which calls start_real_node after the control plane and
# stop_real_node / clean_host in `down` (also at the start of `up`, after a crash). The facts
# behind every setting are in ../shared/research/real-node.md; the ones that matter most:
#   - cgroup v1 host: the kubelet needs `failCgroupV1: false`; crun fails here, runc works;
#   - no CAP_SYS_RESOURCE: containerd's `restrict_oom_score_adj = true`, or every sandbox fails;
#   - the kubelet sets vm.overcommit_memory, kernel.panic, kernel.panic_on_oops (and three more)
#     with no opt-out: `up` records them, `down` restores them;
#   - nothing leaves loopback and our bridge: the apiserver dials kubelets by InternalIP, pods
#     resolve through our CoreDNS only (no `forward`), and forwarding out of the bridge is dropped.
# The node is tainted kubetune.io/real-node=true:NoSchedule, so pods that tests drive by hand keep
# landing on kwok nodes; a MutatingAdmissionPolicy gives pods in namespaces labelled
# kubetune.io/real-node=true the toleration, a node selector for the real node and
# HF_HUB_OFFLINE=1 (the operator's pods do not set it, and nothing may reach the Hub).

REAL_NODES=${KUBETUNE_REAL_NODES:-1}
BRIDGE=${KUBETUNE_BRIDGE:-ktbr0}
NODE_NET=${KUBETUNE_NODE_NET:-10.251.7} # a /24: .1 the node (and CoreDNS), pods from .10
NODE_IP="$NODE_NET.1"
POD_CIDR="$NODE_NET.0/24"
REAL_NODE_NAME=${KUBETUNE_REAL_NODE_NAME:-kubetune-real-0}
KUBELET_PORT=${KUBETUNE_KUBELET_PORT:-20250}
# 127.0.0.1 ports: kubelet healthz, kube-proxy healthz and metrics, CoreDNS health and ready,
# containerd's CRI stream server. All below the ephemeral range, like the control plane's.
KUBELET_HEALTH_PORT=$((KUBELET_PORT - 2))
PROXY_HEALTH_PORT=$((KUBELET_PORT + 6))
PROXY_METRICS_PORT=$((KUBELET_PORT - 1))
DNS_HEALTH_PORT=$((KUBELET_PORT + 30))
DNS_READY_PORT=$((KUBELET_PORT + 31))
STREAM_PORT=$((KUBELET_PORT - 240))
FWD_CHAIN="KT-FWD-$BRIDGE" # our guard in FORWARD: nothing from the bridge leaves it
NODE_TAINT=kubetune.io/real-node
CGROUP_ROOT=kubetune-$BRIDGE # under every cgroup v1 hierarchy; the kubelet's cgroupRoot
# The sysctls the kubelet sets (pkg/kubelet/cm: setupKernelTunables) and those a bridge CNI or
# kube-proxy may touch; recorded by `up`, restored by `down`.
HOST_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv6.conf.all.forwarding net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.ipv4.conf.all.route_localnet)
# Host folders the kubelet or containerd create whatever they are told; `down` removes the ones
# that did not exist before `up`.
HOST_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /usr/libexec/kubernetes
  /run/containerd /var/run/netns /var/lib/cni /opt/containerd /etc/cni)
HOST_DIR="$CLUSTER_DIR/host" # what `up` recorded about the host
NODE_DIR="$CLUSTER_DIR/node" # kubelet root, containerd state, CNI, configs
CONTAINERD_SOCK="$NODE_DIR/run/containerd.sock"

real_nodes_on() { [[ $REAL_NODES != 0 ]]; }

ctr_node() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# apt_install PACKAGE...: Debian packages, installed only when missing.
apt_install() {
  info "installing Debian packages: $*"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
      >"$LOG_DIR/apt.log" 2>&1; then
    apt-get update >>"$LOG_DIR/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
      >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get install $* failed; log: $LOG_DIR/apt.log"
  fi
}

ensure_node_packages() {
  local missing=() pair
  for pair in containerd:containerd runc:runc ctr:containerd iptables:iptables nft:nftables \
              gcc:gcc buildah:buildah; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
  [[ $EUID == 0 ]] || die "the real node needs root (or set KUBETUNE_REAL_NODES=0)"
}

# --- host state: record at `up`, restore at `down` ---------------------------------------

record_host() {
  mkdir -p "$HOST_DIR"
  [[ -f $HOST_DIR/sysctls ]] && return 0 # an earlier record stays the truth
  local key path
  for key in "${HOST_SYSCTLS[@]}"; do
    if sysctl -n "$key" >/dev/null 2>&1; then echo "$key=$(sysctl -n "$key")"; fi
  done >"$HOST_DIR/sysctls.partial"
  for path in "${HOST_PATHS[@]}"; do
    [[ -e $path ]] || echo "$path"
  done >"$HOST_DIR/created-paths"
  nft list tables 2>/dev/null >"$HOST_DIR/nft-tables" || true
  mv "$HOST_DIR/sysctls.partial" "$HOST_DIR/sysctls"
}

restore_host() {
  local line path table
  [[ -f $HOST_DIR/sysctls ]] || return 0
  while IFS= read -r line; do
    [[ $(sysctl -n "${line%%=*}" 2>/dev/null) == "${line#*=}" ]] || sysctl -qw "$line" || true
  done <"$HOST_DIR/sysctls"
  while IFS= read -r path; do
    [[ -e $path ]] && rm -rf "$path"
  done <"$HOST_DIR/created-paths"
  # Empty tables iptables-nft created for us (they did not exist before `up`).
  if command -v nft >/dev/null; then
    while IFS= read -r table; do
      grep -qxF "$table" "$HOST_DIR/nft-tables" && continue
      # Only tables with no rule left (base chains alone are what iptables-nft makes for itself).
      nft list "$table" 2>/dev/null | grep -vqE '^\s*(table .*|chain .*|type .* hook .*|\}|)$' &&
        continue
      nft delete "$table" 2>/dev/null || true
    done < <(nft list tables 2>/dev/null)
  fi
  rm -f "$HOST_DIR/sysctls"
}

# --- network: the bridge and the forward guard -------------------------------------------

setup_network() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service traffic from a pod to another pod on the bridge is routed back through the host;
  # only this bridge forwards (global ip_forward stays 0), and only within itself.
  sysctl -qw "net.ipv4.conf.$BRIDGE.forwarding=1"
  iptables -w -N "$FWD_CHAIN" 2>/dev/null || iptables -w -F "$FWD_CHAIN"
  iptables -w -A "$FWD_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -w -C FORWARD -j "$FWD_CHAIN" 2>/dev/null || iptables -w -I FORWARD 1 -j "$FWD_CHAIN"
}

# remove_chains CMD: every rule jumping to a KUBE-* or our chain from a built-in chain, then
# those chains (kube-proxy's and the kubelet's, which `kube-proxy --cleanup` may leave).
remove_chains() {
  local cmd=$1 table rule chain
  for table in filter nat mangle raw; do
    "$cmd" -w -t "$table" -S >/dev/null 2>&1 || continue
    while IFS= read -r rule; do
      # shellcheck disable=SC2086 # the rule's words are the arguments
      "$cmd" -w -t "$table" ${rule/#-A/-D} 2>/dev/null || true
    done < <("$cmd" -w -t "$table" -S | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE-|KT-FWD-)' || true)
    for chain in $("$cmd" -w -t "$table" -S | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 == "'"$FWD_CHAIN"'") { print $2 }'); do
      "$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $("$cmd" -w -t "$table" -S | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 == "'"$FWD_CHAIN"'") { print $2 }'); do
      "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

teardown_network() {
  local ns
  # Pod network namespaces containerd left (a crash): only those with an address of ours.
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ { print $1 }'); do
    if ip netns exec "$ns" ip -4 -o addr 2>/dev/null | grep -q " ${NODE_NET//./\\.}\."; then
      ip netns delete "$ns" 2>/dev/null || true
    fi
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE"; fi
  if command -v iptables >/dev/null; then
    remove_chains iptables
    remove_chains ip6tables
  fi
}

# --- cgroups and mounts -------------------------------------------------------------------

cgroup_hierarchies() {
  awk '$3 == "cgroup" { print $2 }' /proc/mounts
}

setup_cgroups() {
  local h
  for h in $(cgroup_hierarchies); do
    mkdir -p "$h/$CGROUP_ROOT"
    if [[ -f $h/cpuset.cpus ]]; then
      cat "$h/cpuset.cpus" >"$h/$CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

# Kill what is left in our cgroups (containers of a crashed run), then remove them, deepest first.
teardown_cgroups() {
  local h dir
  for h in $(cgroup_hierarchies); do
    [[ -d $h/$CGROUP_ROOT ]] || continue
    find "$h/$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null |
      while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done
  done
  sleep 0.2
  for h in $(cgroup_hierarchies); do
    [[ -d $h/$CGROUP_ROOT ]] || continue
    while IFS= read -r dir; do rmdir "$dir" 2>/dev/null || true; done \
      < <(find "$h/$CGROUP_ROOT" -depth -type d)
  done
}

# Unmount everything under our folders (the kubelet's root bind mount, volumes, shm, rootfs).
teardown_mounts() {
  local target prefixes=("$CLUSTER_DIR/" "$IMAGE_DIR/containerd/")
  grep -qxF /run/containerd "$HOST_DIR/created-paths" 2>/dev/null && prefixes+=(/run/containerd/)
  while IFS= read -r target; do
    for prefix in "${prefixes[@]}"; do
      if [[ $target/ == "$prefix"* ]]; then umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true; fi
    done
  done < <(awk '{ print $2 }' /proc/mounts | sort -r)
}

# --- processes ----------------------------------------------------------------------------

start_containerd() {
  mkdir -p "$NODE_DIR/run" "$NODE_DIR/cni" "$IMAGE_DIR/containerd" "$NODE_DIR/registry"
  cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$IMAGE_DIR/containerd"
state = "$NODE_DIR/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "$STREAM_PORT"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$NODE_DIR/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$NODE_DIR/registry"
EOF
  # Registries a missing image would be pulled from: a closed local port (no DNS lookup, no
  # connection leaves the host). Every image a pod here uses is imported by `up`.
  local registry
  for registry in docker.io ghcr.io registry.k8s.io quay.io kubetune.local; do
    mkdir -p "$NODE_DIR/registry/$registry"
    printf 'server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n' \
      >"$NODE_DIR/registry/$registry/hosts.toml"
  done
  cat >"$NODE_DIR/cni/10-kubetune.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kubetune",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$NODE_DIR/cni-ipam",
      "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "$NODE_NET.10", "gateway": "$NODE_IP"}]],
      "routes": [{"dst": "0.0.0.0/0", "gw": "$NODE_IP"}]
    }
  }]
}
EOF
  setsid containerd --config "$NODE_DIR/containerd.toml" >"$LOG_DIR/containerd.log" 2>&1 </dev/null &
  echo $! >"$PID_DIR/containerd.pid"
  wait_until 30 containerd ctr_node version
}

write_node_configs() {
  printf 'nameserver %s\nsearch cluster.local\n' "$NODE_IP" >"$NODE_DIR/resolv.conf"
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTH_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI_DIR/kubelet-serving.crt
tlsPrivateKeyFile: $PKI_DIR/kubelet-serving.key
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $NODE_DIR/resolv.conf
registerWithTaints:
  - {key: $NODE_TAINT, value: "true", effect: NoSchedule}
volumePluginDir: $NODE_DIR/volume-plugins
podLogsDir: $NODE_DIR/pod-logs
failSwapOn: false
maxPods: 40
serializeImagePulls: false
# Images are imported, never pulled: keep them, whatever the disk holds.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%}
shutdownGracePeriod: 0s
EOF
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig}
hostnameOverride: $REAL_NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTH_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: [$NODE_IP/32]
iptables: {localhostNodePorts: false}
# 0: leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  cat >"$NODE_DIR/Corefile" <<EOF
# The cluster domain and the reverse zones of our Service and pod ranges; nothing else is
# answered (no forward), so no lookup ever leaves the host.
cluster.local:53 96.10.in-addr.arpa:53 ${NODE_NET##*.}.$(cut -d. -f2 <<<"$NODE_NET").$(cut -d. -f1 <<<"$NODE_NET").in-addr.arpa:53 {
  bind $NODE_IP
  errors
  health 127.0.0.1:$DNS_HEALTH_PORT
  ready 127.0.0.1:$DNS_READY_PORT
  kubernetes cluster.local 96.10.in-addr.arpa ${NODE_NET##*.}.$(cut -d. -f2 <<<"$NODE_NET").$(cut -d. -f1 <<<"$NODE_NET").in-addr.arpa {
    kubeconfig $CLUSTER_DIR/coredns.kubeconfig kubetune
    pods insecure
  }
  cache 5
}
EOF
}

start_kubelet() {
  start_component kubelet --config "$NODE_DIR/kubelet.yaml" \
    --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" --root-dir "$NODE_DIR/kubelet" \
    --node-ip "$NODE_IP" --hostname-override "$REAL_NODE_NAME" \
    --node-labels "kubetune.io/real-node=true,type=real"
}

start_kube_proxy() {
  start_component kube-proxy --config "$NODE_DIR/kube-proxy.yaml"
}

start_coredns() {
  start_component coredns -conf "$NODE_DIR/Corefile"
}

# RBAC for CoreDNS (its kubeconfig's user) and the admission policy that places and
# configures the pods of real-node namespaces.
real_node_manifests() {
  cat <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "kubetune:coredns"}
rules:
  - apiGroups: [""]
    resources: [services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubetune:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "kubetune:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kubetune:coredns"}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: kubetune-real-node}
spec:
  failurePolicy: Fail
  reinvocationPolicy: Never
  matchConstraints:
    namespaceSelector:
      matchLabels: {kubetune.io/real-node: "true"}
    resourceRules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [CREATE]
        resources: [pods]
  mutations:
    - patchType: JSONPatch
      jsonPatch:
        expression: >
          (has(object.spec.tolerations) ? [] :
            [JSONPatch{op: "add", path: "/spec/tolerations", value: []}]) +
          [JSONPatch{op: "add", path: "/spec/tolerations/-",
            value: {"key": "$NODE_TAINT", "operator": "Exists", "effect": "NoSchedule"}}]
    - patchType: JSONPatch
      jsonPatch:
        expression: >
          has(object.spec.nodeSelector) ?
            [JSONPatch{op: "add", path: "/spec/nodeSelector/" + jsonpatch.escapeKey("$NODE_TAINT"),
              value: "true"}] :
            [JSONPatch{op: "add", path: "/spec/nodeSelector", value: {"$NODE_TAINT": "true"}}]
    - patchType: ApplyConfiguration
      applyConfiguration:
        expression: >
          Object{spec: Object.spec{
            containers: object.spec.containers.map(c, Object.spec.containers{
              name: c.name,
              env: [Object.spec.containers.env{name: "HF_HUB_OFFLINE", value: "1"}]})}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {name: kubetune-real-node}
spec:
  policyName: kubetune-real-node
EOF
}

start_real_node() {
  local start=$SECONDS
  setup_cgroups
  mkdir -p "$NODE_DIR/pod-logs" "$NODE_DIR/volume-plugins"
  start_containerd
  # The sandbox image is all a pod needs from us; it takes a second to make, so `up` makes it
  # when `make images` has not run. Our two images come from `make images` (imported here).
  if [[ -z $(recorded_digest "$PAUSE_IMAGE") ]]; then
    mkdir -p "$IMAGE_DIR"
    ensure_pause_image
    export_image "$PAUSE_IMAGE"
  fi
  import_images ctr_node
  write_node_configs
  real_node_manifests | kubectl_admin apply --server-side -f - >/dev/null
  start_kubelet
  start_kube_proxy
  start_coredns
  wait_until 90 "real node $REAL_NODE_NAME Ready" \
    kubectl_admin wait --for=condition=Ready "node/$REAL_NODE_NAME" --timeout=1s
  wait_until 30 kube-proxy healthy "http://127.0.0.1:$PROXY_HEALTH_PORT/healthz"
  wait_until 30 coredns healthy "http://127.0.0.1:$DNS_READY_PORT/ready"
  info "real node $REAL_NODE_NAME Ready in $((SECONDS - start))s ($(ctr --version | awk '{ print $3 }'), runc $(runc --version | awk 'NR == 1 { print $3 }'), pods on $BRIDGE $POD_CIDR)"
}

# Before the kubelet stops: no new pods here, every pod here gone, so the kubelet and
# containerd tear down sandboxes, volumes and network namespaces themselves.
drain_real_node() {
  kubectl_admin get --raw /readyz >/dev/null 2>&1 || return 0
  kubectl_admin get node "$REAL_NODE_NAME" >/dev/null 2>&1 || return 0
  kubectl_admin cordon "$REAL_NODE_NAME" >/dev/null 2>&1 || true
  kubectl_admin delete pods -A --field-selector "spec.nodeName=$REAL_NODE_NAME" \
    --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    [[ -z $(ctr_node tasks ls -q 2>/dev/null) ]] && break
    sleep 0.5
  done
  sleep 2 # the kubelet's StopPodSandbox after the last task (network namespaces)
}

# True if PID runs one of containerd's binaries for this cluster (containerd itself, a shim).
is_our_containerd() {
  local pid=$1 exe args
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ $exe == */containerd || $exe == */containerd-shim-runc-v2 ]] || return 1
  args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $args == *"$NODE_DIR/"* ]]
}

stop_real_node() {
  local pid name
  if [[ -n $(component_pid kubelet) ]]; then drain_real_node; fi
  for name in coredns kube-proxy kubelet; do
    pid=$(component_pid "$name")
    if [[ -n $pid ]]; then stop_pid "$pid"; fi
  done
  if [[ -x $BIN_DIR/kube-proxy ]] && [[ -d $NODE_DIR || -f $HOST_DIR/sysctls ]]; then
    "$BIN_DIR/kube-proxy" --cleanup >"$LOG_DIR/kube-proxy-cleanup.log" 2>&1 || true
  fi
  for pid in $(for d in /proc/[0-9]*; do is_our_containerd "${d#/proc/}" && echo "${d#/proc/}"; done); do
    [[ $(readlink "/proc/$pid/exe") == */containerd ]] || continue
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 1
  teardown_cgroups
  for pid in $(for d in /proc/[0-9]*; do is_our_containerd "${d#/proc/}" && echo "${d#/proc/}"; done); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  teardown_mounts
  teardown_network
  teardown_cgroups
}
