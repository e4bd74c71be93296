#!/usr/bin/env bash
# Session 20's device call (run 90, at 5d100f0, when triton_op was the default; the default is
# custom_op again): the kernels registered as triton_ops (kernels/registration.py, MHC_KERNEL_OPS)
# against custom ops. The 3B step's GPU time is 1.05x the residual's on a bf16 stream but its wall
# time 0.99-1.27x (runs 85-90): the host falls behind, and most of mHC's host time is the custom
# ops' dispatch and the launchers' Python, which a triton_op leaves to Inductor's generated code.
# 1. the GPU tests of the kernels and residual modules with triton_ops (compile parity, opcheck, the
#    inline-launch test);
# 2. the 3B step paired on a bf16 stream: residual, mHC (triton_op), mHC (custom_op).
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> bash benchmarks/run_triton_op_ab.sh
# Knobs: SKIP ("1", "2"), TEST_TIMEOUT (300 s; run 90's 170 s was too short), TRAIN_ROUNDS (2),
# TRAIN_TIMEOUT (400 s), CONFIG, SEQ.
source benchmarks/device_common.sh
if ! skip 1; then
  MHC_KERNEL_OPS=triton_op timeout -k 10 "${TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu tests/kernels tests/residual 2>&1 \
    | grep -v USDT > "$OUT/gpu_tests.log"
  echo "gpu tests: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"; tail -4 "$OUT/gpu_tests.log"
  grep -i "assuming every input is mutated\|graph break" "$OUT/gpu_tests.log" | sort | uniq -c | head -5
fi
if ! skip 2; then
  bf16="model.residual.stream_dtype=bfloat16"
  timeout -k 10 "${TRAIN_TIMEOUT:-400}" python3 benchmarks/ab_train.py --config "${CONFIG:-experiments/3b/base.yaml}" \
    --compile --rounds "${TRAIN_ROUNDS:-2}" --steps 12 --warmup 4 --seq-len "${SEQ:-4096}" --timeout 150 \
    --out "$OUT/ab_triton_op.json" \
    --arm residual_bf16 residual "$bf16" --arm mhc_bf16 mhc "$bf16" env:MHC_KERNEL_OPS=triton_op \
    --arm mhc_bf16_custom_op mhc "$bf16" env:MHC_KERNEL_OPS=custom_op \
    2>&1 | grep -v USDT | tee "$OUT/ab_triton_op.log" | tail -8
  echo "ab_train: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
fi
