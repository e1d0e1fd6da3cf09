# shellcheck shell=bash
# Builds the pinned control-plane binaries from the Go module proxy.
#
# Sourced by hack/cluster.sh, which sets HACK_DIR and KUBETUNE_CACHE. Everything named in
# the `tool` block of hack/tools/go.mod (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, helm, and for the real node kubelet, kube-proxy
# and a CoreDNS with a short plugin list) is built in ONE `go build`, so the Kubernetes packages
# they share compile once. The result lands in
# $KUBETUNE_CACHE/bin/<version>/, where <version> is the Kubernetes release plus a hash of
# go.mod and go.sum: bump a pin and the next `up` builds a fresh directory.

TOOLS_DIR="$HACK_DIR/tools"

# The binaries a complete build directory holds (kwok-stages.yaml is written beside them).
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm
  kubelet kube-proxy coredns)

# Kubernetes release pinned in hack/tools/go.mod, e.g. v1.36.3.
kube_version() {
  pinned k8s.io/kubernetes
}

# Version of a module pinned in hack/tools/go.mod, e.g. `pinned helm.sh/helm/v3` -> v3.21.4.
pinned() {
  awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$TOOLS_DIR/go.mod"
}

# Cache key: readable release plus a hash of every pin (go.mod without its comments, go.sum)
# and of this file (the build recipe), so a bump or a recipe change rebuilds.
bin_version() {
  local hash
  hash=$({ grep -v '^//' "$TOOLS_DIR/go.mod"; cat "$TOOLS_DIR/go.sum" "${BASH_SOURCE[0]}"; } |
    sha256sum | cut -c1-12)
  echo "$(kube_version)-$hash"
}

# True when every binary and the kwok stage file are present in $1.
binaries_complete() {
  local dir=$1 name
  for name in "${BINARIES[@]}" kwok-stages.yaml; do
    [[ -e "$dir/$name" ]] || return 1
  done
}

# Version stamps that upstream release builds set with -X (Kubernetes: hack/lib/version.sh,
# helm: its Makefile). Without them the binaries report v0.0.0-master, and helm charts with
# a kubeVersion constraint, or kubectl's version-skew check, would see the wrong version.
version_ldflags() {
  local kube helm minor pkg
  kube=$(kube_version) helm=$(pinned helm.sh/helm/v3)
  minor=$(cut -d. -f2 <<<"$kube")
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
      "$pkg" "$kube" "$pkg" "$pkg" "$minor" "$pkg"
  done
  printf -- '-X helm.sh/helm/v3/internal/version.version=%s ' "$helm"
  printf -- '-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=%s ' "$minor"
  printf -- '-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=%s' "$minor"
}

# run_in_group LOG COMMAND...: run COMMAND in a process group of its own, output to LOG, and
# make the whole group die with this shell: a trap covers TERM/INT/EXIT, and a watchdog covers
# SIGKILL (pytest-timeout, a CI runner), which no trap sees. Without it an orphaned `go build`
# kept compiling for minutes after its caller was gone.
run_in_group() {
  local log=$1 pid watchdog rc=0
  shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  pid=$!
  # shellcheck disable=SC2064 # expand $pid now
  trap "kill -TERM -- -$pid 2>/dev/null" EXIT INT TERM
  (
    while kill -0 "$PPID_OF_BUILD" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
    kill -TERM -- "-$pid" 2>/dev/null
  ) </dev/null >/dev/null 2>&1 &
  watchdog=$!
  wait "$pid" || rc=$?
  kill "$watchdog" 2>/dev/null || true
  trap - EXIT INT TERM
  return "$rc"
}

# go_build_tools OUT: the one `go build` of every tool in hack/tools/go.mod into OUT.
# CGO off: static binaries, no C toolchain needed. GOTOOLCHAIN=local: fail clearly rather
# than download a toolchain. -mod=readonly: go.mod/go.sum are committed and complete.
go_build_tools() {
  cd "$TOOLS_DIR" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly"     exec go build -trimpath -ldflags="-s -w $(version_ldflags)" -o "$1/" tool
}

# Builds into a temporary sibling and renames it at the end, so an interrupted build never
# leaves a directory that looks complete. Output goes to $2 (the build log). A lock on
# $1.lock makes a second `up` (another terminal, a parallel CI job) wait for the first build
# instead of compiling the same thing twice.
build_binaries() {
  local dest=$1 build_log=$2 tmp="$1.partial.$$"
  command -v go >/dev/null || die "Go >= 1.26 is needed to build the control plane (binaries missing from $dest)"
  mkdir -p "$(dirname "$dest")" "$(dirname "$build_log")"
  exec {lock_fd}>"$dest.lock"
  flock "$lock_fd"
  if binaries_complete "$dest"; then exec {lock_fd}>&-; return 0; fi # built while we waited
  rm -rf "$dest".partial.* && mkdir -p "$tmp"
  info "building Kubernetes $(kube_version) (control plane, kubelet, kube-proxy), etcd, CoreDNS, kwok and helm (log: $build_log)"
  PPID_OF_BUILD=$$
  export -f go_build_tools version_ldflags kube_version pinned
  export TOOLS_DIR
  # shellcheck disable=SC2016 # $1 is the inner shell's
  if ! run_in_group "$build_log" bash -c 'go_build_tools "$1"' _ "$tmp"; then
    rm -rf "$tmp"
    tail -n 20 "$build_log" >&2
    die "build failed; full log: $build_log"
  fi
  # etcd's main package is the root of module go.etcd.io/etcd/server/v3, so Go names it "server".
  mv "$tmp/server" "$tmp/etcd"
  write_kwok_stages "$tmp/kwok-stages.yaml"
  rm -rf "$dest" && mv "$tmp" "$dest"
  exec {lock_fd}>&-
}

# kwok (the binary, unlike kwokctl) has no built-in stages: it simulates exactly the Stage
# objects in its --config. We take upstream's stage files from the pinned kwok module:
#   node-initialize, node-heartbeat-with-lease  -> fake nodes become and stay Ready;
#   pod-ready                                    -> a Pending pod on a kwok node becomes Running;
#   pod-delete                                   -> a deleted pod really goes away.
# Deliberately left out: pod-complete, which would flip every Running Job pod to Succeeded.
# Tests drive completion themselves (patch the pod status to terminated with an exit code and
# message, as a kubelet would), and no stage matches a pod once it has left Pending, so kwok
# never overwrites such a patch.
write_kwok_stages() {
  local out=$1 kwok_dir stage
  kwok_dir=$(cd "$TOOLS_DIR" && GOTOOLCHAIN=local go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  : >"$out"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
               pod/fast/pod-ready pod/fast/pod-delete; do
    { echo "---"; cat "$kwok_dir/kustomize/stage/$stage.yaml"; } >>"$out"
  done
}
