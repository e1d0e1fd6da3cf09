#!/usr/bin/env bash
# `make demo-cluster`: Kubetune on the local cluster's real node, installed the way a cluster admin
# would, with our own images in real containers.
#
#   1. `hack/cluster.sh up` (real kube-apiserver, etcd, controller-manager, scheduler; kwok GPU
#      nodes; one real kubelet node); a cluster that is already up is used and left running
#   2. `helm upgrade --install kubetune charts/kubetune`: the operator image (`make images`) runs
#      as the chart's Deployment on the real node, with its ServiceAccount and read-only root fs
#   3. namespace kubetune-demo for the real node, with local PersistentVolumes holding a tiny
#      random-weight Qwen3 (`kubetune tiny-model`) and the bundled FAQ data
#   4. FineTuneJob `faq`: the runtime image trains it in a real pod (CPU torch); every change of
#      `kubectl get ftj faq` is printed (PROGRESS and LOSS move), then the final row
#   5. ModelDeployment `faq-serve` serves the adapter (server pods Ready by their probes) and a pod
#      inside the cluster asks one question through the router Service
#
# The model is tiny and random: the answer shows the path, not model quality (`make demo` shows
# learning). The cluster and the demo objects stay until `make cluster-down`; look around with
# `eval "$(hack/cluster.sh env)"; kubectl get ftj,mdep,pods -n kubetune-demo`. Needs root (the real
# node) and `make images` (the Makefile's target builds them first).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO_ROOT/.venv/bin"
RELEASE=kubetune
SYSTEM_NS=kubetune-system
DEMO_NS=kubetune-demo
WORK_DIR=${KUBETUNE_DEMO_DIR:-${TMPDIR:-/tmp}/kubetune-demo-cluster}
VOLUMES="$WORK_DIR/volumes"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo-cluster.sh: error: $*" >&2; exit 1; }

start_cluster() {
  step "1/5 local control plane with a real node (hack/cluster.sh up)"
  "$REPO_ROOT/hack/cluster.sh" up
  eval "$("$REPO_ROOT/hack/cluster.sh" env)"
  kubectl get nodes -L type,nvidia.com/gpu.count
  kubectl get nodes -l kubetune.io/real-node=true -o name | grep -q . ||
    die "the cluster has no real node (KUBETUNE_REAL_NODES=0?): this demo runs real pods"
}

install_chart() {
  step "2/5 helm upgrade --install $RELEASE charts/kubetune -n $SYSTEM_NS (operator in a real pod)"
  # Both namespaces labelled for the real node. The chart's defaults: the operator watches every
  # namespace (with watchNamespaces, kopf's start-up scans of CRDs and namespaces are forbidden
  # and retried, which the permission check at the end would report).
  local ns
  for ns in "$SYSTEM_NS" "$DEMO_NS"; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    kubectl label namespace "$ns" kubetune.io/real-node=true --overwrite >/dev/null
  done
  # --take-ownership: the e2e tests may have applied the same CRDs with kubectl before.
  # podNetworks: the operator asks only pods on our bridge for their adapter state (cluster.sh env).
  helm upgrade --install "$RELEASE" "$REPO_ROOT/charts/kubetune" --namespace "$SYSTEM_NS" \
    --take-ownership --set defaults.gpuMemory= \
    --set "defaults.podNetworks={$KUBETUNE_POD_NETWORKS}" >/dev/null
  kubectl -n "$SYSTEM_NS" rollout status "deployment/$RELEASE" --timeout=180s
  kubectl -n "$SYSTEM_NS" get pods -o wide
}

