#!/usr/bin/env bash
# The cross-layer handoff (kernels/cross_layer.py) in the benchmark stack, on the GPU, in parts:
# 1. its GPU tests (tests/kernels/test_cross_layer.py: the Gluon chain and the Triton pair against
#    the plain chain, float64 references; tests/model/test_lm_gpu.py: residual.proj_handoff in the LM);
# 2. the stack (ab_stack.py, compiled): the default fused stack against the same stack with the
#    handoff (the Gluon kernel: *_xl; the Triton pair: *_xlpair), plus the residual for the targets.
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> SKIP="1" bash benchmarks/run_cross_layer_ab.sh
# Knobs: SKIP, TEST_TIMEOUT (120 s), STACK_C ("2048"), ROUNDS (9), SLOT_WARMUP (4), STACK_TIMEOUT (420 s),
# VARIANTS (residual mhc_fused_linked_fnorm mhc_fused_linked_fnorm_xl mhc_fused_linked_fnorm_xlpair).
source benchmarks/device_common.sh
if ! skip 1; then
  timeout -k 10 "${TEST_TIMEOUT:-120}" python3 -m pytest -q -rfEs -m gpu tests/kernels/test_cross_layer.py \
    tests/model/test_lm_gpu.py -k "cross_layer or proj_handoff" 2>&1 \
    | grep -v USDT > "$OUT/xl_gpu_tests.log"
  echo "xl gpu tests: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"; tail -2 "$OUT/xl_gpu_tests.log"
fi
if ! skip 2; then
  variants=${VARIANTS:-residual mhc_fused_linked_fnorm mhc_fused_linked_fnorm_xl mhc_fused_linked_fnorm_xlpair}
  tag=$(echo ${STACK_C:-2048} | tr ' ' '_')
  timeout -k 10 "${STACK_TIMEOUT:-420}" python3 benchmarks/ab_stack.py --C ${STACK_C:-2048} --rounds "${ROUNDS:-9}" \
    --variants $variants --slot-warmup "${SLOT_WARMUP:-4}" --commit "$GIT_COMMIT" --out "$OUT/ab_xl_$tag.json" 2>&1 \
    | grep -v USDT > "$OUT/ab_xl_$tag.log"
  echo "ab_stack: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"; grep -E "^C =|  (residual|mhc)" "$OUT/ab_xl_$tag.log"
  python3 benchmarks/ab_stack.py --summarize "$OUT/ab_xl_$tag.json" --base mhc_fused_linked_fnorm 2>&1 \
    | tee "$OUT/ab_xl_${tag}_vs_linked.txt"
fi
