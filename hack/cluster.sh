#!/usr/bin/env bash
# Local Kubernetes control plane for Kubetune's tests: real etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler run as plain processes, kwok plays the kubelets of
# a few fake nodes (GPU nodes advertise nvidia.com/gpu), and one real node (kubelet,
# kube-proxy, containerd + runc, a bridge of our own, CoreDNS) runs our images. No Docker.
#
#   hack/cluster.sh build    only build the missing binaries (cached; `make cluster-build`)
#   hack/cluster.sh images   build both images with buildah (`make images`; cached layers)
#   hack/cluster.sh up       build missing binaries (cached), start everything, create nodes
#   hack/cluster.sh down     stop every process `up` started and delete the cluster state
#   hack/cluster.sh status   say what runs; exit 1 unless the whole cluster is up
#   hack/cluster.sh env      print `export KUBECONFIG=... PATH=<pinned kubectl, helm>:$PATH`
#                            and the AWS_* variables of the cluster's S3 server (hack/s3.sh)
#
# Called by `make cluster-up` / `make cluster-down` and by the e2e fixture in
# tests/e2e/conftest.py. Settings (environment, all optional):
#   KUBETUNE_CACHE           cache root                         (~/.cache/kubetune)
#   KUBETUNE_CLUSTER_DIR     state: pki, etcd data, kubeconfig  ($KUBETUNE_CACHE/cluster)
#   KUBETUNE_APISERVER_PORT  kube-apiserver https               (26443)
#   KUBETUNE_ETCD_PORT       etcd clients; peers use PORT+1     (22379)
#   KUBETUNE_KCM_PORT, KUBETUNE_SCHEDULER_PORT, KUBETUNE_KWOK_PORT  health endpoints
#                                                               (20257, 20259, 20247)
#   KUBETUNE_S3_PORT         S3-compatible server (versitygw; on the API server's address) (20900)
#   KUBETUNE_GPU_NODES, KUBETUNE_GPUS_PER_NODE, KUBETUNE_CPU_NODES  fake nodes (2, 8, 1)
#   KUBETUNE_REAL_NODES      1: one real node (needs root; `make images` first); 0: kwok only
#   KUBETUNE_BRIDGE, KUBETUNE_NODE_NET, KUBETUNE_KUBELET_PORT   real node's bridge, /24, ports
#                                                               (ktbr0, 10.251.7, 20250)
#   KUBETUNE_IMAGE_DIR, KUBETUNE_IMAGE_CACHE_GB  image stores and their cap (images/, 40)
#   KUBETUNE_KUEUE=1         also run a real Kueue (hack/lib/kueue.sh); KUBETUNE_KUEUE_PORT
#                            its health port, +1 metrics, +2 webhook   (20291)
# Ports sit below Linux's ephemeral range (32768+) so outgoing connections never take them.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KUBETUNE_CACHE=${KUBETUNE_CACHE:-$HOME/.cache/kubetune}
CLUSTER_DIR=${KUBETUNE_CLUSTER_DIR:-$KUBETUNE_CACHE/cluster}
# Logs live outside CLUSTER_DIR so they survive `down` for debugging; one folder per cluster.
LOG_DIR="$KUBETUNE_CACHE/logs/$(basename "$CLUSTER_DIR")"
APISERVER_PORT=${KUBETUNE_APISERVER_PORT:-26443}
ETCD_PORT=${KUBETUNE_ETCD_PORT:-22379}
KCM_PORT=${KUBETUNE_KCM_PORT:-20257}
SCHEDULER_PORT=${KUBETUNE_SCHEDULER_PORT:-20259}
KWOK_PORT=${KUBETUNE_KWOK_PORT:-20247}
S3_PORT=${KUBETUNE_S3_PORT:-20900}
GPU_NODES=${KUBETUNE_GPU_NODES:-2}
GPUS_PER_NODE=${KUBETUNE_GPUS_PER_NODE:-8}
CPU_NODES=${KUBETUNE_CPU_NODES:-1}

# Start order; `down` stops them in reverse (the real node's, in lib/realnode.sh, first).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

info() { echo "cluster.sh: $*" >&2; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }

# shellcheck source=lib/build.sh
source "$HACK_DIR/lib/build.sh"
# shellcheck source=lib/pki.sh
source "$HACK_DIR/lib/pki.sh"
# shellcheck source=lib/nodes.sh
source "$HACK_DIR/lib/nodes.sh"
# shellcheck source=lib/images.sh
source "$HACK_DIR/lib/images.sh"
# shellcheck source=lib/realnode.sh
source "$HACK_DIR/lib/realnode.sh"
# shellcheck source=lib/kueue.sh
source "$HACK_DIR/lib/kueue.sh"
if kueue_enabled; then COMPONENTS+=(kueue); fi

