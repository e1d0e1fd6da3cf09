#!/usr/bin/env bash
# GPU serving figures: bf16 vs bitsandbytes LLM.int8 on a Qwen3-8B-shaped random model.
#
#     bash bench/gpu_serve.sh            # 2-3 minutes on one H100/H200-class GPU, 5 at most
#     PYTHON=.venv/bin/python bash bench/gpu_serve.sh
#
# No download: the model is built from Qwen3-8B's config (kubetune_trainer.tiny_model,
# size "8b-shape") directly on the GPU with random weights (std 0.02), once per precision in
# its own process so each peak-memory figure is clean. Generation uses the server's own Engine
# (KV cache, left padding, greedy, EOS ignored) on random prompt ids: 128 prompt tokens, 32 new
# tokens, batch 1 and batch 16. Prints one table with the card's name. Expect bitsandbytes int8
# to be SLOWER than bf16 at batch 1 (its own benchmark says 2-3x): int8 buys memory (about half
# of bf16 for the linear layers), not speed, on GPUs.
#
# Needs: an NVIDIA GPU with >= 40 GB, torch with CUDA, transformers, bitsandbytes, and this
# repository's source (PYTHONPATH is set below). Callers: people with a lent GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="operator:trainer_image${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$(mktemp -d)}"

"$PYTHON" - <<'EOF'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("gpu_serve.sh: no CUDA device")
import bitsandbytes, transformers
print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}")
EOF

cat > "$OUT/gpu_serve_worker.py" <<'EOF'
"""One precision: build Qwen3-8B-shaped random weights on the GPU, measure memory and latency."""
import json, statistics, sys, time

import torch
from transformers import Qwen3ForCausalLM

from kubetune_server.engine import Engine, GenerationJob
from kubetune_server.loading import LoadedModel
from kubetune_server.quantize import model_size_bytes, quantize_cuda_bnb_int8
from kubetune_server.sampling import SamplingParams
from kubetune_trainer.tiny_model import qwen3_config

mode, size, device = sys.argv[1], sys.argv[2], torch.device(sys.argv[3])
torch.manual_seed(0)
config = qwen3_config(size, 151_936)
torch.set_default_dtype(torch.bfloat16)
with torch.device("meta"):
    model = Qwen3ForCausalLM(config)
torch.set_default_dtype(torch.float32)
model = model.to_empty(device=device).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.fill_(1.0) if "norm" in name else p.normal_(0.0, 0.02)
    # meta init left the rotary inv_freq buffer empty: rebuild it (fp32, as transformers does)
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)
if mode == "int8":
    model = quantize_cuda_bnb_int8(model)
weights = model_size_bytes(model)
loaded = LoadedModel(model=model, tokenizer=None, device=device,
                     context_length=config.max_position_embeddings, eos_ids=frozenset(), pad_id=0,
                     default_temperature=0.0, default_top_p=1.0, size_before=weights,
                     size_after=weights)
engine = Engine(loaded)
gen = torch.Generator().manual_seed(1)
prompts = [torch.randint(0, 150_000, (128,), generator=gen).tolist() for _ in range(16)]
params = SamplingParams(max_new_tokens=32, ignore_eos=True)
result = {"mode": mode, "weights_gb": weights / 1e9}
for batch in (1, 16):
    jobs = [GenerationJob(p, params) for p in prompts[:batch]]
    engine.generate(jobs, lambda r, t: False)  # warm-up
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        engine.generate(jobs, lambda r, t: False)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result[f"b{batch}_s"] = statistics.median(times)
    result[f"b{batch}_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0
print(json.dumps(result))
EOF

for mode in bf16 int8; do
  timeout 140 "$PYTHON" "$OUT/gpu_serve_worker.py" "$mode" 8b-shape cuda | tail -n 1 > "$OUT/$mode.json"
done

"$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
r = {m: json.loads((Path(sys.argv[1]) / f"{m}.json").read_text()) for m in ("bf16", "int8")}
b, i = r["bf16"], r["int8"]
rows = [
    ("weights", f"{b['weights_gb']:.2f} GB", f"{i['weights_gb']:.2f} GB", f"{i['weights_gb']/b['weights_gb']:.2f}x"),
    ("peak memory, batch 1", f"{b['b1_peak_gb']:.2f} GB", f"{i['b1_peak_gb']:.2f} GB", ""),
    ("latency batch 1, 32 tokens", f"{b['b1_s']*1000:.0f} ms", f"{i['b1_s']*1000:.0f} ms", f"int8 {i['b1_s']/b['b1_s']:.2f}x the time"),
    ("latency batch 16, 32 tokens", f"{b['b16_s']*1000:.0f} ms", f"{i['b16_s']*1000:.0f} ms", f"int8 {i['b16_s']/b['b16_s']:.2f}x the time"),
    ("tokens/s batch 16", f"{16*32/b['b16_s']:.0f}", f"{16*32/i['b16_s']:.0f}", ""),
]
print(f"\n{'Qwen3-8B shape (random)':<28} {'bf16':>12} {'bnb int8':>12}  note")
for name, x, y, note in rows:
    print(f"{name:<28} {x:>12} {y:>12}  {note}")
EOF
