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


def main(src: str, dst: str) -> None:
    r = json.load(open(src))
    cur = r["curves"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for k, v in cur.items():
        a.plot(v, lw=1, label=k)
    a.set(xlabel="step", ylabel="training loss", title=f"fused vs reference ({r.get('gpu') or r['device']})")
    a.legend(fontsize=7)
    for dtype in r["args"]["dtypes"]:
        ref = cur[f"{dtype}/reference"]
        for k in [k for k in cur if k.startswith(dtype + "/triton")]:
            b.plot(smooth([abs(x - y) for x, y in zip(cur[k], ref)]), lw=1, label=f"{k} − ref")
        if dtype != "fp32" and "fp32/reference" in cur:
            b.plot(smooth([abs(x - y) for x, y in zip(ref, cur["fp32/reference"])]), "k--", lw=1,
                   label=f"bf16 noise: {dtype}/ref − fp32/ref")
    b.set(xlabel="step", ylabel="|Δloss| (10-step mean)", yscale="log", title="gaps")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