# Local PVs on the real node: models (the tiny Qwen3), data (the FAQ), output (uid 1000 writes).
prepare_namespace() {
  step "3/5 namespace $DEMO_NS: a tiny random-weight Qwen3 and the FAQ on local volumes"
  kubectl -n "$DEMO_NS" delete ftj,mdep --all --wait=true >/dev/null 2>&1 || true
  rm -rf "$VOLUMES" && mkdir -p "$VOLUMES/models" "$VOLUMES/data/faq" "$VOLUMES/output"
  "$BIN/kubetune" tiny-model --out "$VOLUMES/models/tiny-qwen3" >/dev/null
  cp "$REPO_ROOT"/examples/data/{train,eval}.jsonl "$VOLUMES/data/faq/"
  chown 1000:1000 "$VOLUMES/output"
  chmod -R a+rX "$VOLUMES"
  local node claim
  node=$(kubectl get nodes -l kubetune.io/real-node=true -o jsonpath='{.items[0].metadata.name}')
  for claim in models data output; do
    kubectl delete pvc "$claim" -n "$DEMO_NS" --ignore-not-found --wait=true >/dev/null
    kubectl delete pv "$DEMO_NS-$claim" --ignore-not-found --wait=true >/dev/null
    kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $DEMO_NS-$claim, labels: {kubetune.io/demo: "true"}}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  local: {path: $VOLUMES/$claim}
  nodeAffinity:
    required:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$node]}]}]
  claimRef: {namespace: $DEMO_NS, name: $claim}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $claim, namespace: $DEMO_NS}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: $DEMO_NS-$claim
  resources: {requests: {storage: 1Gi}}
EOF
  done
  kubectl -n "$DEMO_NS" get pvc
}

train() {
  step "4/5 FineTuneJob faq: LoRA on the FAQ in a real pod of the runtime image (CPU)"
  kubectl apply -n "$DEMO_NS" -f - <<'EOF'
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: faq}
spec:
  model: {name: tiny-qwen3, source: {pvc: {claimName: models, path: tiny-qwen3}}}
  dataset:
    train: {pvc: {claimName: data, path: faq/train.jsonl}}
    eval: {pvc: {claimName: data, path: faq/eval.jsonl}}
  method: {type: lora, rank: 8}
  training: {epochs: 1, microBatchSize: 4, learningRate: 1.0e-3, precision: fp32,
             maxSteps: 48, evalEverySteps: 16, saveEverySteps: 16}
  resources: {gpusPerNode: 0}
  output: {pvc: {claimName: output, path: faq}}
EOF
  printf '\n$ kubectl get ftj faq -n %s   (every change, sampled each second)\n' "$DEMO_NS"
  local row last="" phase="" deadline=$((SECONDS + 900))
  kubectl get ftj faq -n "$DEMO_NS" | sed -n 1p # not head: kubectl on a closed pipe fails pipefail
  until [[ $phase == Succeeded || $phase == Failed ]]; do
    ((SECONDS < deadline)) || die "FineTuneJob faq did not finish in 900 s"
    row=$(kubectl get ftj faq -n "$DEMO_NS" --no-headers 2>/dev/null || true)
    # AGE ticks every second: compare the rows without their last column.
    if [[ -n $row && ${row% *} != "${last% *}" ]]; then echo "$row"; last=$row; fi
    phase=$(kubectl get ftj faq -n "$DEMO_NS" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    sleep 1
  done
  printf '\n$ kubectl get ftj faq -n %s   (final)\n' "$DEMO_NS"
  kubectl get ftj faq -n "$DEMO_NS"
  [[ $phase == Succeeded ]] || {
    kubectl logs -n "$DEMO_NS" job/faq-a0 --tail=30 >&2 || true
    die "FineTuneJob faq ended $phase"
  }
  printf '\n$ kubectl logs job/faq-a0 -n %s | tail -n 3\n' "$DEMO_NS"
  kubectl logs -n "$DEMO_NS" job/faq-a0 --tail=3 | cut -c1-200
  echo "adapter on the output volume: $(ls "$VOLUMES/output/faq/adapter" | tr '\n' ' ')"
}

