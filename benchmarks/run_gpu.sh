#!/usr/bin/env bash
# One device call: GPU parity tests for the fused mHC kernels, then the stack benchmark.
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> bash benchmarks/run_gpu.sh [bench args...]
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
timeout 150 python3 -m pytest -q -m gpu tests/kernels 2>&1 | tee "$OUT/gpu_tests.log"
python3 benchmarks/bench_mhc.py --commit "${GIT_COMMIT:-unknown}" --out "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
