#!/usr/bin/env bash
# The kernels registered as triton_ops (kernels/registration.py) against custom ops, on the GPU. Since
# de265cd MHC_KERNEL_OPS=auto is the default: triton_op on CUDA, custom_op under the interpreter.
# Session 21 (runs 91-94, files lost) chose it; session 22 re-ran it at HEAD for the record (runs 95-99), in parts:
# 1. the whole GPU suite with the default registration (kernels, residual, model, eval engine);
# 2. the stack at HEAD (ab_stack.py, compiled, residual vs the default fused stack, C = 2048 and 4096):
#    issue 6's targets, with the kernels launched from Inductor's code;
# 3. the 3B step paired on a bf16 stream, 2 rounds (ab_train.py needs >= 2 for its interval; run 96
#    was refused with 1). One bench process takes ~100-125 s with its compile, so two arms fit a
#    call: ARMS=ops, mHC with custom ops vs triton_ops (run 97); ARMS=default, the residual vs mHC
#    with the default registration (run 98).
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> SKIP="2 3" bash benchmarks/run_triton_op_ab.sh
# Knobs: SKIP (space-separated parts), TEST_TIMEOUT (400 s; run 95 on a
# cold Triton cache: 235 in 330 s), STACK_C ("2048 4096"), ROUNDS (ab_stack, 8), SLOT_WARMUP (4), STACK_TIMEOUT (200 s), ARMS (default|ops),
# TRAIN_ROUNDS (2), TRAIN_STEPS (12), TRAIN_TIMEOUT (540 s; run 97 took 430 s), CONFIG, SEQ.
source benchmarks/device_common.sh
if ! skip 1; then
  gpu_tests "${TEST_TIMEOUT:-400}"
  grep -i "assuming every input is mutated\|graph break" "$OUT/gpu_tests.log" | sort | uniq -c | head -5
fi
if ! skip 2; then
  timeout -k 10 "${STACK_TIMEOUT:-200}" python3 benchmarks/ab_stack.py --C ${STACK_C:-2048 4096} --rounds "${ROUNDS:-8}" \
    --variants residual mhc_fused_linked_fnorm --slot-warmup "${SLOT_WARMUP:-4}" --out "$OUT/ab_stack_head.json" 2>&1 | grep -v USDT > "$OUT/ab_stack_head.log"
  echo "ab_stack: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"; grep -E "^C =|  (residual|mhc)" "$OUT/ab_stack_head.log"
fi
if ! skip 3; then
  bf16="model.residual.stream_dtype=bfloat16"
  [[ "${ARMS:-default}" == default || "$ARMS" == ops ]] || { echo "ARMS=$ARMS is unknown; allowed: default, ops" >&2; exit 2; }
  if [[ "${ARMS:-default}" == ops ]]; then
    arms=(--arm mhc_bf16_custom_op mhc "$bf16" env:MHC_KERNEL_OPS=custom_op
          --arm mhc_bf16_triton_op mhc "$bf16" env:MHC_KERNEL_OPS=triton_op)
  else
    arms=(--arm residual_bf16 residual "$bf16" --arm mhc_bf16_auto mhc "$bf16")
  fi
  timeout -k 10 "${TRAIN_TIMEOUT:-540}" python3 benchmarks/ab_train.py --config "${CONFIG:-experiments/3b/base.yaml}" \
    --compile --rounds "${TRAIN_ROUNDS:-2}" --steps "${TRAIN_STEPS:-12}" --warmup 4 --seq-len "${SEQ:-4096}" --timeout 170 \
    --out "$OUT/ab_${ARMS:-default}.json" "${arms[@]}" 2>&1 | grep -v USDT | tee "$OUT/ab_${ARMS:-default}.log" | tail -8
  echo "ab_train: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
fi
