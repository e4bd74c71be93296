#!/usr/bin/env bash
# The device calls session 19 left (reports/kernels/RESULTS.md, "Session 19"), in parts that each fit
# one call (SKIP lists the parts to leave out):
# 1. the 3B step paired, 4 arms: residual and mHC, fp32 (`auto`) and bf16 stream, with the MoE's
#    "gather" shuffle (the default since session 19). Each process now keeps every step's time
#    (`step_times_s`): does mHC's bf16-stream slow mode (242-248 against 215-218 ms) hit whole
#    processes or single steps?
# 2. mHC on a bf16 stream profiled PROFILE_REPEATS times (default 3), each process with the host's
#    CUDA API time (profile.host_api: launches, synchronising waits) and the whole kernel table: is the
#    GPU idle because the host's launches fall behind? A slow-mode process should show it; the
#    residual on a bf16 stream profiled once as the baseline.
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> SKIP="2" bash benchmarks/run_bf16_slow_mode.sh
# Times (runs 83-86): ~65 s per bench process; part 1 = 4 arms x TRAIN_ROUNDS (2) = 8 processes,
# part 2 ~130 s per process. Knobs: CONFIG, SEQ (4096), TRAIN_ROUNDS, TRAIN_TIMEOUT, PROFILE_REPEATS.
source benchmarks/device_common.sh
# where the process may land: a per-process slow mode could be the host's placement (NUMA node, cores)
{ lscpu | grep -iE "model name|^cpu\(s\)|numa|thread"; nvidia-smi topo -m; } > "$OUT/machine_topo.txt" 2>&1
if ! skip 1; then
  bf16="model.residual.stream_dtype=bfloat16"
  timeout -k 10 "${TRAIN_TIMEOUT:-580}" python3 benchmarks/ab_train.py --config "${CONFIG:-experiments/3b/base.yaml}" \
    --compile --rounds "${TRAIN_ROUNDS:-2}" --steps 12 --warmup 4 --seq-len "${SEQ:-4096}" --timeout 150 \
    --out "$OUT/ab_stream_gather.json" \
    --arm residual residual --arm mhc mhc --arm residual_bf16 residual "$bf16" --arm mhc_bf16 mhc "$bf16" \
    2>&1 | grep -v USDT | tee "$OUT/ab_stream_gather.log" | tail -6
  echo "ab_train: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
fi
profile_bf16() {  # VARIANT TAG: one profiled bench process on a bf16 stream
  VARIANTS=$1 SETS="model.residual.stream_dtype=bfloat16" TAG=$2 PER_VARIANT_TIMEOUT=130 STEPS=12 WARMUP=4 \
    bash benchmarks/run_train_profile.sh | grep '"profiled_steps"'
}
if ! skip 2; then
  for i in $(seq "${PROFILE_REPEATS:-3}"); do profile_bf16 mhc "_bf16_$i"; done
  profile_bf16 residual _bf16
fi
