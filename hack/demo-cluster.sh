#!/usr/bin/env bash
# `make demo-cluster`: Kubetune on the local control plane, installed the way a cluster admin would.
#
#   1. `hack/cluster.sh up` (real kube-apiserver, etcd, controller-manager, scheduler; kwok GPU
#      nodes); a cluster that is already up is used and left running
#   2. `helm upgrade --install kubetune charts/kubetune` into kubetune-system
#   3. the operator as a local process (kwok pods run no containers), with the flags and
#      environment of the chart's Deployment and, as its only credential, a token of the
#      chart's ServiceAccount (`kubectl create token`): the chart's RBAC is all it has
#   4. every manifests/examples/*.yaml applied in namespace kubetune-demo (with pre-bound
#      hostPath volumes for their claims and the FAQ data as a ConfigMap)
#   5. the credit-card-faq trainer pod finished as a kubelet would (exit 0), then
#      `kubectl get ftj,mdep`
#
# The operator stops when the script ends; the cluster and the demo objects stay for a look
# around (`eval "$(hack/cluster.sh env)"; kubectl describe ftj -n kubetune-demo`). Clean up
# with `kubectl delete ns kubetune-demo` and `helm uninstall kubetune -n kubetune-system`.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO_ROOT/.venv/bin"
RELEASE=kubetune
SYSTEM_NS=kubetune-system
DEMO_NS=kubetune-demo
WORK_DIR=${KUBETUNE_DEMO_DIR:-${TMPDIR:-/tmp}/kubetune-demo-cluster}
OPERATOR_PID=""

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo-cluster.sh: error: $*" >&2; exit 1; }

stop_operator() {
  if [[ -n "$OPERATOR_PID" ]]; then
    kill "$OPERATOR_PID" 2>/dev/null || true
    wait "$OPERATOR_PID" 2>/dev/null || true
  fi
}

start_cluster() {
  step "1/5 local control plane (hack/cluster.sh up)"
  "$REPO_ROOT/hack/cluster.sh" up
  eval "$("$REPO_ROOT/hack/cluster.sh" env)"
  kubectl get nodes -L nvidia.com/gpu.count
}

install_chart() {
  step "2/5 helm upgrade --install $RELEASE charts/kubetune -n $SYSTEM_NS"
  # --take-ownership: the e2e tests may have applied the same CRDs with kubectl before.
  helm upgrade --install "$RELEASE" "$REPO_ROOT/charts/kubetune" --namespace "$SYSTEM_NS" \
    --create-namespace --take-ownership --set defaults.trainerImage=kubetune-trainer:demo
  kubectl -n "$SYSTEM_NS" get serviceaccount,deployment,service -l app.kubernetes.io/part-of=kubetune
}

# A kubeconfig whose only credential is a token of the chart's ServiceAccount.
write_operator_kubeconfig() {
  local token server ca
  token=$(kubectl -n "$SYSTEM_NS" create token "$RELEASE" --duration=2h)
  server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  umask 077
  cat >"$WORK_DIR/operator.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: $RELEASE, user: {token: "$token"}}]
contexts: [{name: operator, context: {cluster: local, user: $RELEASE}}]
current-context: operator
EOF
}

# The chart Deployment's operator flags (minus ports, which are picked here) and env, as
# `--flag` lines and `NAME=value` lines.
chart_settings() {
  kubectl -n "$SYSTEM_NS" get deployment "$RELEASE" -o json | "$BIN/python" -c '
import json, sys
container = json.load(sys.stdin)["spec"]["template"]["spec"]["containers"][0]
for arg in container["args"][1:]:
    if not arg.startswith(("--metrics-port", "--health-port")):
        print("ARG", arg)
for env in container["env"]:
    if "value" in env:
        print("ENV", env["name"] + "=" + env["value"])
'
}

start_operator() {
  step "3/5 the operator, locally, with the chart's ServiceAccount token"
  mkdir -p "$WORK_DIR"
  write_operator_kubeconfig
  local -a args=() env=()
  local kind value health_port
  while read -r kind value; do
    if [[ $kind == ARG ]]; then args+=("$value"); else env+=("$value"); fi
  done < <(chart_settings)
  health_port=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo "kubetune operator ${args[*]} (as system:serviceaccount:$SYSTEM_NS:$RELEASE)"
  env "${env[@]}" POD_ID=demo-operator KUBECONFIG="$WORK_DIR/operator.kubeconfig" \
    "$BIN/kubetune" operator "${args[@]}" --metrics-port 0 --health-port "$health_port" \
    >"$WORK_DIR/operator.log" 2>&1 &
  OPERATOR_PID=$!
  local deadline=$((SECONDS + 60))
  until curl -sf -o /dev/null "http://127.0.0.1:$health_port/healthz"; do
    kill -0 "$OPERATOR_PID" 2>/dev/null || { tail -n 30 "$WORK_DIR/operator.log" >&2; die "the operator exited"; }
    ((SECONDS < deadline)) || die "the operator is not healthy after 60 s (log: $WORK_DIR/operator.log)"
    sleep 0.5
  done
  echo "operator healthy (log: $WORK_DIR/operator.log)"
}

