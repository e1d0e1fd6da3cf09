#!/usr/bin/env bash
# `make demo`: Kubetune end to end on one machine, CPU only, in about three minutes on 2 cores.
#
#   1. a tiny random-weight Qwen3 (`kubetune tiny-model`: no model hub, no download)
#   2. LoRA fine-tuning on the bundled credit-card FAQ (examples/data: 287 train / 40 eval
#      rows, Chinese and English), with evaluation (`kubetune train`)
#   3. two servers of the fine-tuned model, `small` (INT8) and `large` (full precision), behind
#      the complexity router (`kubetune serve`, `kubetune route`)
#   4. one question from the eval set through the router: the answer, the backend that
#      answered (the router's x-kubetune-backend header) and where the adapter is
#
# The model is tiny and random, so after two epochs the answer is FAQ-flavoured babble: the
# demo shows the pipeline, not model quality. Real runs use `--model Qwen/Qwen3-8B` or a path.
# Settings (environment): KUBETUNE_DEMO_DIR (default ${TMPDIR:-/tmp}/kubetune-demo),
# KUBETUNE_DEMO_EPOCHS (2). Expects .venv (the Makefile's `demo` target runs `make setup` first).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO_ROOT/.venv/bin"
DEMO_DIR=${KUBETUNE_DEMO_DIR:-${TMPDIR:-/tmp}/kubetune-demo}
EPOCHS=${KUBETUNE_DEMO_EPOCHS:-2}
PIDS=()

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo.sh: error: $*" >&2; exit 1; }

# Stop the servers this script started (only those, by pid).
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}

# free_port: print a TCP port nobody listens on (the kernel picks it).
free_port() {
  "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ready NAME URL LOG: poll URL/readyz until it answers 200 (120 s), else show the log.
wait_ready() {
  local name=$1 url=$2 log=$3 deadline=$((SECONDS + 120))
  until curl -sf -o /dev/null "$url/readyz"; do
    if ((SECONDS > deadline)); then
      tail -n 30 "$log" >&2
      die "$name did not become ready at $url (log: $log)"
    fi
    sleep 1
  done
  echo "$name ready at $url"
}

make_model() {
  step "1/4 a tiny random-weight Qwen3 (no hub download)"
  rm -rf "$DEMO_DIR"
  mkdir -p "$DEMO_DIR"
  "$BIN/kubetune" tiny-model --out "$DEMO_DIR/base"
}

# The training config: our own format (the seed's YAML and a FineTuneJob manifest work too).
write_config() {
  cat >"$DEMO_DIR/train.yaml" <<EOF
model: {name: $DEMO_DIR/base}
dataset:
  train: {path: $REPO_ROOT/examples/data/train.jsonl}
  eval: {path: $REPO_ROOT/examples/data/eval.jsonl}
method: {type: lora, rank: 16, alpha: 32, dropout: 0.0}  # rank: capacity vs. memory
training: {epochs: $EPOCHS, microBatchSize: 8, learningRate: 1.0e-2, precision: fp32,
           gradientCheckpointing: false, dynamicBatching: packing}
output: {path: $DEMO_DIR/out}
EOF
}

# Compact progress: one line per step and the evaluation, from the trainer's JSON lines.
show_progress() {
  "$BIN/python" -c '
import json, sys
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") == "step":
        print("  step {step:>3}/{total_steps}  epoch {epoch:.2f}  loss {loss:.3f}".format(**e), flush=True)
    elif e.get("event") == "eval":
        print("  eval: loss {eval_loss:.3f}  perplexity {perplexity:.1f}  token accuracy {accuracy:.3f}".format(**e))
'
}

train() {
  step "2/4 LoRA fine-tuning on examples/data ($EPOCHS epochs, CPU) + evaluation"
  write_config
  "$BIN/kubetune" train --config "$DEMO_DIR/train.yaml" --device cpu --no-progress \
    > >(tee "$DEMO_DIR/train.log" | show_progress)
  [[ -f "$DEMO_DIR/out/adapter/adapter_config.json" ]] || die "no adapter in $DEMO_DIR/out/adapter"
}

serve() {
  step "3/4 serving: small = INT8, large = full precision, behind the router"
  SMALL_URL="http://127.0.0.1:$(free_port)"
  LARGE_URL="http://127.0.0.1:$(free_port)"
  ROUTER_URL="http://127.0.0.1:$(free_port)"
  local adapter="$DEMO_DIR/out/adapter"
  "$BIN/kubetune" serve --model "$DEMO_DIR/base" --adapter "$adapter" --quantization int8 \
    --device cpu --threads 1 --host 127.0.0.1 --port "${SMALL_URL##*:}" \
    >"$DEMO_DIR/small.log" 2>&1 &
  PIDS+=($!)
  "$BIN/kubetune" serve --model "$DEMO_DIR/base" --adapter "$adapter" --quantization none \
    --device cpu --threads 1 --host 127.0.0.1 --port "${LARGE_URL##*:}" \
    >"$DEMO_DIR/large.log" 2>&1 &
  PIDS+=($!)
  "$BIN/kubetune" route --backend "large=$LARGE_URL" --backend "small=$SMALL_URL" \
    --host 127.0.0.1 --port "${ROUTER_URL##*:}" >"$DEMO_DIR/router.log" 2>&1 &
  PIDS+=($!)
  wait_ready small "$SMALL_URL" "$DEMO_DIR/small.log"
  wait_ready large "$LARGE_URL" "$DEMO_DIR/large.log"
  wait_ready router "$ROUTER_URL" "$DEMO_DIR/router.log"
}

# The first eval question, in the format the model was trained on.
question() {
  "$BIN/python" -c '
import json, sys
row = json.loads(open(sys.argv[1], encoding="utf-8").readline())
print(json.dumps({"messages": [{"role": "user", "content": row["input"]}],
                  "max_tokens": 48, "temperature": 0}, ensure_ascii=False))
' "$REPO_ROOT/examples/data/eval.jsonl"
}

ask() {
  step "4/4 one question through the router"
  local body headers answer
  body=$(question)
  headers="$DEMO_DIR/answer.headers"
  answer=$(curl -sf -D "$headers" -H 'content-type: application/json' \
    --data-binary "$body" "$ROUTER_URL/v1/chat/completions") || die "the router did not answer (log: $DEMO_DIR/router.log)"
  "$BIN/python" -c '
import json, sys
question = json.loads(sys.argv[1])["messages"][0]["content"]
answer = json.loads(sys.argv[2])["choices"][0]["message"]["content"]
backend = next((l.split(":", 1)[1].strip() for l in open(sys.argv[3]) if l.lower().startswith("x-kubetune-backend:")), "?")
print(f"question: {question!r}")
print(f"answer:   {answer!r}")
print(f"backend:  {backend}  (the router chose it; x-kubetune-backend header)")
print(f"adapter:  {sys.argv[4]}")
' "$body" "$answer" "$headers" "$DEMO_DIR/out/adapter"
}

main() {
  [[ -x "$BIN/kubetune" ]] || die "no .venv: run \`make setup\` (or \`make demo\`, which does)"
  trap cleanup EXIT
  make_model
  train
  serve
  ask
  step "done: everything is in $DEMO_DIR (summary.json, logs); next: \`make test\`"
}

main "$@"
