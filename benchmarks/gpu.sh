#!/usr/bin/env bash
# CUDA smoke + throughput on a GPU machine (bf16 autocast, fused AdamW, SDPA):
#   1. the whole tiny lab (base pre-training, CPT, study) on the GPU, then grading;
#   2. the fused lm_head + cross-entropy's gradients, eager and compiled, against the plain path;
#   3. tokens/s and model-FLOPs utilisation of the CPT loop on a GPT-2 124M-shaped model
#      (random weights: the GPU machine has no hub access; speed does not depend on the values).
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
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CPTLAB_CACHE=/tmp/cptlab-cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
run "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee '$OUT/gpu.txt'"
run "python3 -c \"import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())\" | tee -a '$OUT/gpu.txt'"

echo "== tiny lab on the GPU"
run "( time python3 -m cptlab run --preset tiny --out '$OUT/run' --plots --quiet ) 2>&1 | tail -20 | tee '$OUT/tiny.txt' || true"
run "python3 -m checkers grade '$OUT/run' --json '$OUT/grades.json' | tee '$OUT/grade.txt' || true"

echo "== fused loss: eager and compiled gradients against the plain path"
run "python3 benchmarks/check_fused_compile.py cuda 2>&1 | grep 'amp=' | tee '$OUT/fused_compile.txt' || true"

echo "== CPT loop throughput, GPT-2 124M shape"
run "python3 benchmarks/gpu_throughput.py | tee '$OUT/throughput.txt'"
