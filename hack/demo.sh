#!/usr/bin/env bash
# `make demo`: Kubetune end to end on one machine, CPU only, in about three minutes on 2 cores.
#
#   1. a tiny random-weight Qwen3 (`kubetune tiny-model`: no model hub, no download)
#   2. LoRA fine-tuning on the first rows of the bundled credit-card FAQ (examples/data), many
#      epochs, with evaluation on the 40 held-out rows (`kubetune train`)
#   3. three servers: `base` (the untrained model, no adapter), and `small` (INT8) and `large`
#      (full precision) with the adapter behind the complexity router (`kubetune serve`, `route`)
#   4. a training question asked before (base) and after fine-tuning (through the router): the
#      answer becomes the FAQ's answer; then a held-out question, which a tiny model cannot answer
#
# The model is tiny (242k parameters) and random: it learns the few answers it was trained on by
# heart, and nothing that generalises. Answering unseen questions needs a real base model
# (`--model Qwen/Qwen3-8B` or a path) fine-tuned on the whole data set.
# Settings (environment): KUBETUNE_DEMO_DIR (default ${TMPDIR:-/tmp}/kubetune-demo),
# KUBETUNE_DEMO_ROWS (4: how many FAQ rows to learn), KUBETUNE_DEMO_EPOCHS (60). Expects .venv
# (the Makefile's `demo` target runs `make setup` first).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO_ROOT/.venv/bin"
DEMO_DIR=${KUBETUNE_DEMO_DIR:-${TMPDIR:-/tmp}/kubetune-demo}
ROWS=${KUBETUNE_DEMO_ROWS:-4}
EPOCHS=${KUBETUNE_DEMO_EPOCHS:-60}
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

