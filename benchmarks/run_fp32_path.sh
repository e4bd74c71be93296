#!/usr/bin/env bash
# One device call: the fp32-stream path the model takes under bf16-mixed (session 16's fixes).
# 1. CUDA parity of the kernels whose tiles differ by stream dtype (launch._PRB_FP32 among them);
# 2. the 3B training step, residual and mHC (the recipe's compile and checkpointing; no profiler);
# 3. the per-kernel table and tile sweep on an fp32 stream at the 3B shape (C = 1280, 8k tokens).
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> bash benchmarks/run_fp32_path.sh
# Knobs: SKIP (space-separated step numbers to skip), STEPS (30), SWEEP_ONLY (SWEEP entries; all if empty).
# `timeout -k 10`: Lightning catches a plain SIGTERM and can keep the process alive past its timeout.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
export MHC_GIT_COMMIT=${GIT_COMMIT:-unknown}  # the device's copy may carry stale git metadata
skip() { [[ " ${SKIP:-} " == *" $1 "* ]]; }
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv
  python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
if ! skip 1; then
  timeout -k 10 150 python3 -m pytest -q -m gpu tests/kernels/test_fused_parity.py tests/kernels/test_kernel_variants.py \
    tests/kernels/test_fused_compile.py 2>&1 | grep -v USDT | tee "$OUT/gpu_tests.log" | tail -3
  echo "gpu tests: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
fi
if ! skip 2; then
  timeout -k 10 260 python3 -m mhc_repro.training.bench --config experiments/3b/base.yaml --variants residual mhc \
    --steps "${STEPS:-30}" --warmup 8 --micro-batch 2 --seq-len 4096 --compile --out "$OUT/train_3b.json" \
    --diag-dir /tmp/diag_fp32 2>&1 | grep -v USDT > "$OUT/train_3b.log"
  echo "train bench: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
  grep -h '"step_time_s_median"' "$OUT/train_3b.log" | cut -c1-240
fi
if ! skip 3; then
  timeout -k 10 170 python3 benchmarks/bench_mhc.py --commit "${GIT_COMMIT:-unknown}" --C 1280 --tokens 8192 \
    --modes compiled --iters 3 --variants residual --kernel-stream-dtype float32 --sweep \
    ${SWEEP_ONLY:+--sweep-only $SWEEP_ONLY} --out "$OUT/sweep_fp32.json" > "$OUT/sweep_fp32.log" 2>&1
  echo "fp32 sweep: exit status $?" | tee -a "$OUT/status.txt"
  grep -E "chosen|GB/s of copy" -A24 "$OUT/sweep_fp32.log" | grep -v "ref:" | cut -c1-110
fi
