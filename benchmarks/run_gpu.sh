#!/usr/bin/env bash
# One device call: GPU parity tests for the fused mHC kernels, then the stack benchmark.
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> bash benchmarks/run_gpu.sh [bench args...]
# Optional: AB_C="2048 4096" (+ AB_VARIANTS, AB_ARGS) also runs ab_stack.py (interleaved A/B, 95 % intervals);
# PROFILE_C="2048" (+ PROFILE_VARIANTS) also runs profile_stack.py (every kernel of whole steps);
# GRID_OP=_PRE_NORM_BWD GRID="PRE_NORM_BWD_STAGES=[0,3]" (+ GRID_C) runs sweep_grid.py after the tests (specs
# without spaces, several separated by spaces).
# The device's copy of the repository may carry stale git metadata: pass GIT_COMMIT by hand.
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
# Default: every GPU-marked test whose imports the device image has (tests/evaluation's other modules
# need lm-eval / mlflow, which it lacks). A missing path or a collection error is reported, not skipped.
timeout ${TEST_TIMEOUT:-300} python3 -m pytest -q -m gpu \
  ${TEST_PATHS:-tests/kernels tests/residual tests/model tests/evaluation/test_engine_gpu.py} 2>&1 | tee "$OUT/gpu_tests.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || echo "GPU TESTS: pytest exit status $rc (124 = TEST_TIMEOUT ran out); see gpu_tests.log" | tee -a "$OUT/gpu_tests.log"
if [ -n "${GRID_OP:-}" ]; then
  python3 benchmarks/sweep_grid.py --C ${GRID_C:-2048 4096} --op "$GRID_OP" --grid ${GRID:-} --out "$OUT/grid.json" 2>&1 \
    | tee "$OUT/grid.log" | grep -E "best|error"
fi
python3 benchmarks/bench_mhc.py --commit "${GIT_COMMIT:-unknown}" --out "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
# Loss curves, fused vs reference, in fp32 / bf16-mixed / bf16-true (set PARITY_STEPS=0 to skip).
if [ "${PARITY_STEPS:-300}" -gt 0 ]; then
  python3 benchmarks/train_parity.py --steps "${PARITY_STEPS:-300}" --dtypes ${PARITY_DTYPES:-fp32 bf16-mixed bf16-true} \
    --d-model 256 --blocks 4 --seq 128 --batch 16 --vocab 256 --lr 2e-3 ${PARITY_ARGS:-} --out "$OUT/train_parity.json" 2>&1 | tee "$OUT/train_parity.log"
fi
if [ -n "${AB_C:-}" ]; then
  python3 benchmarks/ab_stack.py --commit "${GIT_COMMIT:-unknown}" --C $AB_C \
    --variants ${AB_VARIANTS:-residual mhc_fused_linked mhc_fused_linked_rcops} ${AB_ARGS:-} --out "$OUT/ab.json" 2>&1 | tee "$OUT/ab.log"
fi
if [ -n "${PROFILE_C:-}" ]; then
  python3 benchmarks/profile_stack.py --commit "${GIT_COMMIT:-unknown}" --C $PROFILE_C \
    --variants ${PROFILE_VARIANTS:-residual mhc_fused_linked} --out "$OUT/profile.json" 2>&1 | grep -v USDT | tee "$OUT/profile.log"
fi
