#!/usr/bin/env bash
# The GPU runbook, on any one-GPU machine with the Hugging Face cache (bf16 autocast, fused AdamW, SDPA):
#   1. the whole gpt2 lab: the four notebooks on GPT-2, codeparrot-clean and wikitext-2, graded;
#   2. the whole tiny lab (base pre-training, CPT, study), graded;
#   3. the fused lm_head + cross-entropy's gradients, eager and compiled, against the plain path;
#   4. tokens/s and model-FLOPs utilisation of the CPT loop on a GPT-2 124M-shaped model against a
#      default transformers.Trainer (random weights: speed does not depend on the values);
#   5. OUT/gpu.json and OUT/gpu.md: one record with the device and the date (benchmarks/gpu_report.py).
# Uses the machine's own torch. Missing pure-Python packages can be carried as wheels in .whl/.
#   benchmarks/gpu.sh            run it (on a machine with a GPU)
#   benchmarks/gpu.sh --dry-run  print what it would run and exit (any machine)
set -euo pipefail
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/gpu-out}

run() {  # run a step, or with --dry-run only say it
  if [ "$DRY" = 1 ]; then printf '  %s\n' "$*"; else eval "$@"; fi
}

if [ "$DRY" = 1 ]; then
  echo "benchmarks/gpu.sh would run, writing into $OUT:"
else
  mkdir -p "$OUT"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CPTLAB_CACHE=${CPTLAB_CACHE:-/tmp/cptlab-cache} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
run "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee '$OUT/gpu.txt'"
run "python3 -c \"import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())\" | tee -a '$OUT/gpu.txt'"

echo "== the gpt2 lab: four notebooks from the Hugging Face cache, graded"
run "python3 benchmarks/gpu_report.py lab gpt2 '$OUT' 2>&1 | tail -40 | tee '$OUT/gpt2_lab.txt' || true"

echo "== the tiny lab on the GPU, graded"
run "python3 benchmarks/gpu_report.py lab tiny '$OUT' 2>&1 | tail -40 | tee '$OUT/tiny_lab.txt' || true"

echo "== fused loss: eager and compiled gradients against the plain path"
run "python3 benchmarks/check_fused_compile.py cuda 2>&1 | grep 'amp=' | tee '$OUT/fused_compile.txt' || true"

echo "== CPT loop throughput, GPT-2 124M shape"
run "python3 benchmarks/gpu_throughput.py | tee '$OUT/throughput.txt' || true"

echo "== the record: gpu.json and gpu.md"
run "python3 benchmarks/gpu_report.py report '$OUT'"
