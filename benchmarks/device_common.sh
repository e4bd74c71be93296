# Sourced by the benchmarks/run_*_ab.sh device scripts (repo root, on the GPU machine): $OUT, the
# environment, skip() for the SKIP knob, the machine's facts, and gpu_tests.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
export GIT_COMMIT=${GIT_COMMIT:-unknown} MHC_GIT_COMMIT=${GIT_COMMIT:-unknown}  # stale git metadata there
skip() { [[ " ${SKIP:-} " == *" $1 "* ]]; }
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv
  python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"; } 2>&1 | tee "$OUT/machine.txt"

# The GPU tests of the kernels, the residual modules, the model and the eval engine (run 123: 293 passed
# in 386 s; run 138, a cold machine: 294 of 300 in 420 s), under `timeout -k 10`: Lightning catches a plain SIGTERM and can outlive a plain timeout.
gpu_tests() {
  timeout -k 10 "${1:-540}" python3 -m pytest -q -m gpu tests/kernels tests/residual tests/model \
    tests/evaluation/test_engine_gpu.py 2>&1 | grep -v USDT > "$OUT/gpu_tests.log"
  echo "gpu tests: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"; tail -2 "$OUT/gpu_tests.log"
}
