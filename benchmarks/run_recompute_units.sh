#!/usr/bin/env bash
# residual.recompute_blocks (PAPER.md §5's recompute unit of L_r layers) on the GPU, in parts:
# 1. its GPU test (tests/model/test_lm_gpu.py: units of two blocks compiled by Inductor against no
#    recomputation) and the MoE's (its grouped dispatch and shuffles, the LM's bf16 steps);
# 2. the training step (mhc_repro.training.bench, compiled, one process per arm) of PRESET's experiment
#    config under "stream-ops" with units of 1 block and of UNITS blocks ("auto": the paper's L_r), and
#    with the recipe's full activation checkpointing: peak memory and step time of each.
# Usage (on the GPU machine, repo root): GIT_COMMIT=<sha> OUT=<dir> bash benchmarks/run_recompute_units.sh
# Knobs: SKIP, PRESET (3b), UNITS ("1 auto"), STEPS (8), WARMUP (3), MICRO_BATCH (2), SEQ (4096),
# ARM_TIMEOUT (200 s), FULL_AC (1: also the full-checkpointing arm).
source benchmarks/device_common.sh
if ! skip 1; then
  timeout -k 10 "${TEST_TIMEOUT:-150}" python3 -m pytest -q -rfEs -m gpu tests/model/test_lm_gpu.py \
    tests/model/test_moe_dispatch.py tests/model/test_moe_shuffle.py -k "recompute_units or moe or tiny" 2>&1 \
    | grep -v USDT > "$OUT/units_gpu_tests.log"
  echo "units gpu tests: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"; tail -2 "$OUT/units_gpu_tests.log"
fi
if ! skip 2; then
  preset=${PRESET:-3b}
  bench() {  # bench NAME [--set ...]: one compiled training-bench process
    local name=$1; shift
    timeout -k 10 "${ARM_TIMEOUT:-200}" python3 -m mhc_repro.training.bench --config "experiments/$preset/base.yaml" \
      --variants mhc --compile --steps "${STEPS:-8}" --warmup "${WARMUP:-3}" --micro-batch "${MICRO_BATCH:-2}" \
      --seq-len "${SEQ:-4096}" --final-pass false --out "$OUT/units_${preset}_$name.json" "$@" 2>&1 \
      | grep -v USDT > "$OUT/units_${preset}_$name.log"
    echo "$name: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][0]; print(sys.argv[2], \
'step %.1f ms' % (1e3 * r['step_time_s_median']), 'peak %s GiB allocated' % r.get('peak_mem_allocated_gib'))" \
      "$OUT/units_${preset}_$name.json" "$name" 2>&1 | tee -a "$OUT/units_summary.txt"
  }
  for u in ${UNITS:-1 auto}; do
    bench "stream-ops_units$u" --activation-checkpointing false --set model.residual.recompute=stream-ops \
      --set "model.residual.recompute_blocks=$u"
  done
  [ "${FULL_AC:-1}" = 1 ] && bench full_ac --activation-checkpointing true
fi
