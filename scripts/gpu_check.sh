#!/usr/bin/env bash
# Training on a GPU with a model of real size, through the flywheel's own training path.
#
# Such machines reach no model hub either: the model is built from a public architecture's
# config with random weights (`flywheel.sim.architectures`, TinyLlama-1.1B's shape by default;
# FAMILY=qwen2|mistral|gemma|phi3|gpt2 for another). Prints, side by side in one run:
#   1. tokens/s of `train_lora` against a bare transformers + peft loop on the same data, and the
#      peak GPU memory of each (benchmarks/training.py; goal: within 20%);
#   2. the same with gradient checkpointing, and with 4-bit base weights (QLoRA) where
#      bitsandbytes is installed;
#   3. greedy answers through the evaluation's loading path on the GPU.
# Without a GPU it says so and exits 0.
#
#   scripts/gpu_check.sh            (after `make install`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
FAMILY=${FAMILY:-llama}
EXAMPLES=${EXAMPLES:-2000}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to check."
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
work=$(mktemp -d -t flywheel-gpu-check-XXXX)
trap 'rm -rf "$work"' EXIT

echo "== building a random-weight $FAMILY model of real size"
"$PY" -m flywheel.sim.architectures "$FAMILY" "$work/base" --size 1b

echo "== 1. train_lora vs a bare transformers + peft loop (bf16 where supported)"
"$PY" benchmarks/training.py --base "$work/base" --examples "$EXAMPLES" --epochs 1 --repeats 2 --batch-size 16

echo "== 2a. with gradient checkpointing"
"$PY" benchmarks/training.py --base "$work/base" --examples "$EXAMPLES" --epochs 1 --repeats 1 --batch-size 16 \
  --gradient-checkpointing
if "$PY" -c 'import bitsandbytes' 2>/dev/null; then
  echo "== 2b. with 4-bit base weights (QLoRA)"
  "$PY" benchmarks/training.py --base "$work/base" --examples "$EXAMPLES" --epochs 1 --repeats 1 --batch-size 16 \
    --load-in-4bit
else
  echo "== 2b. skipped: bitsandbytes is not installed (pip install bitsandbytes) for 4-bit base weights"
fi

echo "== 3. answers through the evaluation's loading path"
"$PY" - "$work/base" <<'PY'
import sys, time, torch
from flywheel.model.inference import generate_answers, load_model
loaded = load_model(sys.argv[1])
started = time.perf_counter()
answers = generate_answers(loaded, [(f"What is {i} plus {i}?", None) for i in range(64)], max_new_tokens=16)
print(f"64 answers on {loaded.model.device} in {time.perf_counter() - started:.1f}s; "
      f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
PY