BIN_DIR="$KUBETUNE_CACHE/bin/$(bin_version)"
PKI_DIR="$CLUSTER_DIR/pki"
PID_DIR="$CLUSTER_DIR/pids"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"
# With a real node the API server listens on the node's bridge address (pods reach it through
# the `kubernetes` Service); without one, on loopback only.
if real_nodes_on; then APISERVER_HOST=$NODE_IP; else APISERVER_HOST=127.0.0.1; fi

# --- processes ---------------------------------------------------------------------------

# start_component NAME ARGS...: run $BIN_DIR/NAME detached (own session, so a Ctrl-C in the
# caller's terminal does not reach it), output to $LOG_DIR/NAME.log, pid to $PID_DIR/NAME.pid.
start_component() {
  local name=$1
  shift
  setsid "$BIN_DIR/$name" "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$PID_DIR/$name.pid"
}

# is_ours PID: the process runs one of our cached binaries for this cluster's state dir.
# Guards against killing an unrelated process that reused a stale pid.
is_ours() {
  local pid=$1 exe args
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ $exe == "$KUBETUNE_CACHE/bin/"* ]] || return 1
  args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $args == *"$CLUSTER_DIR/"* ]]
}

# component_pid NAME: the pid of a live component, or nothing.
component_pid() {
  local file="$PID_DIR/$1.pid" pid
  [[ -f $file ]] || return 0
  pid=$(<"$file")
  if is_ours "$pid"; then echo "$pid"; fi
}

# Processes of ours whose pid file is gone (an earlier run that crashed mid-way).
stray_pids() {
  local dir pid
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    if [[ $pid != "$$" ]] && is_ours "$pid"; then echo "$pid"; fi
  done
}

# stop_pid PID: TERM, then KILL after 10 s.
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    is_ours "$pid" || return 0
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# wait_until SECONDS WHAT COMMAND...: poll COMMAND until it succeeds; on timeout, die.
wait_until() {
  local timeout=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what (logs: $LOG_DIR)"
    sleep 0.2
  done
}

