#!/usr/bin/env bash
# The device calls session 17 left (reports/kernels/RESULTS.md, "Session 17"), one script, in parts:
# 1. the GPU tests at this commit (kernels, residual, model, the eval engine);
# 2. the stream expansion inside the first block against the old layout (*_expout): ab_stack.py at
#    C = 2048 and 4096, then profile_stack.py at 2048 tracing the eager copy (direct_copy);
# 3. the 3B training step, fp32 against bf16 stream, residual and mHC, paired (ab_train.py).
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> SKIP="3" bash benchmarks/run_expand_stream_ab.sh
# Parts 1 and 2 each fit one call (run 79: 206 s; run 78: 144 s). Part 3 does not at 3 rounds: each bench
# process takes 60-105 s (compile included), so its 4 arms x 3 rounds need ~900 s; run 80 got 1.5 rounds.
# Knobs: SKIP (space-separated parts), ROUNDS (ab_stack, 12), TRAIN_ROUNDS (ab_train, 3).
# `timeout -k 10`: Lightning catches a plain SIGTERM and can keep the process alive past its timeout.
source benchmarks/device_common.sh
if ! skip 1; then gpu_tests 300; fi
if ! skip 2; then
  V="residual mhc_fused_linked_fnorm mhc_fused_linked_fnorm_expout"
  timeout -k 10 280 python3 benchmarks/ab_stack.py --C 2048 4096 --rounds "${ROUNDS:-12}" --variants $V \
    --out "$OUT/ab_expand.json" 2>&1 | grep -v USDT > "$OUT/ab_expand.log"
  echo "ab_stack: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"; grep -E "^C =|  (residual|mhc)" "$OUT/ab_expand.log"
  timeout -k 10 150 python3 benchmarks/profile_stack.py --C 2048 --top 12 --variants $V --trace direct_copy \
    --out "$OUT/profile_expand.json" 2>&1 | grep -v USDT > "$OUT/profile_expand.log"
  echo "profile_stack: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
fi
if ! skip 3; then
  timeout -k 10 560 python3 benchmarks/ab_train.py --config experiments/3b/base.yaml --compile \
    --rounds "${TRAIN_ROUNDS:-3}" --steps 12 --warmup 4 --timeout 150 --out "$OUT/ab_train_3b.json" \
    --arm residual residual --arm mhc mhc \
    --arm residual_bf16 residual model.residual.stream_dtype=bfloat16 \
    --arm mhc_bf16 mhc model.residual.stream_dtype=bfloat16 2>&1 | grep -v USDT | tee "$OUT/ab_train_3b.log" | tail -6
  echo "ab_train: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
fi
