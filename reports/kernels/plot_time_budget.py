"""Where one mHC sub-layer's time goes, from a bench_mhc.py run with its kernel table and compiled stack.

Per kernel of the default sub-layer (linked pair, given projection precision): its measured device time
(CUDA-graph replays since run 34) beside the time its bytes take at the copy bandwidth measured in the
same run; then the stack's measured overhead per sub-layer, and the budget of the issue's target.

    python reports/kernels/plot_time_budget.py reports/kernels/run34_14b9211_bench_2048.json out.png [C]

prints the same figures as a table (C: which width of a run with several; default its first). Where the
run has the `mhc_fused_linked_fnorm` stack (the branch's RMSNorm fused into pre, the default since
session 12) and the `pre_norm` kernel rows, the sub-layer is that one.
"""

from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traffic_floor import TARGETS  # noqa: E402  (issue 6's targets, one copy)


def sublayer_kernels(precision: str = "bf16x2", fnorm: bool = False) -> list[tuple[str, str]]:
    """(label, kernel-table name) of the default linked sub-layer, forward then backward (``fnorm``:
    with the branch's RMSNorm fused into pre)."""
    return [("fwd: coefficients (projection + Sinkhorn)", f"coefficients [{precision}] (proj+sumsq, epilogue)"),
            ("fwd: pre + branch RMSNorm", "pre_norm (pre + branch RMSNorm)") if fnorm else ("fwd: pre", "pre"),
            ("fwd: post_res", "post_res"),
            ("bwd: post_res_bwd", "post_res_bwd"),
            ("bwd: pre_norm_bwd", "pre_norm_bwd (dh, dH_pre, dw)") if fnorm
            else ("bwd: pre_bwd_dh", "pre_bwd_dh (compiled path)"),
            ("bwd: Sinkhorn backward", "coef_bwd (Sinkhorn bwd recomputed)"),
            ("bwd: dx pass and dφ", f"proj_bwd linked add [{precision}] (all of dx, dφ)")]


def budget(run: dict, c: int, precision: str = "bf16x2") -> dict:
    """Per-sub-layer µs at width c: measured and copy-speed time of each kernel, the stack's overhead
    and the target's budget (None without a target or stack rows)."""
    table = {k["kernel"].strip(): k for k in run["kernels"] if k["C"] == c}
    copy = run["copy_gb_s"]
    stack = {s["variant"]: s for s in run["stack"] if s["C"] == c and s["mode"] == "compiled" and "ms" in s}
    fnorm = "mhc_fused_linked_fnorm" in stack and "pre_norm (pre + branch RMSNorm)" in table
    mhc = "mhc_fused_linked_fnorm" if fnorm else "mhc_fused_linked"
    rows = []
    for label, name in sublayer_kernels(precision, fnorm):
        k = table[name]
        us = 1e3 * k["ms"]
        rows.append((label, us, us * k["gb_s"] / copy))  # bytes / copy bandwidth
    over = target = None
    if "residual" in stack and mhc in stack:
        sub = 2 * stack["residual"]["blocks"]
        over = 1e3 * (stack[mhc]["ms"] - stack["residual"]["ms"]) / sub
        if c in TARGETS:
            target = 1e3 * (TARGETS[c] - 1) * stack["residual"]["ms"] / sub
    return dict(rows=rows, overhead_us=over, target_us=target, variant=mhc)


def main(src: str, dst: str, c: int | None = None) -> None:
    run = json.load(open(src))
    c = c or run["kernels"][0]["C"]
    b = budget(run, c)
    print(f"{src}: C = {c}, {b['variant']}, µs per sub-layer (measured | its bytes at copy speed)")
    for label, us, floor in b["rows"]:
        print(f"  {label:45s} {us:7.1f} | {floor:7.1f}")
    print(f"  {'all kernels':45s} {sum(r[1] for r in b['rows']):7.1f} | {sum(r[2] for r in b['rows']):7.1f}")
    for key, what in (("overhead_us", "stack overhead (mHC - residual)"), ("target_us", "target's budget")):
        if b[key] is not None:
            print(f"  {what:45s} {b[key]:7.1f}")
    fig, ax = plt.subplots(figsize=(10, 4.6))
    colors = plt.get_cmap("tab10").colors
    bars = [("measured kernels", 1), ("same bytes at copy speed", 2)]
    for (name, col), y in zip(bars, (2, 1)):
        left = 0.0
        for i, row in enumerate(b["rows"]):
            ax.barh(y, row[col], left=left, color=colors[i], edgecolor="white",
                    label=row[0] if y == 2 else None)
            left += row[col]
        ax.text(left + 10, y, f"{left:.0f} µs", va="center", fontsize=8)
    if b["overhead_us"] is not None:
        ax.barh(0, b["overhead_us"], color="0.6")
        ax.text(b["overhead_us"] + 10, 0, f"{b['overhead_us']:.0f} µs", va="center", fontsize=8)
    if b["target_us"] is not None:
        ax.axvline(b["target_us"], color="k", ls="--", lw=1)
        ax.text(b["target_us"], 2.55, f"{TARGETS[c]:.2f}× budget {b['target_us']:.0f} µs", ha="center", fontsize=8)
    ax.set_yticks([0, 1, 2], ["stack overhead\n(mHC − residual)", "at copy speed", "measured"])
    widest = max(sum(r[1] for r in b["rows"]), b["overhead_us"] or 0.0)
    ax.set(xlabel="µs per sub-layer", ylim=(-0.6, 2.9), xlim=(0, 1.12 * widest),
           title=f"mHC sub-layer time, C = {c}, 16k tokens ({run['device']}, commit {run['commit']})")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4)
    fig.tight_layout()
    fig.savefig(dst, dpi=130)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
