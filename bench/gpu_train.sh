#!/usr/bin/env bash
# Prepared GPU check for issue 3 (under 8 minutes on an H100/H200): Qwen3-8B-shaped LoRA bf16 and
# QLoRA at 2048 tokens, micro-batch 1: tokens/s, MFU, peak memory.
# Targets: LoRA bf16 peak <= 19 GB (ms-swift reports 22 GB), QLoRA <= 7.5 GB, LoRA MFU >= 45%.
# Usage on the GPU machine, from the repo root (the project's Python deps installed there):
#   bash bench/gpu_train.sh            # writes the table and a JSON line to stdout (and $OUT if set)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/operator:$PWD/trainer_image${PYTHONPATH:+:$PYTHONPATH}"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
log=${OUT:-/tmp}/gpu_train.log
timeout 450 python3 bench/gpu_train.py --size 8b-shape --seq 2048 --steps 6 --methods lora,qlora "$@" | tee "$log"