serve_and_ask() {
  step "5/5 ModelDeployment faq-serve: the adapter behind the router; one answer from a pod"
  kubectl apply -n "$DEMO_NS" -f - <<'EOF'
apiVersion: kubetune.io/v1alpha1
kind: ModelDeployment
metadata: {name: faq-serve}
spec:
  models:
    - {name: large, model: /mnt/models/tiny-qwen3, modelPvc: {claimName: models, path: tiny-qwen3},
       quantization: none, replicas: 1, gpus: 0, adapter: {fineTuneJob: faq}}
    - {name: small, model: /mnt/models/tiny-qwen3, modelPvc: {claimName: models, path: tiny-qwen3},
       quantization: int8, replicas: 1, gpus: 0, adapter: {fineTuneJob: faq}}
  routing: {strategy: complexity}
  server: {maxNewTokens: 16, port: 8000}
EOF
  local deadline=$((SECONDS + 600)) endpoint=""
  until [[ $(kubectl get mdep faq-serve -n "$DEMO_NS" -o jsonpath='{.status.phase}') == Available ]]; do
    ((SECONDS < deadline)) || die "ModelDeployment faq-serve not Available in 600 s"
    sleep 2
  done
  endpoint=$(kubectl get mdep faq-serve -n "$DEMO_NS" -o jsonpath='{.status.endpoint}')
  printf '\n$ kubectl get mdep,pods -n %s\n' "$DEMO_NS"
  kubectl get mdep -n "$DEMO_NS"
  kubectl get pods -n "$DEMO_NS" -o wide
  local question
  question=$("$BIN/python" -c 'import json; print(json.loads(open("'"$REPO_ROOT"'/examples/data/eval.jsonl", encoding="utf-8").readline())["input"])')
  kubectl delete pod ask-router -n "$DEMO_NS" --ignore-not-found --wait=true >/dev/null
  # One pod of the runtime image asks the router Service by its cluster DNS name.
  kubectl run ask-router -n "$DEMO_NS" --image=ghcr.io/kubetune/trainer:0.1.0 --restart=Never \
    --image-pull-policy=Never --command -- python -c '
import json, sys, urllib.request as u
body = {"messages": [{"role": "user", "content": sys.argv[2]}], "max_tokens": 16, "temperature": 0}
r = u.urlopen(u.Request(sys.argv[1] + "/chat/completions", data=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json"}), timeout=120)
answer = json.loads(r.read())["choices"][0]["message"]["content"]
print(f"question: {sys.argv[2]!r}")
print(f"answer:   {answer!r}")
backend = r.headers.get("x-kubetune-backend")
print(f"backend:  {backend}  (chosen by the router: x-kubetune-backend)")
print(f"via:      {sys.argv[1]}")
' "$endpoint" "$question" >/dev/null
  deadline=$((SECONDS + 180))
  local phase=""
  until [[ $phase == Succeeded || $phase == Failed ]]; do
    ((SECONDS < deadline)) || die "pod ask-router did not finish in 180 s"
    sleep 1
    phase=$(kubectl get pod ask-router -n "$DEMO_NS" -o jsonpath='{.status.phase}')
  done
  printf '\n$ kubectl logs ask-router -n %s\n' "$DEMO_NS"
  kubectl logs ask-router -n "$DEMO_NS"
  [[ $phase == Succeeded ]] || die "the router did not answer (pod ask-router $phase)"
}

main() {
  [[ -x "$BIN/kubetune" ]] || die "no .venv: run \`make setup\` (or \`make demo-cluster\`, which does)"
  mkdir -p "$WORK_DIR"
  start_cluster
  install_chart
  prepare_namespace
  train
  serve_and_ask
  if kubectl logs -n "$SYSTEM_NS" "deployment/$RELEASE" 2>/dev/null | grep -qiE 'forbidden|not enough permissions'; then
    die "the operator hit a permission problem: kubectl logs -n $SYSTEM_NS deployment/$RELEASE"
  fi
  step "done: all of it ran in real pods; the cluster stays up (make cluster-down stops it)"
}

main "$@"
