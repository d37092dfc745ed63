#!/usr/bin/env bash
# The GPU check of issue 11 in one call of the `device` tool (prepare .device/ with
# scripts/device_prepare.sh first; the command must be run with carry=[".device"]):
#   1. scripts/bench_eval.py on a random GPT-2 XL-shaped model in float32: the packed scorer against
#      the reference's per-record evaluation (30 built-in records, 3 interleaved rounds, numbers
#      compared);
#   2. scripts/bench_gpu.sh: MEMIT, AlphaEdit and ENCORE on Llama3-8B shapes, 100-edit batches.
# Logs and bench_gpu.json land in $OUT. `--smoke` runs both tiny on the CPU (a check of this script).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-$PWD/.device/out}"
mkdir -p "$out"
python="${PYTHON:-python3}"
site="$(mktemp -d)"
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .device/whl/*.whl
export PYTHONPATH="$PWD/src:$site" EDIT_RUNNER_SHARED="$PWD/.device/shared" PYTHONUNBUFFERED=1 PYTHON="$python"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "${1:-}" = "--smoke" ]; then
    eval_args=(--random-shape gpt2-xl --tiny --device cpu --num 4 --rounds 1)
    gpu_args=(--tiny --device cpu --batch 2 --steps 1 --opt-steps 1 --cov-texts 8 --cov-length 16)
else
    eval_args=(--random-shape gpt2-xl --device cuda --dtype float32 --num 30 --rounds 3)
    gpu_args=()
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; uptime; } | tee "$out/machine.txt"
timeout 150 "$python" scripts/bench_eval.py "${eval_args[@]}" --skip-loop 2>&1 | tee "$out/bench_eval.log" || echo "bench_eval.py failed (exit $?)"
OUT="$out" timeout 420 bash scripts/bench_gpu.sh "${gpu_args[@]}" 2>&1 | tee "$out/bench_gpu.log"
