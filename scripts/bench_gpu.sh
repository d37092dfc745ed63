#!/usr/bin/env bash
# GPU benchmark of issue 11 §4: MEMIT, AlphaEdit and ENCORE on a Llama3-8B-shaped random model,
# 100-edit batches, 2 sequential steps each; prints s/edit per stage, peak memory, checkpoint cost and
# the projected time of 10,000 edits (docs/benchmarks.md). Budgeted for < 10 minutes on one H100/H200.
#
#   scripts/bench_gpu.sh                          # Llama3-8B shape on cuda
#   scripts/bench_gpu.sh --shape gpt2-xl          # GPT-2 XL shape
#   scripts/bench_gpu.sh --tiny --device cpu      # smoke test anywhere
#
# Extra arguments go to scripts/bench_gpu.py. Results: $OUT/bench_gpu.json (or ./bench_gpu.json).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python
out="${OUT:-.}/bench_gpu.json"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
exec timeout 590 "$python" "$here/bench_gpu.py" --out "$out" "$@"
