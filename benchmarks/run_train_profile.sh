#!/usr/bin/env bash
# One device call: where the 3B training step's GPU time goes, residual against mHC (the real
# LightningModule under the recipe's compile and activation checkpointing, synthetic tokens), kernel
# category by category. Its idle_us (wall minus kernel time) says whether the host or the kernels set
# mHC's step-time ratio in the training loop. The profiler itself slows the host: read idle_us only
# where the profiled wall time per step stays close to the timed steps' step_time_s_median (same JSON).
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> bash benchmarks/run_train_profile.sh
# Knobs: VARIANTS ("residual mhc"), STEPS (20), WARMUP (8), PROFILE_STEPS (3), MICRO_BATCH (2), SEQ (4096),
# CONFIG (experiments/3b/base.yaml), PER_VARIANT_TIMEOUT (200 s), SETS (space-separated config overrides
# for every variant, e.g. "model.residual.stream_dtype=bfloat16"), TAG (appended to the file names).
# `timeout -k 10`: Lightning catches a plain SIGTERM and can keep the process alive past its timeout.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
export MHC_GIT_COMMIT=${GIT_COMMIT:-unknown}  # the device's copy may carry stale git metadata
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv
  python3 -c "import torch, triton, lightning; print(torch.__version__, triton.__version__, lightning.__version__)"; } \
  2>&1 | tee "$OUT/machine.txt"
SETARGS=(); for kv in ${SETS:-}; do SETARGS+=(--set "$kv"); done
for v in ${VARIANTS:-residual mhc}; do
  timeout -k 10 "${PER_VARIANT_TIMEOUT:-200}" python3 -m mhc_repro.training.bench --config "${CONFIG:-experiments/3b/base.yaml}" \
    --variants "$v" --steps "${STEPS:-20}" --warmup "${WARMUP:-8}" --micro-batch "${MICRO_BATCH:-2}" \
    --seq-len "${SEQ:-4096}" --compile --profile-steps "${PROFILE_STEPS:-3}" "${SETARGS[@]}" \
    --out "$OUT/prof_$v${TAG:-}.json" --diag-dir /tmp/diag_"$v" 2>&1 | grep -v USDT | tee "$OUT/prof_$v${TAG:-}.log"
  echo "$v${TAG:-}: exit status ${PIPESTATUS[0]} (124/137 = timed out)" | tee -a "$OUT/status.txt"
done
