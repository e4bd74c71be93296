"""One kernel sweep (kernel_bench.SWEEP) under every combination of other launch settings, in one
process: e.g. the fused norm's backward tiles under each prefetch / pipelining mode.

    PYTHONPATH=. python benchmarks/sweep_grid.py --C 2048 4096 --op _PRE_NORM_BWD \
        --grid "PRE_NORM_BWD_PREFETCH+PRE_NORM_BWD_STAGES=[(1, 0), (0, 0), (2, 0), (0, 2), (0, 3)]"

Each ``--grid NAME=[V1, V2]`` names a launch constant and a Python list of its values; ``A+B=[(a1,
b1), ...]`` sets several together. The sweep of ``--op`` runs once per combination of the grid's
entries, timing device time (CUDA-graph replays) and checking each candidate against that
combination's default tile. Prints one JSON row per candidate.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_bench import SWEEP, sweep_configs  # noqa: E402


def parse_grid(specs) -> dict:
    """{(NAME, ...): [(value, ...), ...]} from ``NAME=[...]`` / ``A+B=[(a, b), ...]`` specs."""
    grid = {}
    for spec in specs:
        names, sep, values = spec.partition("=")
        try:
            values = ast.literal_eval(values) if sep else None
        except (ValueError, SyntaxError):
            values = None
        if not isinstance(values, list) or not values:
            raise SystemExit(f"--grid {spec!r}: expected NAME=[V1, V2, ...] or A+B=[(a1, b1), ...] (Python literals)")
        key = tuple(names.split("+"))
        vals = [v if len(key) > 1 else (v,) for v in values]
        if any(not isinstance(v, tuple) or len(v) != len(key) for v in vals):
            raise SystemExit(f"--grid {spec!r}: each value must be a tuple of {len(key)}")
        grid[key] = vals
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--C", type=int, nargs="+", default=[2048])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--precision", default="bf16x2", choices=["bf16x2", "bf16"])
    ap.add_argument("--op", required=True, help=f"a kernel_bench.SWEEP entry: {', '.join(SWEEP)}")
    ap.add_argument("--grid", nargs="*", default=[], metavar="NAME=V1,V2")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.op not in SWEEP:
        raise SystemExit(f"--op {args.op!r} is unknown; allowed: {', '.join(SWEEP)}")
    from bench_io import claim_out, require_cuda, write_json

    claim_out(ap, args.out)
    from mhc_repro.kernels import launch

    grid = parse_grid(args.grid)
    names = [name for key in grid for name in key]
    for name in names:
        if not hasattr(launch, name):
            raise SystemExit(f"--grid {name!r}: not a constant of mhc_repro.kernels.launch")
    require_cuda("sweep_grid.py")
    saved = {name: getattr(launch, name) for name in names}
    rows = []
    for c in args.C:
        for combo in itertools.product(*grid.values()):
            setting = {name: v for key, vals in zip(grid, combo) for name, v in zip(key, vals)}
            for name, value in setting.items():
                setattr(launch, name, value)
            found, best = sweep_configs(c, args.n, args.tokens, torch.device("cuda"), args.precision, (args.op,))
            for r in found:
                r.update(setting)
                print(json.dumps(r), flush=True)
            rows += found
            print(f"C = {c} {setting}: best {best.get(args.op)}", flush=True)
    for name, value in saved.items():
        setattr(launch, name, value)
    if args.out:
        write_json(args.out, dict(argv=sys.argv, rows=rows), default=str)


if __name__ == "__main__":
    main()
