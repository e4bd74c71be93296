"""Where the fused mHC stack's extra step time goes, in situ: from ``profile_stack.py`` records.

``plot_time_budget.py`` works from kernels timed alone; this works from whole profiled steps of the
benchmark's compiled stacks (residual and fused mHC, same inputs). Per width: each mHC kernel's time
per step, the change of every other category against the residual (Inductor's is negative: the
residual's RMSNorm and add that mHC's fused ops replace), the GPU idle change, their sum (the profiled
wall-time difference), and the issue's target allowance, (target − 1) × the residual's profiled wall.

    python reports/kernels/plot_step_overhead.py OUT.png PROFILE.json [PROFILE.json ...] [--variant V]

prints the same figures as a table. Each PROFILE.json must hold a "residual" run and the variant's
(default ``mhc_fused_linked_fnorm``) at the same C; every such C becomes one panel.
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

BASE = "residual"
OTHER_CATEGORIES = ("inductor", "gemm", "attention", "memory", "other")


def overhead(base: dict, run: dict) -> dict:
    """µs per step of the variant over the residual: mHC kernels by name, the other categories' and
    idle's differences, the wall difference and the target allowance (None without a target)."""
    parts = [(name, k["us"]) for name, k in run["kernels"].items() if k["category"] == "mhc"]
    parts.sort(key=lambda p: -p[1])
    for cat in OTHER_CATEGORIES:
        parts.append((f"{cat} (Δ)", run["categories"].get(cat, 0.0) - base["categories"].get(cat, 0.0)))
    parts.append(("GPU idle (Δ)", run["idle_us"] - base["idle_us"]))
    wall = run["wall_us"] - base["wall_us"]
    c = run["C"]
    allowance = (TARGETS[c] - 1) * base["wall_us"] if c in TARGETS else None
    return dict(C=c, blocks=run["blocks"], parts=parts, wall_us=wall, allowance_us=allowance,
                ratio=run["wall_us"] / base["wall_us"], base_wall_us=base["wall_us"])


def collect(paths: list[str], variant: str) -> list[dict]:
    """One overhead() per width found in the records (a later record wins for the same C)."""
    by_c = {}
    for path in paths:
        rec = json.load(open(path))
        runs = {(r["variant"], r["C"]): r for r in rec["runs"]}
        for (v, c), run in runs.items():
            if v == variant and (BASE, c) in runs:
                by_c[c] = dict(overhead(runs[(BASE, c)], run), source=path, commit=rec.get("commit", "?"))
    if not by_c:
        sys.exit(f"no C with both {BASE!r} and {variant!r} runs in {', '.join(paths)}")
    return [by_c[c] for c in sorted(by_c)]


def table(ov: dict) -> str:
    lines = [f"C = {ov['C']} ({ov['blocks']} blocks, {2 * ov['blocks']} sub-layers; {ov['source']}, commit "
             f"{ov['commit']}): profiled wall {ov['base_wall_us'] / 1e3:.2f} ms residual, x{ov['ratio']:.3f}"]
    for name, us in ov["parts"]:
        lines.append(f"  {name:40s} {us:+9.1f} µs/step")
    lines.append(f"  {'= wall difference':40s} {ov['wall_us']:+9.1f} µs/step "
                 f"(sum of the rows {sum(us for _, us in ov['parts']):+.1f})")
    if ov["allowance_us"] is not None:
        lines.append(f"  {'target allowance':40s} {ov['allowance_us']:9.1f} µs/step "
                     f"(x{TARGETS[ov['C']]:.2f}); over by {ov['wall_us'] - ov['allowance_us']:+.1f}")
    return "\n".join(lines)


def plot(ovs: list[dict], out: str) -> None:
    fig, axes = plt.subplots(1, len(ovs), figsize=(6.5 * len(ovs), 4.8), squeeze=False)
    for ax, ov in zip(axes[0], ovs):
        names = [n for n, _ in ov["parts"]] + ["wall difference"]
        vals = [us / 1e3 for _, us in ov["parts"]] + [ov["wall_us"] / 1e3]
        colors = ["tab:red" if not n.endswith("(Δ)") else "tab:gray" for n, _ in ov["parts"]] + ["black"]
        y = range(len(names))
        ax.barh(list(y), vals, color=colors)
        ax.set_yticks(list(y), names, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.6)
        if ov["allowance_us"] is not None:
            ax.axvline(ov["allowance_us"] / 1e3, color="tab:green", ls="--",
                       label=f"target x{TARGETS[ov['C']]:.2f} allows {ov['allowance_us'] / 1e3:.2f} ms")
            ax.legend(loc="center right", fontsize=8)
        ax.set_xlabel("ms per step, fused mHC minus residual")
        ax.set_title(f"C = {ov['C']}: x{ov['ratio']:.3f} (profiled; commit {ov['commit']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str]) -> int:
    variant = "mhc_fused_linked_fnorm"
    if "--variant" in argv:
        i = argv.index("--variant")
        variant, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    if len(argv) < 2:
        print(__doc__.split("\n\n")[2].strip())
        return 2
    out, paths = argv[0], argv[1:]
    ovs = collect(paths, variant)
    for ov in ovs:
        print(table(ov))
    plot(ovs, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
