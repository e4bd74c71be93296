"""Markdown tables from the benchmark JSONs in this folder (ratios are within one run, same C and mode).

    python reports/kernels/summarize.py reports/kernels/run6_a893aaf_bench.json [...]
"""

from __future__ import annotations

import json
import sys


def stack_table(path: str) -> str:
    r = json.load(open(path))
    rows = [s for s in r["stack"] if "ms" in s]
    base = {(s["C"], s["mode"]): s for s in rows if s["variant"] == "residual"}
    out = [f"`{path.split('/')[-1]}` — commit {r['commit']}, copy {r['copy_gb_s']:.0f} GB/s", "",
           "| C | blocks | mode | variant | ms/step | × residual | peak GiB | × peak | act. GiB | × act. |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        b = base[(s["C"], s["mode"])]
        out.append(f"| {s['C']} | {s['blocks']} | {s['mode']} | {s['variant']} | {s['ms']:.2f} | "
                   f"{s['ms'] / b['ms']:.3f} | {s['peak_gb']:.2f} | {s['peak_gb'] / b['peak_gb']:.3f} | "
                   f"{s['act_gb']:.2f} | {s['act_gb'] / b['act_gb']:.3f} |")
    return "\n".join(out)


def kernel_table(path: str) -> str:
    r = json.load(open(path))
    out = ["| C | kernel | µs | GB/s | % of copy |", "|---|---|---|---|---|"]
    for k in r["kernels"]:
        out.append(f"| {k['C']} | {k['kernel'].strip()} | {1000 * k['ms']:.1f} | {k['gb_s']:.0f} | "
                   f"{100 * k['frac_copy']:.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(stack_table(p), "\n")
        if json.load(open(p))["kernels"]:
            print(kernel_table(p), "\n")
