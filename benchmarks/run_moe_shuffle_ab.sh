#!/usr/bin/env bash
# The device calls session 18 left (reports/kernels/RESULTS.md, "Session 18"), one script, in parts that
# each fit one call (SKIP lists the parts to leave out):
# 1. the GPU tests at this commit (kernels, residual, model, the eval engine): the strided-g
#    post_res_bwd (cd5cdc1) and the MoE shuffle (b28164c) have had only part of them on CUDA;
# 2. the 3B training step with MoEConfig.shuffle "gather" against "index_add", paired (ab_train.py),
#    for the variant(s) in VARIANTS (default "residual"; a second call with VARIANTS=mhc);
# 3. the 3B step on a bf16 stream, profiled (residual, mHC): why it is 7-8 % slower than the fp32
#    stream (run 80); compare with run 77's fp32-stream profile.
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> SKIP="2 3" bash benchmarks/run_moe_shuffle_ab.sh
# Times: part 1 ~210 s (run 79); part 2 ~65-105 s per bench process, 2 arms x TRAIN_ROUNDS (3) = 6;
# part 3 ~130 s per variant.
# Knobs of part 2: CONFIG (experiments/3b/base.yaml); ARM_SETS, overrides for both arms, e.g.
# "model.residual.stream_dtype=bfloat16" (TAG then tells the files apart); AB_ARGS, more ab_train.py
# arguments (last wins). Part 3 takes run_train_profile.sh's knobs.
# `timeout -k 10`: Lightning catches a plain SIGTERM and can keep the process alive past its timeout.
source benchmarks/device_common.sh
if ! skip 1; then gpu_tests 300; fi
if ! skip 2; then
  for v in ${VARIANTS:-residual}; do
    timeout -k 10 "${TRAIN_TIMEOUT:-540}" python3 benchmarks/ab_train.py --config "${CONFIG:-experiments/3b/base.yaml}" --compile \
      --rounds "${TRAIN_ROUNDS:-3}" --steps 12 --warmup 4 --timeout 150 --out "$OUT/ab_shuffle_$v${TAG:-}.json" \
      --arm "$v" "$v" ${ARM_SETS:-} --arm "${v}_gather" "$v" model.moe.shuffle=gather ${ARM_SETS:-} ${AB_ARGS:-} 2>&1 | grep -v USDT \
      | tee "$OUT/ab_shuffle_$v${TAG:-}.log" | tail -4
    echo "ab_train $v: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
  done
fi
if ! skip 3; then
  SETS="model.residual.stream_dtype=bfloat16" TAG=_bf16 PER_VARIANT_TIMEOUT=130 STEPS=12 WARMUP=4 \
    bash benchmarks/run_train_profile.sh
fi
