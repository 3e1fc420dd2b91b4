#!/usr/bin/env bash
# The device path end to end on a fresh GPU machine, in one command from the repository root:
#
#     bash experiments/gpu/run.sh            # results in ${OUT:-/tmp/fl-userdp-gpu}
#
# Install: none — the machine's own python3 with its torch, transformers and peft runs the repository in
# place (PYTHONPATH); the benchmark needs nothing else of the package's dependencies. Assets: none — the
# machine reaches no model hub, so the benchmark builds SmolLM2-135M's architecture
# (experiments/gpu/smollm2-135m-config.json) with random weights: a step's FLOPs and memory traffic are
# the same. Then: the fraction of the device's measured bf16 matmul throughput reached by ELS, ULS and a
# plain step (experiments/bench_gpu.py), and the CUDA tests of the clipped sums when pytest is there.
# About 3–5 minutes on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/fl-userdp-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
PY=${PYTHON:-python3}
{
  date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__, 'peft', peft.__version__)"
  for batch in 64 256; do
    $PY experiments/bench_gpu.py --model shape:experiments/gpu/smollm2-135m-config.json --device cuda \
        --autocast bf16 --batch $batch --seq-len 128 --rank 8 --reps 5 --warmup 2
  done
  $PY experiments/bench_gpu.py --model shape:experiments/gpu/smollm2-135m-config.json --device cuda \
      --autocast none --batch 64 --seq-len 128 --rank 8 --reps 5 --warmup 2
  if $PY -c "import pytest" 2>/dev/null; then
    $PY -m pytest -q -p no:cacheprovider tests/local/test_devices.py || echo "device tests: exit $?"
  fi
  date
} 2>&1 | tee "$OUT/gpu-bench.log"
