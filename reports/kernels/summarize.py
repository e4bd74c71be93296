"""Markdown tables from the benchmark JSONs in this folder (ratios are within one run, same C and mode).

    python reports/kernels/summarize.py reports/kernels/run6_a893aaf_bench.json [...]
"""

from __future__ import annotations

import json
import sys


def stack_table(path: str) -> str:
    r = json.load(open(path))
    rows = [s for s in r["stack"] if "ms" in s]
    # *_cg rows (CUDA graphs) against residual_cg; their memory is not comparable (graph pools sit
    # outside the allocator statistics), so no memory ratios for them
    base = {(s["C"], s["mode"], "_cg" in s["variant"]): s for s in rows if s["variant"] in ("residual", "residual_cg")}
    out = [f"`{path.split('/')[-1]}` — commit {r['commit']}, copy {r['copy_gb_s']:.0f} GB/s", "",
           "| C | blocks | mode | variant | ms/step | × residual | peak GiB | × peak | act. GiB | × act. |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        cg = "_cg" in s["variant"]
        b = base.get((s["C"], s["mode"], cg))
        rt = f"{s['ms'] / b['ms']:.3f}" if b else "—"
        rp, ra = ("—", "—") if cg or not b else (f"{s['peak_gb'] / b['peak_gb']:.3f}", f"{s['act_gb'] / b['act_gb']:.3f}")
        out.append(f"| {s['C']} | {s['blocks']} | {s['mode']} | {s['variant']} | {s['ms']:.2f} | {rt} | "
                   f"{s['peak_gb']:.2f} | {rp} | {s['act_gb']:.2f} | {ra} |")
    return "\n".join(out)


def kernel_table(path: str) -> str:
    r = json.load(open(path))
    out = ["| C | kernel | µs | GB/s | % of copy |", "|---|---|---|---|---|"]
    for k in r["kernels"]:
        if "ms" not in k:  # a kernel that could not run (bench_kernels records its error): say so
            out.append(f"| {k['C']} | {k['kernel'].strip()} | — | — | {k.get('error', 'no time')[:80].replace('|', '/')} |")
            continue
        out.append(f"| {k['C']} | {k['kernel'].strip()} | {1000 * k['ms']:.1f} | {k['gb_s']:.0f} | "
                   f"{100 * k['frac_copy']:.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(stack_table(p), "\n")
        if json.load(open(p))["kernels"]:
            print(kernel_table(p), "\n")
