#!/usr/bin/env bash
# One device call: GPU parity tests for the fused mHC kernels, then the stack benchmark.
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> bash benchmarks/run_gpu.sh [bench args...]
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
# Optional extra for the hc_pkg variant: wheels in .whl/ (hyper-connections + einops, torch-einops-utils;
# carried to the offline GPU machine), installed beside the image's torch without touching it.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
timeout ${TEST_TIMEOUT:-300} python3 -m pytest -q -m gpu ${TEST_PATHS:-tests/kernels} 2>&1 | tee "$OUT/gpu_tests.log"
python3 benchmarks/bench_mhc.py --commit "${GIT_COMMIT:-unknown}" --out "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
# Loss curves, fused vs reference, in fp32 / bf16-mixed / bf16-true (set PARITY_STEPS=0 to skip).
if [ "${PARITY_STEPS:-300}" -gt 0 ]; then
  python3 benchmarks/train_parity.py --steps "${PARITY_STEPS:-300}" --dtypes ${PARITY_DTYPES:-fp32 bf16-mixed bf16-true} \
    --d-model 256 --blocks 4 --seq 128 --batch 16 --vocab 256 --lr 2e-3 ${PARITY_ARGS:-} --out "$OUT/train_parity.json" 2>&1 | tee "$OUT/train_parity.log"
fi
