"""Plot a train_parity.json (benchmarks/train_parity.py): loss curves and |Δloss| vs the reference.

    python reports/kernels/plot_parity.py reports/kernels/run4_16e27a9_train_parity.json out.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def smooth(v: list[float], k: int = 10) -> list[float]:
    return [sum(v[max(0, i - k + 1): i + 1]) / len(v[max(0, i - k + 1): i + 1]) for i in range(len(v))]


def gap_curves(r: dict) -> list[tuple[str, list[float], str]]:
    """(label, |Δloss| per step, line style) of every gap a train_parity.json holds: fused − reference,
    bf16 noise (bf16 reference − fp32 reference) and chaos (reference from a perturbed init − reference)."""
    cur, out = r["curves"], []
    for dtype in r["args"]["dtypes"]:
        if f"{dtype}/reference" not in cur:
            continue
        ref = cur[f"{dtype}/reference"]
        for k in [k for k in cur if k.startswith(dtype + "/triton")]:
            out.append((f"{k} − ref", [abs(x - y) for x, y in zip(cur[k], ref)], "-"))
        if dtype != "fp32" and "fp32/reference" in cur:
            out.append((f"bf16 noise: {dtype}/ref − fp32/ref",
                        [abs(x - y) for x, y in zip(ref, cur["fp32/reference"])], "k--"))
        if f"{dtype}/reference-perturbed" in cur:  # train_parity.py --perturb-init
            out.append((f"chaos: {dtype}/ref, perturbed init − ref",
                        [abs(x - y) for x, y in zip(cur[f"{dtype}/reference-perturbed"], ref)], ":"))
    return out


def main(src: str, dst: str) -> None:
    r = json.load(open(src))
    cur = r["curves"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for k, v in cur.items():
        a.plot(v, lw=1, label=k)
    a.set(xlabel="step", ylabel="training loss", title=f"loss curves ({r.get('gpu') or r['device']})")
    a.legend(fontsize=7)
    for label, gaps, style in gap_curves(r):
        b.plot(smooth(gaps), style, lw=1.2 if style == ":" else 1, label=label)
    b.set(xlabel="step", ylabel="|Δloss| (10-step mean)", yscale="log", title="gaps")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
