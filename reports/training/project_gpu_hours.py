"""Projected H200 GPU-hours for the full Table 5 training budgets, from a measured bench JSON.

    PYTHONPATH=. python reports/training/project_gpu_hours.py reports/training/h200_3b_compile/h200_3b_compile.json \
        > reports/training/projection.md

(the command of the committed projection.md; h200_3b_compile.json is the three per-variant JSONs of that
directory merged, see reports/training/README.md).

Assumptions (stated in the output): the measured single-GPU tokens/s of the 3B preset is the per-GPU
rate at scale (perfect data-parallel scaling, no communication cost); 9B/27B run at the 3B's measured
MFU, so their tokens/s is the 3B's scaled by the ratio of FLOPs per token (6 N_active + attention).
"""

from __future__ import annotations

import json
import sys

from mhc_repro.model.params import count_params
from mhc_repro.presets import get_preset, with_variant
from mhc_repro.training.module import flops_per_token

# Table 5: (preset, global batch in sequences, steps); tokens = batch x 4096 x steps
BUDGETS = [("3b", 320, 30000), ("9b", 512, 50000), ("27b", 1280, 50000), ("3b-1t", 2560, 100000)]
SEQ = 4096
DENSE_BF16_H200 = 989.4e12  # datasheet dense bf16 (the bench JSON of commit 86a43d2 lacks the peak: Lightning
                            # 2.6 does not recognise the name "NVIDIA H200")


def main(path: str) -> None:
    rep = json.load(open(path))
    ok = {r["variant"]: r for r in rep["results"] if "tokens_per_sec" in r}
    print(f"# Projected GPU-hours for the Table 5 budgets\n\nSource: `{path}` (commit {rep['git_commit']}, "
          f"{rep['device']}, torch {rep['torch']}). Per-GPU rate = the measured single-H200 3B tokens/s; "
          "9B/27B scaled by FLOPs per token at the 3B's measured MFU; perfect scaling assumed, so these are "
          "lower bounds for a multi-node run.\n")
    print("| preset | tokens | FLOPs/token | variant | tokens/s/GPU | MFU | GPU-hours |")
    print("|---|---|---|---|---|---|---|")
    base_fpt = None
    missing = [v for v in ("residual", "hc", "mhc") if v not in ok]
    for preset, batch, steps in BUDGETS:
        tokens = batch * SEQ * steps
        for variant in ("residual", "hc", "mhc"):
            if variant not in ok:
                continue
            r = ok[variant]
            cfg = with_variant(get_preset(preset), variant)
            fpt = flops_per_token(cfg, count_params(cfg)["active"], SEQ)
            base_fpt = r["flops_per_token"]
            tok_s = r["tokens_per_sec"] * base_fpt / fpt
            hours = tokens / tok_s / 3600
            mfu_v = r.get("mfu") or r["flops_per_token"] * r["tokens_per_sec"] / DENSE_BF16_H200
            mfu = f"{mfu_v:.3f}"
            print(f"| {preset} | {tokens / 1e9:.1f}B | {fpt / 1e9:.2f}G | {variant} | {tok_s:,.0f} | {mfu} | {hours:,.0f} |")
    if missing:
        print(f"\nNot measured on the GPU (no projection): {', '.join(missing)}.")


if __name__ == "__main__":
    main(sys.argv[1])
