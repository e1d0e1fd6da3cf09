# shellcheck shell=bash
# Fake kwok nodes: GPU nodes advertising nvidia.com/gpu, plus CPU-only nodes.
#
# Sourced by hack/cluster.sh. The annotation kwok.x-k8s.io/node=fake is what kwok's
# --manage-nodes-with-annotation-selector matches; kwok then keeps the nodes Ready and runs
# the pod stages for pods bound to them. The labels are the ones NVIDIA's GPU feature
# discovery puts on real GPU nodes, so node selectors written for a real cluster match here.
# No taints: every node is fake, so nothing needs keeping off them.

# node_manifest NAME CPU MEMORY GPUS: one Node; capacity is given on create (allowed for
# nodes, as a kubelet registering itself does) and kwok's node-initialize stage keeps it.
node_manifest() {
  local name=$1 cpu=$2 memory=$3 gpus=$4 gpu_labels=""
  local resources="
    cpu: \"$cpu\"
    memory: $memory
    pods: \"110\""
  if ((gpus > 0)); then
    gpu_labels="
    nvidia.com/gpu.present: \"true\"
    nvidia.com/gpu.count: \"$gpus\"
    nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3"
    resources+="
    nvidia.com/gpu: \"$gpus\""
  fi
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    kubetune.io/fake-node: "true"$gpu_labels
status:
  capacity:$resources
  allocatable:$resources
EOF
}

# nodes_manifest GPU_NODES GPUS_PER_NODE CPU_NODES: all fake nodes as one YAML stream.
nodes_manifest() {
  local gpu_nodes=$1 gpus=$2 cpu_nodes=$3 i
  for ((i = 0; i < gpu_nodes; i++)); do
    node_manifest "kwok-gpu-$i" 96 1536Gi "$gpus"
  done
  for ((i = 0; i < cpu_nodes; i++)); do
    node_manifest "kwok-cpu-$i" 16 64Gi 0
  done
}
