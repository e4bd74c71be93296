"""Step time against peak memory of the fused mHC stack's recompute policies, both × the compiled
residual, with the issue's targets as lines: the trade-off a user picks ``residual.recompute`` by.

Step-time ratios come from an ``ab_stack.py`` record (interleaved rounds, median with its 95 %
t-interval as error bars); peaks from a ``bench_mhc.py`` record of the same code (one pass; the
peak does not vary between steps). Variants present in both records are plotted, one panel per width.

    python reports/kernels/plot_tradeoff.py reports/kernels/run60_ab76b01_ab.json \
        reports/kernels/run60_ab76b01_bench.json reports/kernels/tradeoff_run60.png

prints the plotted figures as a table.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TIME_TARGETS = {2048: 1.10, 4096: 1.07}  # issue 6
PEAK_TARGET = 1.3


def points(ab: dict, bench: dict) -> dict[int, list[dict]]:
    """{C: [{variant, ratio, lo, hi, peak}]} for every variant but the residual in both records."""
    peaks = {}
    for s in bench["stack"]:
        if s.get("mode") == "compiled" and "peak_gb" in s:
            peaks[(s["C"], s["variant"])] = s["peak_gb"]
    out: dict[int, list[dict]] = {}
    for run in ab["runs"]:
        c = run["C"]
        base = peaks.get((c, "residual"))
        if base is None:
            continue
        for variant, summ in run["summary"].items():
            if variant == "residual" or (c, variant) not in peaks:
                continue
            lo, hi = summ["ratio_ci95"]
            out.setdefault(c, []).append(dict(variant=variant, ratio=summ["ratio_median"], lo=lo, hi=hi,
                                              peak=peaks[(c, variant)] / base))
    return out


def main(ab_path: str, bench_path: str, dst: str) -> None:
    ab, bench = json.load(open(ab_path)), json.load(open(bench_path))
    pts = points(ab, bench)
    if not pts:
        raise SystemExit(f"{ab_path} and {bench_path} share no width with a residual and an mHC variant")
    print(f"{ab_path} (step time) + {bench_path} (peak), × the compiled residual")
    fig, axes = plt.subplots(1, len(pts), figsize=(5.2 * len(pts), 4.2), squeeze=False)
    for ax, (c, rows) in zip(axes[0], sorted(pts.items())):
        for i, p in enumerate(rows):
            print(f"  C = {c:5d} {p['variant']:34s} step {p['ratio']:.3f}× ({p['lo']:.3f}–{p['hi']:.3f})  "
                  f"peak {p['peak']:.3f}×")
            ax.errorbar(p["peak"], p["ratio"], yerr=[[p["ratio"] - p["lo"]], [p["hi"] - p["ratio"]]], fmt="o",
                        color=plt.get_cmap("tab10").colors[i], capsize=3, label=p["variant"])
        if c in TIME_TARGETS:
            ax.axhline(TIME_TARGETS[c], color="k", ls="--", lw=1)
            ax.text(ax.get_xlim()[0], TIME_TARGETS[c], f" step-time target {TIME_TARGETS[c]:.2f}×", va="bottom",
                    fontsize=7)
        ax.axvline(PEAK_TARGET, color="0.4", ls=":", lw=1)
        ax.text(PEAK_TARGET, ax.get_ylim()[1], f" peak target {PEAK_TARGET}×", va="top", fontsize=7, color="0.3")
        ax.set(title=f"C = {c}", xlabel="peak memory × residual", ylabel="step time × residual")
        ax.legend(fontsize=7)
    fig.suptitle(f"fused mHC recompute policies ({ab.get('device', '?')}, commit {ab.get('commit', '?')})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=130)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: plot_tradeoff.py AB_JSON BENCH_JSON OUT_PNG")
    main(*sys.argv[1:])