port_free() { ! (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

healthy() { curl -skf --max-time 2 "$1" >/dev/null; }

kubectl_admin() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# --- components --------------------------------------------------------------------------

start_etcd() {
  # --unsafe-no-fsync: the data is thrown away at `down`; fsync would only slow tests.
  start_component etcd --name kubetune --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "kubetune=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --unsafe-no-fsync --log-level warn
  wait_until 30 etcd healthy "http://127.0.0.1:$ETCD_PORT/health"
}

# Kwok only: loopback, and the `kubernetes` Service gets no endpoints (reconciler none; 127.0.0.1
# is not a valid endpoint address and no pod runs to use it). With the real node: the node's
# bridge address, advertised as the Service's endpoint (lease reconciler), kubelets dialled by
# their InternalIP only (never a DNS lookup of a node name). requestheader/proxy-client flags
# set up the front proxy, so aggregated APIs work and components stop logging its absence.
apiserver_network_flags() {
  if real_nodes_on; then
    echo --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --endpoint-reconciler-type lease \
      --kubelet-preferred-address-types InternalIP \
      --kubelet-client-certificate "$PKI_DIR/apiserver-kubelet-client.crt" \
      --kubelet-client-key "$PKI_DIR/apiserver-kubelet-client.key" \
      --kubelet-certificate-authority "$PKI_DIR/ca.crt"
  else
    echo --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none
  fi
}

start_apiserver() {
  # shellcheck disable=SC2046 # word-split on purpose: paths here have no spaces
  start_component kube-apiserver \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" --secure-port "$APISERVER_PORT" \
    $(apiserver_network_flags) \
    --tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
    --client-ca-file "$PKI_DIR/ca.crt" --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI_DIR/sa.pub" \
    --service-account-signing-key-file "$PKI_DIR/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
    --requestheader-client-ca-file "$PKI_DIR/ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI_DIR/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI_DIR/front-proxy-client.key"
  wait_until 90 kube-apiserver kubectl_admin get --raw /readyz
}

start_controller_manager() {
  start_component kube-controller-manager \
    --kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI_DIR/sa.key" --root-ca-file "$PKI_DIR/ca.crt"
}

start_scheduler() {
  start_component kube-scheduler \
    --kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false
}

start_kwok() {
  start_component kwok --kubeconfig "$CLUSTER_DIR/kwok.kubeconfig" \
    --config "$BIN_DIR/kwok-stages.yaml" --config "$HACK_DIR/kwok-pod-terminate.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr 10.244.0.0/16 --node-ip 10.0.0.1 \
    --server-address "127.0.0.1:$KWOK_PORT" --node-lease-duration-seconds 40
}

# --- commands ----------------------------------------------------------------------------

# Every component `up` starts: the control plane, and the real node's unless it is off.
all_components() {
  echo "${COMPONENTS[@]}"
  if real_nodes_on; then echo kubelet kube-proxy coredns; fi
}

# True when every component runs and the API server is ready.
cluster_running() {
  local name
  for name in $(all_components); do
    [[ -n $(component_pid "$name") ]] || return 1
  done
  kubectl_admin get --raw /readyz >/dev/null 2>&1
}

# Kueue and versitygw are Go modules of their own (other k8s.io versions, nothing shared with
# the control plane's build cache). Cold, they build beside the control plane's `go build`, whose
# link steps and downloads leave a core idle much of the time: measured on 2 cores, one after
# the other took 1182 + 382 + 177 s.
ensure_binaries() {
  local start=$SECONDS side=() pid failed=0
  if kueue_enabled; then
    ensure_kueue &
    side+=("$!")
  fi
  "$HACK_DIR/s3.sh" build >/dev/null &
  side+=("$!")
  if binaries_complete "$BIN_DIR"; then
    info "binaries: cached in $BIN_DIR"
  else
    build_binaries "$BIN_DIR" "$KUBETUNE_CACHE/logs/build-$(bin_version).log" || failed=1
    ((failed)) || info "binaries: built in $((SECONDS - start))s into $BIN_DIR"
  fi
  for pid in "${side[@]}"; do wait "$pid" || failed=1; done
  ((failed == 0)) || die "a build failed (its log is named above)"
}

check_ports_free() {
  local port dup
  # Our own components must not share a port either (settings derive some from others).
  dup=$(printf '%s\n' "$APISERVER_PORT" "$ETCD_PORT" "$((ETCD_PORT + 1))" "$KCM_PORT" \
          "$SCHEDULER_PORT" "$KWOK_PORT" "$S3_PORT" $(if kueue_enabled; then kueue_ports; fi) \
          $(if real_nodes_on; then echo "$KUBELET_PORT" "$KUBELET_HEALTH_PORT" "$PROXY_HEALTH_PORT" \
            "$PROXY_METRICS_PORT" "$DNS_HEALTH_PORT" "$DNS_READY_PORT" "$STREAM_PORT"; fi) |
        sort | uniq -d | tr '\n' ' ')
  [[ -z $dup ]] || die "port(s) $dup given to two components; change the KUBETUNE_*_PORT settings"
  for port in "$ETCD_PORT" "$((ETCD_PORT + 1))" "$KCM_PORT" "$SCHEDULER_PORT" "$KWOK_PORT" \
              $(if kueue_enabled; then kueue_ports; fi); do
    port_free "$port" || die "127.0.0.1:$port is taken by another process; override the KUBETUNE_*_PORT settings (see the top of $0)"
  done
  port_free "$APISERVER_PORT" "$APISERVER_HOST" ||
    die "$APISERVER_HOST:$APISERVER_PORT is taken; set KUBETUNE_APISERVER_PORT"
  port_free "$S3_PORT" "$APISERVER_HOST" ||
    die "$APISERVER_HOST:$S3_PORT is taken; set KUBETUNE_S3_PORT"
  if real_nodes_on; then
    for port in "$KUBELET_HEALTH_PORT" "$PROXY_HEALTH_PORT" "$PROXY_METRICS_PORT" \
                "$DNS_HEALTH_PORT" "$DNS_READY_PORT" "$STREAM_PORT"; do
      port_free "$port" || die "127.0.0.1:$port is taken; set KUBETUNE_KUBELET_PORT (the real node's ports derive from it)"
    done
  fi
}

write_kubeconfigs() {
  local server="https://$APISERVER_HOST:$APISERVER_PORT" name
  write_kubeconfig "$KUBECONFIG_PATH" "$PKI_DIR" admin "$server"
  write_kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" "$PKI_DIR" controller-manager "$server"
  write_kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" "$PKI_DIR" scheduler "$server"
  write_kubeconfig "$CLUSTER_DIR/kwok.kubeconfig" "$PKI_DIR" kwok "$server"
  if real_nodes_on; then
    for name in kubelet kube-proxy coredns; do
      write_kubeconfig "$CLUSTER_DIR/$name.kubeconfig" "$PKI_DIR" "$name" "$server"
    done
  fi
}

cmd_up() {
  mkdir -p "$LOG_DIR"
  ensure_binaries
  if cluster_running; then
    "$HACK_DIR/s3.sh" up "$CLUSTER_DIR/s3" "$S3_PORT" "$APISERVER_HOST"
    info "already running; $KUBECONFIG_PATH"
    return 0
  fi
  cmd_down # a half-started or crashed earlier run: clear it first
  if real_nodes_on; then ensure_node_packages; fi
  local start=$SECONDS
  mkdir -p "$PID_DIR"
  if real_nodes_on; then
    record_host
    setup_network
  fi
  check_ports_free
  if real_nodes_on; then
    generate_pki "$PKI_DIR" "$NODE_IP"
    generate_node_pki "$PKI_DIR" "$REAL_NODE_NAME" "$NODE_IP"
  else
    generate_pki "$PKI_DIR"
  fi
  write_kubeconfigs
  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  start_kwok
  "$HACK_DIR/s3.sh" up "$CLUSTER_DIR/s3" "$S3_PORT" "$APISERVER_HOST"
  wait_until 60 kube-controller-manager healthy "https://127.0.0.1:$KCM_PORT/healthz"
  wait_until 60 kube-scheduler healthy "https://127.0.0.1:$SCHEDULER_PORT/healthz"
  wait_until 60 kwok healthy "http://127.0.0.1:$KWOK_PORT/healthz"
  nodes_manifest "$GPU_NODES" "$GPUS_PER_NODE" "$CPU_NODES" | kubectl_admin apply -f - >/dev/null
  wait_until 60 "fake nodes Ready" kubectl_admin wait --for=condition=Ready node -l type=kwok --timeout=1s
  if real_nodes_on; then start_real_node; fi
  # Pods need their namespace's default service account, made by the controller-manager.
  wait_until 60 "default service account" kubectl_admin get serviceaccount default -n default
  if kueue_enabled; then start_kueue; fi
  info "started in $((SECONDS - start))s: $GPU_NODES GPU node(s) x $GPUS_PER_NODE GPUs, $CPU_NODES CPU node(s), $(real_nodes_on && echo "1 real node ($REAL_NODE_NAME)" || echo "no real node")$(kueue_enabled && echo ", Kueue")"
  info "use it: eval \"\$($0 env)\""
}

cmd_down() {
  local i name pid
  # The real node first (its drain needs the API server); it was started if `up` recorded the host.
  if [[ -d $HOST_DIR ]]; then stop_real_node; fi
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    name=${COMPONENTS[i]}
    pid=$(component_pid "$name")
    if [[ -n $pid ]]; then stop_pid "$pid"; fi
  done
  "$HACK_DIR/s3.sh" down "$CLUSTER_DIR/s3"
  for pid in $(stray_pids); do
    info "stopping leftover process $pid"
    stop_pid "$pid"
  done
  if [[ -d $HOST_DIR ]]; then restore_host; fi
  rm -rf "$CLUSTER_DIR"
}

cmd_status() {
  local name pid ok=0
  for name in $(all_components); do
    pid=$(component_pid "$name")
    if [[ -n $pid ]]; then
      printf '%-24s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-24s stopped\n' "$name"
      ok=1
    fi
  done
  if ((ok == 0)) && kubectl_admin get --raw /readyz >/dev/null 2>&1; then
    echo "cluster up: KUBECONFIG=$KUBECONFIG_PATH (binaries: $BIN_DIR)"
  else
    echo "cluster not (fully) up"
    return 1
  fi
}

# After `images`: a running real node gets the new images at once (otherwise at the next `up`).
import_if_running() {
  if real_nodes_on && [[ -S $CONTAINERD_SOCK ]] && ctr_node version >/dev/null 2>&1; then
    import_images ctr_node
  fi
}

cmd_env() {
  echo "export KUBECONFIG=\"$KUBECONFIG_PATH\""
  echo "export PATH=\"$BIN_DIR:\$PATH\""
  # The pod IPs an operator run from this shell may connect to (server pods' GET /adapterz):
  # the real node's pods on our bridge. kwok pods' IPs (10.244.0.0/16) are made up and routed
  # off this host, so never contacted; without a real node no pod is (127.0.0.1/32 is no pod's).
  if real_nodes_on; then
    echo "export KUBETUNE_POD_NETWORKS=\"$POD_CIDR\""
  else
    echo "export KUBETUNE_POD_NETWORKS=\"127.0.0.1/32\""
  fi
  "$HACK_DIR/s3.sh" env "$S3_PORT" "$APISERVER_HOST"
}

main() {
  case "${1:-}" in
    build) mkdir -p "$LOG_DIR" && ensure_binaries ;;
    images) mkdir -p "$LOG_DIR" && build_all_images && import_if_running ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) sed -n '2,31p' "$0" >&2; exit 2 ;;
  esac
}

main "$@"