# wait_ready NAME URL LOG: poll URL/readyz until it answers 200 (300 s: three servers import torch
# at once, slow on 2 loaded cores), else show the log.
wait_ready() {
  local name=$1 url=$2 log=$3 deadline=$((SECONDS + 300))
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
  head -n "$ROWS" "$REPO_ROOT/examples/data/train.jsonl" >"$DEMO_DIR/train.jsonl"
  cat >"$DEMO_DIR/train.yaml" <<EOF
model: {name: $DEMO_DIR/base}
dataset:
  train: {path: $DEMO_DIR/train.jsonl}
  eval: {path: $REPO_ROOT/examples/data/eval.jsonl}
method: {type: lora, rank: 16, alpha: 32, dropout: 0.0}  # rank: capacity vs. memory
training: {epochs: $EPOCHS, microBatchSize: 4, learningRate: 1.0e-2, precision: fp32,
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
    if e.get("event") == "step" and (e["step"] % 10 == 0 or e["step"] in (1, e["total_steps"])):
        print("  step {step:>3}/{total_steps}  epoch {epoch:.2f}  loss {loss:.3f}".format(**e), flush=True)
    elif e.get("event") == "eval":
        print("  eval: loss {eval_loss:.3f}  perplexity {perplexity:.1f}  token accuracy {accuracy:.3f}".format(**e))
'
}

train() {
  step "2/4 LoRA on the first $ROWS rows of examples/data/train.jsonl ($EPOCHS epochs, CPU), evaluated on eval.jsonl"
  write_config
  "$BIN/kubetune" train --config "$DEMO_DIR/train.yaml" --device cpu --no-progress \
    > >(tee "$DEMO_DIR/train.log" | show_progress)
  [[ -f "$DEMO_DIR/out/adapter/adapter_config.json" ]] || die "no adapter in $DEMO_DIR/out/adapter"
}

serve() {
  step "3/4 serving: base = no adapter; small = INT8 and large = full precision with the adapter, behind the router"
  BASE_URL="http://127.0.0.1:$(free_port)"
  SMALL_URL="http://127.0.0.1:$(free_port)"
  LARGE_URL="http://127.0.0.1:$(free_port)"
  ROUTER_URL="http://127.0.0.1:$(free_port)"
  local adapter="$DEMO_DIR/out/adapter"
  "$BIN/kubetune" serve --model "$DEMO_DIR/base" --quantization none \
    --device cpu --threads 1 --host 127.0.0.1 --port "${BASE_URL##*:}" \
    >"$DEMO_DIR/base.log" 2>&1 &
  PIDS+=($!)
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
  wait_ready base "$BASE_URL" "$DEMO_DIR/base.log"
  wait_ready small "$SMALL_URL" "$DEMO_DIR/small.log"
  wait_ready large "$LARGE_URL" "$DEMO_DIR/large.log"
  wait_ready router "$ROUTER_URL" "$DEMO_DIR/router.log"
}

# ask URL FILE: the first question of FILE (JSONL of input/target rows), greedy, through URL;
# prints {"answer": ..., "backend": ...} (the router's x-kubetune-backend header; base: none).
ask() {
  local url=$1 file=$2 body headers answer
  body=$("$BIN/python" -c '
import json, sys
row = json.loads(open(sys.argv[1], encoding="utf-8").readline())
print(json.dumps({"messages": [{"role": "user", "content": row["input"]}],
                  "max_tokens": 96, "temperature": 0}, ensure_ascii=False))
' "$file")
  headers=$(mktemp)
  answer=$(curl -sf -D "$headers" -H 'content-type: application/json' \
    --data-binary "$body" "$url/v1/chat/completions") || die "$url did not answer"
  "$BIN/python" -c '
import json, sys
answer = json.loads(sys.argv[1])["choices"][0]["message"]["content"]
backend = next((l.split(":", 1)[1].strip() for l in open(sys.argv[2]) if l.lower().startswith("x-kubetune-backend:")), "base server")
print(json.dumps({"answer": answer, "backend": backend}, ensure_ascii=False))
' "$answer" "$headers"
  rm -f "$headers"
}

# show LABEL FILE [ANSWER-JSON]: the first row's question and FAQ answer, or an answer to it and
# whether that is the FAQ's answer word for word.
show() {
  "$BIN/python" - "$@" <<'EOF'
import json, sys
label, path = sys.argv[1], sys.argv[2]
row = json.loads(open(path, encoding="utf-8").readline())
if len(sys.argv) == 3:
    print(f"{label:<29}{row['input']!r}")
    print(f"{'the FAQ answer:':<29}{row['target']!r}")
    sys.exit(0)
got = json.loads(sys.argv[3])
same = got["answer"].strip() == row["target"].strip()
verdict = "the FAQ answer, word for word" if same else "not the FAQ answer"
print(f"{label:<29}{got['answer']!r}")
print(f"{'':<29}({verdict}; answered by {got['backend']})")
EOF
}

questions() {
  step "4/4 a training question before and after fine-tuning, then a held-out one"
  local train="$DEMO_DIR/train.jsonl" held_out="$REPO_ROOT/examples/data/eval.jsonl"
  show "training question:" "$train"
  show "before (base, no adapter):" "$train" "$(ask "$BASE_URL" "$train")"
  show "after (router, adapter):" "$train" "$(ask "$ROUTER_URL" "$train")"
  echo
  show "held-out question:" "$held_out"
  show "after (router, adapter):" "$held_out" "$(ask "$ROUTER_URL" "$held_out")"
  cat <<EOF

The tiny random model learned its $ROWS training answers by heart and nothing more: answering a
question it has not seen needs a real base model that already knows the language (model: {name:
Qwen/Qwen3-8B} or a local path), fine-tuned on the whole FAQ (287 rows) on a GPU.
adapter: $DEMO_DIR/out/adapter
EOF
}

main() {
  [[ -x "$BIN/kubetune" ]] || die "no .venv: run \`make setup\` (or \`make demo\`, which does)"
  trap cleanup EXIT
  make_model
  train
  serve
  questions
  step "done: everything is in $DEMO_DIR (summary.json, logs); next: \`make test\`"
}

main "$@"