# Pre-bound hostPath volumes for every claim the examples name, and the FAQ data ConfigMap.
prepare_namespace() {
  kubectl create namespace "$DEMO_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  local claim
  grep -ho 'claimName: [a-z0-9-]*' "$REPO_ROOT"/manifests/examples/*.yaml | awk '{print $2}' | sort -u |
  while read -r claim; do
    kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $DEMO_NS-$claim, labels: {kubetune.io/demo: "true"}}
spec:
  capacity: {storage: 100Gi}
  accessModes: [ReadWriteMany]
  storageClassName: ""
  hostPath: {path: /tmp/kubetune-demo-volumes/$claim}
  claimRef: {namespace: $DEMO_NS, name: $claim}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $claim, namespace: $DEMO_NS}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: $DEMO_NS-$claim
  resources: {requests: {storage: 1Gi}}
EOF
  done
  kubectl -n "$DEMO_NS" create configmap faq-data --dry-run=client -o yaml \
    --from-file=train.jsonl="$REPO_ROOT/examples/data/train.jsonl" \
    --from-file=eval.jsonl="$REPO_ROOT/examples/data/eval.jsonl" | kubectl apply -f - >/dev/null
}

apply_examples() {
  step "4/5 kubectl apply -f manifests/examples/ -n $DEMO_NS"
  prepare_namespace
  kubectl apply -n "$DEMO_NS" -f "$REPO_ROOT/manifests/examples/"
}

# Finish the credit-card-faq trainer pod as its kubelet would: container exited 0.
finish_faq_pod() {
  step "5/5 the credit-card-faq trainer pod exits 0 (kwok runs no containers: we play kubelet)"
  local pod="" deadline=$((SECONDS + 60)) now
  until [[ -n "$pod" ]] && [[ $(kubectl -n "$DEMO_NS" get pod "$pod" -o jsonpath='{.status.phase}') == Running ]]; do
    ((SECONDS < deadline)) || die "no running credit-card-faq pod after 60 s"
    sleep 1
    pod=$(kubectl -n "$DEMO_NS" get pods -l kubetune.io/finetunejob=credit-card-faq -o name | head -n 1)
    pod=${pod#pod/}
  done
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  kubectl -n "$DEMO_NS" patch pod "$pod" --subresource=status --type=strategic -p "{\"status\": {
    \"phase\": \"Succeeded\", \"conditions\": [{\"type\": \"Ready\", \"status\": \"False\", \"reason\": \"PodCompleted\"}],
    \"containerStatuses\": [{\"name\": \"trainer\", \"image\": \"kubetune-trainer:demo\", \"imageID\": \"\",
      \"ready\": false, \"restartCount\": 0, \"started\": false,
      \"state\": {\"running\": null, \"terminated\": {\"exitCode\": 0, \"reason\": \"Completed\",
        \"startedAt\": \"$now\", \"finishedAt\": \"$now\"}}}]}}" >/dev/null
  deadline=$((SECONDS + 60))
  until [[ $(kubectl -n "$DEMO_NS" get ftj credit-card-faq -o jsonpath='{.status.phase}') == Succeeded ]]; do
    ((SECONDS < deadline)) || die "credit-card-faq did not succeed (log: $WORK_DIR/operator.log)"
    sleep 1
  done
  sleep 2 # let the other FineTuneJobs reach Running or Pending
  printf '\n$ kubectl get ftj,mdep -n %s\n' "$DEMO_NS"
  kubectl get ftj,mdep -n "$DEMO_NS"
  printf '\n$ kubectl get pods -n %s -o wide\n' "$DEMO_NS"
  kubectl get pods -n "$DEMO_NS" -o wide
}

main() {
  [[ -x "$BIN/kubetune" ]] || die "no .venv: run \`make setup\` (or \`make demo-cluster\`, which does)"
  mkdir -p "$WORK_DIR"
  trap stop_operator EXIT
  start_cluster
  install_chart
  start_operator
  apply_examples
  finish_faq_pod
  if grep -qiE 'forbidden|not enough permissions' "$WORK_DIR/operator.log"; then
    die "the operator hit a permission problem: see $WORK_DIR/operator.log"
  fi
  step "done: the operator used only the chart's RBAC; the cluster stays up (make cluster-down stops it)"
}

main "$@"
