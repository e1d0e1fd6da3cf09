# shellcheck shell=bash
# A real Kueue for the local control plane (KUBETUNE_KUEUE=1): build, CRDs, start.
#
# Sourced by hack/cluster.sh, which sets HACK_DIR, KUBETUNE_CACHE, CLUSTER_DIR, PKI_DIR,
# PID_DIR, LOG_DIR and KUBECONFIG_PATH and calls `ensure_kueue` (from ensure_binaries) and
# `start_kueue` (at the end of `up`). The kueue manager (sigs.k8s.io/kueue/cmd/kueue, pinned
# in hack/kueue/go.mod) is built from the Go module proxy into
# $KUBETUNE_CACHE/bin/kueue-<release>-<hash>/ together with its CRDs, copied from the same
# module's config/components/crd/bases, so `up` needs no Go once that folder exists.
#
# It runs as a local process against the local API server with the admin kubeconfig, leader
# election off, the batch/job integration only. Webhooks: OFF for the API server. No
# Validating/MutatingWebhookConfiguration is registered, because admission works without them:
# Kubetune creates its Jobs already suspended and labelled with the queue name (what Kueue's
# Job webhook would do), and ClusterQueue/LocalQueue/ResourceFlavor defaults come from the
# CRDs' own OpenAPI defaults. Kueue still starts its webhook server (its readiness probe waits
# for it), so it listens on 127.0.0.1 with a serving certificate from our CA. Its metrics
# server reads a certificate from a path fixed upstream (/etc/kueue/metrics/certs, see
# cmd/kueue/main.go); the process gets a private mount namespace in which this cluster's
# certificate folder is bind-mounted there, so nothing is written into /etc but that empty
# mount point, and two clusters never share certificates.
# Ports: KUBETUNE_KUEUE_PORT (health), +1 (metrics), +2 (webhook); default 20291 (20280-20281 are CoreDNS's on the real node).

KUEUE_MODULE_DIR="$HACK_DIR/kueue"
KUEUE_PORT=${KUBETUNE_KUEUE_PORT:-20291}
KUEUE_METRICS_CERTS=/etc/kueue/metrics/certs  # fixed in upstream cmd/kueue/main.go

kueue_enabled() { [[ ${KUBETUNE_KUEUE:-0} == 1 ]]; }

kueue_ports() { echo "$KUEUE_PORT" "$((KUEUE_PORT + 1))" "$((KUEUE_PORT + 2))"; }

# The pinned Kueue release, e.g. v0.17.0.
kueue_release() {
  awk '$1 == "sigs.k8s.io/kueue" && $2 ~ /^v/ { print $2; exit }' "$KUEUE_MODULE_DIR/go.mod"
}

# Cache folder: release plus a hash of the pins and of this recipe.
kueue_bin_dir() {
  local hash
  hash=$({ grep -v '^//' "$KUEUE_MODULE_DIR/go.mod"; cat "$KUEUE_MODULE_DIR/go.sum" "${BASH_SOURCE[0]}"; } |
    sha256sum | cut -c1-12)
  echo "$KUBETUNE_CACHE/bin/kueue-$(kueue_release)-$hash"
}

# Builds the manager and copies the CRDs into a temporary sibling, renamed at the end.
build_kueue() {
  local dest=$1 build_log=$2 tmp="$1.partial.$$" release src
  release=$(kueue_release)
  command -v go >/dev/null || die "Go >= 1.26 is needed to build Kueue $release (missing: $dest)"
  rm -rf "$tmp" && mkdir -p "$tmp/crds" "$(dirname "$build_log")"
  info "building Kueue $release (log: $build_log)"
  if ! (cd "$KUEUE_MODULE_DIR" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly" \
        go build -trimpath -ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$release" \
        -o "$tmp/" tool) >"$build_log" 2>&1; then
    rm -rf "$tmp"
    tail -n 20 "$build_log" >&2
    die "Kueue build failed; full log: $build_log"
  fi
  src=$(cd "$KUEUE_MODULE_DIR" && GOTOOLCHAIN=local go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
  cp "$src"/config/components/crd/bases/*.yaml "$tmp/crds/"
  rm -rf "$dest" && mv "$tmp" "$dest"
}

# ensure_kueue: the cached build, or a fresh one.
ensure_kueue() {
  local dir start=$SECONDS
  dir=$(kueue_bin_dir)
  if [[ -x $dir/kueue && -d $dir/crds ]]; then
    info "kueue: cached in $dir"
  else
    build_kueue "$dir" "$KUBETUNE_CACHE/logs/build-$(basename "$dir").log"
    info "kueue: built in $((SECONDS - start))s into $dir"
  fi
}

# The manager's Configuration (config.kueue.x-k8s.io/v1beta2).
write_kueue_config() {
  local dir=$1
  cat >"$dir/config.yaml" <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: 127.0.0.1:$KUEUE_PORT
metrics:
  bindAddress: 127.0.0.1:$((KUEUE_PORT + 1))
webhook:
  host: 127.0.0.1
  port: $((KUEUE_PORT + 2))
  certDir: $dir/certs
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
# The on-demand visibility API (pending positions, an aggregated API server) reads its serving
# certificate from /visibility and needs an APIService; not used here, so off.
featureGates:
  VisibilityOnDemand: false
integrations:
  frameworks:
  - batch/job
EOF
}

kueue_certs() {
  local dir=$1
  mkdir -p "$dir/certs"
  new_cert "$PKI_DIR" kueue "/CN=kueue" \
    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost"
  cp "$PKI_DIR/kueue.crt" "$dir/certs/tls.crt"
  cp "$PKI_DIR/kueue.key" "$dir/certs/tls.key"
}

# start_kueue: CRDs installed and Established, then the manager, ready on /readyz.
start_kueue() {
  local bin dir="$CLUSTER_DIR/kueue"
  bin=$(kueue_bin_dir)
  [[ -d $KUEUE_METRICS_CERTS ]] || mkdir -p "$KUEUE_METRICS_CERTS" 2>/dev/null ||
    die "Kueue reads its metrics certificate from $KUEUE_METRICS_CERTS (fixed upstream); create that empty folder once (mkdir -p $KUEUE_METRICS_CERTS as root)"
  mkdir -p "$dir"
  kueue_certs "$dir"
  write_kueue_config "$dir"
  # Server-side: the Workload CRD is too large for client-side apply's annotation.
  kubectl_admin apply --server-side --force-conflicts -f "$bin/crds/" >/dev/null
  kubectl_admin wait --for=condition=Established crd --all --timeout=60s >/dev/null
  kubectl_admin create namespace kueue-system >/dev/null
  # unshare runs sh, which bind-mounts the certificates and execs kueue: the pid stays kueue's.
  KUBECONFIG="$KUBECONFIG_PATH" setsid unshare --mount --map-root-user sh -c \
    'mount --bind "$1" "$2" && exec "$3" --config "$4"' kueue \
    "$dir/certs" "$KUEUE_METRICS_CERTS" "$bin/kueue" "$dir/config.yaml" \
    >"$LOG_DIR/kueue.log" 2>&1 </dev/null &
  echo $! >"$PID_DIR/kueue.pid"
  wait_until 120 kueue healthy "http://127.0.0.1:$KUEUE_PORT/readyz"
}
