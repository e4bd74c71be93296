"""How mHC's step-time overhead falls with the model width, from one ab_stack.py record.

The fused kernels move bytes in proportion to N·C per sub-layer, while the block's own time grows
faster than C (its GEMMs go as N·C², attention at a fixed sequence length as N·C). So the overhead
r − 1 of the stack ratio r should behave like 1 / (a·C + b): this script fits 1/(r − 1) as a line in
C over the widths the record has (least squares), prints the fit beside the measurements and the width
at which the fit crosses each ratio asked for, and plots both. The fit is an extrapolation beyond the
measured widths: a guide to where a target falls, not a measurement.

    python reports/kernels/overhead_vs_width.py reports/kernels/run65_33f0dd9_ab.json \
        reports/kernels/overhead_vs_width_run65.png [--variant mhc_fused_linked_fnorm] [--at 5120 8192]
"""

from __future__ import annotations

import argparse
import json


def measured(path: str, variant: str) -> list[tuple[int, float, float, float]]:
    """(C, ratio median, t-interval low, high) of ``variant`` against the record's baseline, by C."""
    rows = []
    for run in json.load(open(path))["runs"]:
        s = run["summary"].get(variant)
        if s is None:
            raise SystemExit(f"variant {variant!r} is not in {path}; it has: {', '.join(run['summary'])}")
        rows.append((run["C"], s["ratio_median"], *s["ratio_ci95"]))
    return sorted(rows)


def fit(rows) -> tuple[float, float]:
    """(a, b) of 1/(r − 1) = a·C + b, least squares over the rows."""
    xs, ys = [c for c, *_ in rows], [1.0 / (r - 1.0) for _, r, *_ in rows]
    if len(xs) < 2 or min(r for _, r, *_ in rows) <= 1.0:
        raise SystemExit("need at least two widths, each with a ratio above 1")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return a, my - a * mx


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("record", help="an ab_stack.py --out JSON with several widths")
    ap.add_argument("png", nargs="?", help="where to write the plot (optional)")
    ap.add_argument("--variant", default="mhc_fused_linked_fnorm")
    ap.add_argument("--targets", type=float, nargs="*", default=[1.10, 1.07])
    ap.add_argument("--at", type=int, nargs="*", default=[5120, 8192],
                    help="widths to print the fit's ratio at (default: Llama-2 13B and 70B)")
    args = ap.parse_args(argv)
    rows = measured(args.record, args.variant)
    a, b = fit(rows)
    ratio = lambda c: 1.0 + 1.0 / (a * c + b)  # noqa: E731
    print(f"{args.record}: {args.variant}; fit 1/(r - 1) = {a:.6g}·C + {b:.4g}")
    print(f"{'C':>6} {'measured':>9} {'95 % t':>15} {'fit':>7}")
    for c, r, lo, hi in rows:
        print(f"{c:>6} {r:>9.4f} {lo:>7.4f}–{hi:<7.4f} {ratio(c):>7.4f}")
    for t in args.targets:
        print(f"fit reaches {t:.2f}× at C ≈ {((1.0 / (t - 1.0)) - b) / a:.0f}")
    for c in args.at:
        print(f"fit at C = {c}: {ratio(c):.4f}× (extrapolated)")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cs = [c for c, *_ in rows]
        grid = list(range(min(cs) // 2, max(max(cs), *args.at) * 5 // 4, 64))
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        ax.errorbar(cs, [r for _, r, *_ in rows], yerr=[[r - lo for _, r, lo, _ in rows], [hi - r for _, r, _, hi in rows]],
                    fmt="o", capsize=3, label=f"measured ({args.variant})")
        ax.plot(grid, [ratio(c) for c in grid], "-", lw=1, label="fit: 1 + 1/(a·C + b)")
        for t in args.targets:
            ax.axhline(t, ls=":", color="grey", lw=0.8)
            ax.text(grid[-1], t, f" {t:.2f}×", va="center", fontsize=8)
        ax.set_xlabel("model width C (16k tokens per step, n = 4, bf16)")
        ax.set_ylabel("step time × compiled residual")
        ax.set_title("fused mHC overhead against width (H200)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
